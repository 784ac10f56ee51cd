"""End-to-end throughput of the online loop: rollouts (samples/s) and training steps (steps/s).

Three providers, same model object, same batch, same settings, timed in the same run (interleaved):

``eager``      the loop as the public DDPO trainers write it: a diffusers ``DDIMScheduler``-style step
               that recomputes alpha_prod_t / alpha_prod_t_prev from the scheduler on every call,
               builds x0_hat, the DDIM(eta) std and the posterior mean in separate tensor ops, draws
               prev_sample, then an eager Gaussian log-prob averaged over the non-batch dims; the
               training step calls that same function with the stored prev_sample, then the PPO
               clipped surrogate, backward, gradient clipping and AdamW. (Written here from the
               formulas in docs/design.md; no code copied.)
``diffalign``  ``DiffusionPolicy.sample`` (per-sample generators, as the trainer calls it) and one
               ``DDPO.loss`` on a ``TransitionBatch`` (the fused step-with-log-prob op), then the same
               backward, clipping and AdamW.
``unet_only``  the floor: the same guided UNet calls (and, for training, a backward through them) with no
               step, log-prob or surrogate at all. The gap between it and a loop is all a loop can win.
``compiled``   with ``--compile BACKEND``: the diffalign loop on a copy of the model whose UNet is compiled
               (``modality.options.compile``; e.g. ``inductor``). At SD sizes the UNet is most of a step,
               so this, not the step ops, is where a loop can gain on the eager one.

Models:
  tiny   the image modality's tiny preset: a random ~0.8M-parameter UNet over 16x16x4 latents,
         LoRA, fp32 (CPU; also run on CUDA)
  sd15   an SD1.5-size UNet2DConditionModel (random init, 64x64x4 latents, 77x768 text states),
         LoRA on its attention projections, base weights bf16 under bf16 autocast (CUDA only)
``--dtype bfloat16`` runs the tiny model the way sd15 runs (bf16 base weights, fp32 LoRA, bf16 autocast),
so that path is exercised on CPU too.

A rollout is ``--steps`` guided DDIM(eta=1) steps for ``--batch`` samples (the CFG branches batched
as 2B rows); a training step is one transition batch of ``--batch`` samples at per-sample random
timesteps through the loss, backward, clip_grad_norm_ and optimizer step. Before timing, the two
training paths are checked to compute the same log-probs for the same transitions.

    python benchmarks/bench_e2e.py                        # CPU: tiny
    python benchmarks/bench_e2e.py --device cuda          # CUDA: tiny and sd15
    python benchmarks/bench_e2e.py --json e2e.json --repeats 10
    python benchmarks/bench_e2e.py --dtype bfloat16       # the bf16/autocast path on CPU
    python benchmarks/bench_e2e.py --device cuda --compile inductor
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import sys
import time

import torch

from diffalign import ops
from diffalign.algorithms import DDPO, DDPOConfig, TransitionBatch
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.image import ImageAdapter, ImageOptions
from diffalign.trainer.distributed import generator

CLIP_RANGE, ADV_CLIP, MAX_GRAD_NORM, LR = 1e-4, 5.0, 1.0, 3e-4


# ------------------------------------------------------------------------------ models ----
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_tiny(device, lora_rank, dtype):
    adapter = ImageAdapter.from_options(ImageOptions(architecture="sd", resolution=32, lora_rank=lora_rank,
                                                     lora_alpha=float(lora_rank), dtype=dtype), device=device)
    cond = adapter.encode_conditions(["a photo of a cat", "a dog"])
    return adapter, cond


def build_sd15(device, lora_rank, dtype):
    """SD1.5's UNet, VAE and scheduler configs with random weights (nothing downloaded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=4, sample_size=512)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, set_alpha_to_one=False, clip_sample=False, steps_offset=1)
    options = ImageOptions(model="tiny", architecture="sd", resolution=512, lora_rank=lora_rank,
                           lora_alpha=float(lora_rank), dtype=dtype)
    adapter = ImageAdapter(unet, vae, None, None, scheduler, options, device)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 77, 768, generator=g).to(device, _DTYPES[dtype])
    cond = {"prompt_embeds": emb, "neg_prompt_embeds": torch.zeros_like(emb)}
    return adapter, cond


# model -> (builder, default sampling steps, default dtype)
MODELS = {"tiny": (build_tiny, 10, "float32"), "sd15": (build_sd15, 20, "bfloat16")}


# ------------------------------------------------------------ the eager (public-trainer) loop ----
def eager_ddim_step(scheduler, num_steps, model_output, timestep, sample, eta, prev_sample=None):
    """DDIM(eta) step with log-prob, in the style of the public DDPO trainers (epsilon prediction).

    ``timestep``: (B,) model timesteps. alpha_prod_t_prev uses the previous timestep clamped at 0.
    Noise comes from the global RNG on the sample's device, as those trainers draw it.
    Returns (prev_sample, log_prob (B,)) with log_prob the mean over non-batch dims.
    """
    ac = scheduler.alphas_cumprod
    prev_timestep = timestep - scheduler.config.num_train_timesteps // num_steps
    prev_timestep = torch.clamp(prev_timestep, 0, scheduler.config.num_train_timesteps - 1)
    shape = (-1,) + (1,) * (sample.ndim - 1)
    alpha_prod_t = ac.gather(0, timestep.cpu()).reshape(shape).to(sample.device)
    alpha_prod_t_prev = torch.where(prev_timestep.cpu() >= 0, ac.gather(0, prev_timestep.cpu()),
                                    scheduler.final_alpha_cumprod).reshape(shape).to(sample.device)
    beta_prod_t = 1 - alpha_prod_t
    pred_original_sample = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
    pred_epsilon = model_output
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** 0.5
    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t ** 2) ** 0.5 * pred_epsilon
    prev_sample_mean = alpha_prod_t_prev ** 0.5 * pred_original_sample + pred_sample_direction
    if prev_sample is None:
        noise = torch.randn(model_output.shape, device=model_output.device, dtype=model_output.dtype)
        prev_sample = prev_sample_mean + std_dev_t * noise
    log_prob = (-((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * std_dev_t ** 2)
                - torch.log(std_dev_t) - math.log(math.sqrt(2 * math.pi)))
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return prev_sample.type(sample.dtype), log_prob


class EagerLoop:
    def __init__(self, adapter, cond, dtype, num_steps, guidance, eta=1.0):
        self.unet, self.scheduler, self.dtype = adapter.denoiser, adapter.scheduler, dtype
        self.num_steps, self.guidance, self.eta = num_steps, guidance, eta
        self.latent_shape = (4, adapter.latent_size, adapter.latent_size)
        self.scheduler = copy.deepcopy(self.scheduler)
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = self.scheduler.timesteps
        self.cond = cond

    def _guided(self, x, t):
        emb = torch.cat([self.cond["neg_prompt_embeds"], self.cond["prompt_embeds"]])
        out = self.unet(torch.cat([x, x]).to(self.dtype), torch.cat([t, t]), encoder_hidden_states=emb.to(self.dtype)).sample
        uncond, text = out.float().chunk(2)
        return uncond + self.guidance * (text - uncond)

    @torch.no_grad()
    def unet_only_rollout(self):
        """The floor: the same guided UNet calls with no step math (what no loop can beat)."""
        b = self.cond["prompt_embeds"].shape[0]
        latents = torch.randn((b,) + self.latent_shape, device=self.cond["prompt_embeds"].device)
        for t in self.timesteps:
            self._guided(latents, t.repeat(b).to(latents.device))

    def unet_only_loss(self, batch: TransitionBatch):
        t = self.timesteps[batch.steps.cpu()].to(batch.x_t.device)
        return self._guided(batch.x_t, t).mean()

    @torch.no_grad()
    def rollout(self):
        b = self.cond["prompt_embeds"].shape[0]
        latents = torch.randn((b,) + self.latent_shape, device=self.cond["prompt_embeds"].device)
        all_latents, all_log_probs = [latents], []
        for t in self.timesteps:
            tt = t.repeat(b).to(latents.device)
            latents, log_prob = eager_ddim_step(self.scheduler, self.num_steps, self._guided(latents, tt), tt, latents,
                                                self.eta)
            all_latents.append(latents)
            all_log_probs.append(log_prob)
        return torch.stack(all_latents, 1), torch.stack(all_log_probs, 1)

    def loss(self, batch: TransitionBatch):
        t = self.timesteps[batch.steps.cpu()].to(batch.x_t.device)
        _, log_prob = eager_ddim_step(self.scheduler, self.num_steps, self._guided(batch.x_t, t), t, batch.x_t,
                                      self.eta, prev_sample=batch.x_prev)
        adv = torch.clamp(batch.advantages, -ADV_CLIP, ADV_CLIP)
        ratio = torch.exp(log_prob - batch.old_log_prob)
        unclipped = -adv * ratio
        clipped = -adv * torch.clamp(ratio, 1.0 - CLIP_RANGE, 1.0 + CLIP_RANGE)
        return torch.mean(torch.maximum(unclipped, clipped)), log_prob


# ----------------------------------------------------------------------------- timing ----
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _quantiles(xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    return q(0.2), statistics.median(xs), q(0.8)


PROVIDERS = ("eager", "diffalign", "unet_only")


def compiled_copy(adapter, backend: str):
    """A shallow copy of the adapter whose denoiser is a compiled deep copy (same weights, own parameters)."""
    twin = copy.copy(adapter)
    twin.denoiser = copy.deepcopy(adapter.denoiser)
    twin.denoiser.compile(backend=backend)
    return twin


def bench_model(name, device, batch, steps, guidance, lora_rank, repeats, warmup, dtype_name, compile_backend=None):
    torch.manual_seed(0)
    adapter, cond2 = MODELS[name][0](device, lora_rank, dtype_name)
    dtype = _DTYPES[dtype_name]
    cond = {k: v[torch.arange(batch) % v.shape[0]] for k, v in cond2.items()}  # batch rows from 2 prompts
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, steps, eta=1.0), guidance)
    policies = {"diffalign": policy}
    providers = PROVIDERS
    if compile_backend:
        twin = compiled_copy(adapter, compile_backend)
        policies["compiled"] = DiffusionPolicy(twin, make_step_rule("ddim", twin.scheduler, steps, eta=1.0), guidance)
        providers = PROVIDERS + ("compiled",)
    eager = EagerLoop(adapter, cond, dtype, steps, guidance)
    algo = DDPO(DDPOConfig(clip_range=CLIP_RANGE, adv_clip_max=ADV_CLIP, per_prompt_stats=False))
    params = {p: (policies[p].adapter if p in policies else adapter).trainable_parameters() for p in providers}
    optim = {p: torch.optim.AdamW(params[p], lr=LR) for p in providers}
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext

    # one recorded rollout supplies the training transitions of both providers
    with autocast():
        traj = policy.sample(cond, generator=[generator(0, "bench", i) for i in range(batch)])
    steps_idx = torch.randint(steps, (batch,), generator=torch.Generator().manual_seed(1))
    x_t, x_prev, old = traj.states_at(steps_idx)
    adv = torch.randn(batch, generator=torch.Generator().manual_seed(2)).to(device)
    tb = TransitionBatch(x_t, x_prev, steps_idx.to(device), old, adv, cond, traj.x0, steps)

    with torch.no_grad(), autocast():
        ours = policy.transition(x_t, tb.steps, cond, prev_sample=x_prev).log_prob
        theirs = eager.loss(tb)[1]
    agreement = (ours.float() - theirs.float()).abs().max().item()

    def rollout(provider):
        def run():
            with autocast():
                if provider == "eager":
                    eager.rollout()
                elif provider == "unet_only":
                    eager.unet_only_rollout()
                else:
                    policies[provider].sample(cond, generator=[generator(3, "bench", i) for i in range(batch)])
        return run

    def train(provider):
        opt = optim[provider]

        def run():
            with autocast():
                if provider == "eager":
                    loss = eager.loss(tb)[0]
                elif provider == "unet_only":
                    loss = eager.unet_only_loss(tb)
                else:
                    loss = algo.loss(tb, policies[provider], None)[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params[provider], MAX_GRAD_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    rows = []
    for p in policies.values():
        p.adapter.denoiser.train()
    adapter.denoiser.train()
    for loop, make, unit, per_call in (("rollout", rollout, "samples/s", batch), ("train", train, "steps/s", 1)):
        fns = {p: make(p) for p in providers}
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times = {p: [] for p in fns}
        for _ in range(repeats):  # interleaved, so drift in machine load hits both providers alike
            for p, fn in fns.items():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[p].append(time.perf_counter() - start)
        for p, ts in times.items():
            lo, med, hi = _quantiles(ts)
            rows.append(dict(model=name, device=device.type, dtype=str(dtype).replace("torch.", ""), batch=batch,
                             steps=steps, guidance=guidance, loop=loop, provider=p, unit=unit,
                             throughput=per_call / med, throughput_p20=per_call / hi, throughput_p80=per_call / lo,
                             median_s=med, repeats=repeats,
                             logprob_max_abs_diff=agreement if loop == "train" and p == "diffalign" else None))
        loop_rows = rows[-len(fns):]
        eager_row = next(r for r in loop_rows if r["provider"] == "eager")
        for row in loop_rows:
            if row is not eager_row:
                row["speedup_vs_eager"] = row["throughput"] / eager_row["throughput"]
    del adapter, policy, policies, eager
    return rows


def machine_facts(device):
    facts = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                 threads=torch.get_num_threads(), extension=ops.extension_available(),
                 cuda_kernels=ops.cuda_kernels_built())
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    else:
        facts["cpu"] = platform.processor() or platform.machine()
    return facts


def print_table(rows):
    header = f"{'model':6} {'dev':4} {'dtype':8} {'B':>3} {'T':>3} {'loop':8} {'provider':10} {'throughput':>16} " \
             f"{'p20..p80':>17} {'speedup':>8} {'|dlogp|':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        speed = f"{r['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in r else ""
        agree = f"{r['logprob_max_abs_diff']:.1e}" if r.get("logprob_max_abs_diff") is not None else ""
        print(f"{r['model']:6} {r['device']:4} {r['dtype']:8} {r['batch']:>3} {r['steps']:>3} {r['loop']:8} "
              f"{r['provider']:10} {r['throughput']:>8.2f} {r['unit']:>7} "
              f"{r['throughput_p20']:>8.2f}..{r['throughput_p80']:<8.2f} {speed:>8} {agree:>8}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", default=None, help="comma-separated subset of tiny,sd15 (default: tiny on CPU, both on CUDA)")
    p.add_argument("--batch", type=int, default=8, help="samples per rollout and per training step")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 10 tiny, 20 sd15)")
    p.add_argument("--dtype", default=None, choices=sorted(_DTYPES),
                   help="base weights and autocast dtype (default: float32 tiny, bfloat16 sd15)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7, help="timed calls per provider (interleaved)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows and machine facts to this file")
    p.add_argument("--compile", default=None, metavar="BACKEND",
                   help="also time the diffalign loop with its UNet compiled by this torch.compile backend (inductor)")
    args = p.parse_args(argv)
    if args.compile is not None:
        import torch._dynamo as dynamo
        if args.compile not in dynamo.list_backends(exclude_tags=()):
            p.error(f"--compile {args.compile!r} is not a torch.compile backend")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    models = args.models.split(",") if args.models else (["tiny", "sd15"] if device.type == "cuda" else ["tiny"])
    rows = []
    for name in models:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        if name == "sd15" and device.type != "cuda":
            print("skipping sd15: it runs on CUDA only (bf16, SD1.5-size UNet)", file=sys.stderr)
            continue
        _, default_steps, default_dtype = MODELS[name]
        rows += bench_model(name, device, args.batch, args.steps or default_steps, args.guidance, args.lora_rank,
                            args.repeats, args.warmup, args.dtype or default_dtype, args.compile)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_facts(device), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
