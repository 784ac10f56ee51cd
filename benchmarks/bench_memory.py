"""Peak memory and time per update of direct reward fine-tuning: DRaFT-K (K = 1, 5, all steps) and AlignProp
(K ~ U{1..T}), each with and without gradient checkpointing through the sampling chain.

One update = sample B chains (``sample_chain``: the first T - K steps without gradient, the last K with
their graph, each step under torch.utils.checkpoint when checkpointing), a differentiable reward of the
final latents, backward, clip_grad_norm_ and an AdamW step on the LoRA weights.

Memory:
  CPU   each setting runs in its own subprocess; peak = ru_maxrss after the updates minus ru_maxrss after
        building the model (the high-water mark of the resident set the updates added). tracemalloc does
        not see torch's allocations, hence a process per setting.
  CUDA  in process: torch.cuda.max_memory_allocated() over the updates minus the memory allocated before
        them (reset_peak_memory_stats between settings).
Time: median wall-clock seconds per update over ``--repeats`` updates after ``--warmup``.

The reward is -mean((x0 - 0.5)^2) over the latents, so the numbers are the chain's own (a reward model and
the VAE decoder add their activations on top, the same for every setting). AlignProp's row is the mean over
its random truncations; its peak is that of the deepest truncation drawn.

Video rows (model ``video``): one VADER update (Prabhudesai et al. 2024; DRaFT-K with K = 1, VADER's default
backprop_mode 'last', and K = all steps) on the video modality's tiny AnimateDiff preset (the image tiny UNet +
a motion adapter, LoRA rank 4 on the motion modules), with and without gradient checkpointing of the
graph-keeping steps, and with and without VADER's frame subsampling (the adapter's ``reward_frames``: only
``--video-kept`` of the ``--video-frames`` frames are decoded, drawn per clip).
The reward is the per-frame reward ``tiny_cnn`` (a fixed random CNN) of the decoded frames, so the rows include the
VAE decoder's and the reward's activations, which subsampling shrinks for the frames not decoded.
``--video-resolution`` and ``--video-frames`` select bigger shapes on a GPU.

Models:
  tiny  the image modality's tiny preset (~0.8M-parameter UNet, 16x16x4 latents), LoRA rank 4, fp32 (CPU)
  video the video modality's tiny AnimateDiff preset (see above), fp32
  sd15  an SD1.5-size UNet2DConditionModel with random weights (64x64x4 latents, 77x768 text states),
        LoRA on its attention projections, bf16 base weights under bf16 autocast (CUDA only)

    python benchmarks/bench_memory.py                          # CPU: tiny
    python benchmarks/bench_memory.py --device cuda            # CUDA: tiny and sd15
    python benchmarks/bench_memory.py --json benchmarks/results/memory_cpu_2core_DATE.json
    python benchmarks/bench_memory.py --models video --json benchmarks/results/memory_video_cpu_2core_DATE.json
    python benchmarks/bench_memory.py --device cuda --models video --video-resolution 64 --video-frames 16
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import torch

from diffalign.algorithms.direct_reward import AlignProp, AlignPropConfig, DRaFT, DRaFTConfig, SamplingBatch
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.rewards.differentiable import tiny_cnn
from diffalign.rewards.video import PerFrameReward

HERE = pathlib.Path(__file__).resolve().parent


def _e2e():
    """The model builders of benchmarks/bench_e2e.py (one definition of the tiny and SD1.5-size models)."""
    spec = importlib.util.spec_from_file_location("bench_e2e_models", HERE / "bench_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# model -> (default steps, default batch, dtype)
MODELS = {"tiny": (10, 4, "float32"), "sd15": (20, 1, "bfloat16"), "video": (10, 2, "float32")}
# the video model's default clip: frames, side in pixels, frames the reward keeps when subsampling
VIDEO_SHAPE = {"frames": 8, "resolution": 32, "kept": 2}


def build_video(device, lora_rank, dtype, frames, resolution, reward_frames=None):
    """The tiny AnimateDiff video preset (random weights, nothing downloaded), LoRA on the motion modules;
    ``reward_frames``: the frames decode_with_grad decodes per clip (None: all)."""
    from diffalign.modalities.video import VideoAdapter, VideoOptions
    adapter = VideoAdapter.from_options(VideoOptions(resolution=resolution, num_frames=frames, lora_rank=lora_rank,
                                                     lora_alpha=float(lora_rank), dtype=dtype,
                                                     reward_frames=reward_frames), device=device)
    return adapter, adapter.encode_conditions(["a cat walking", "a dog running"])


def settings(steps: int, model: str = "tiny", kept: int = VIDEO_SHAPE["kept"]):
    """(method, K) rows: DRaFT with K = 1, 5, all and AlignProp; each with and without checkpointing. Video:
    VADER with K = 1 and K = all steps, each with and without checkpointing, every frame or ``kept`` frames decoded."""
    if model == "video":  # K = 1 is VADER's default (backprop_mode 'last'); K = T backpropagates the whole chain
        return [{"method": "vader", "K": k, "checkpointing": ckpt, "reward_frames": f}
                for k in (1, steps) for ckpt in (False, True) for f in (None, kept)]
    out = []
    for ckpt in (False, True):
        for k in sorted({1, min(5, steps), steps}):
            out.append({"method": "draft", "K": k, "checkpointing": ckpt})
        out.append({"method": "alignprop", "K": "random", "checkpointing": ckpt})
    return out


def _latent_reward(x0):
    return -((x0.float() - 0.5) ** 2).flatten(1).mean(1)


def run_setting(model: str, device: str, steps: int, batch: int, repeats: int, warmup: int, setting: dict,
                lora_rank: int = 4, guidance: float = 4.0, video_shape: dict = None) -> dict:
    """Build the model, run warmup + repeats updates of one setting, return its row."""
    dev = torch.device(device)
    dtype = MODELS[model][2]
    shape = dict(VIDEO_SHAPE, **(video_shape or {}))
    if model == "video":
        adapter, cond2 = build_video(dev, lora_rank, dtype, shape["frames"], shape["resolution"],
                                     setting["reward_frames"])
    else:
        e2e = _e2e()
        build = {"tiny": e2e.build_tiny, "sd15": e2e.build_sd15}[model]
        adapter, cond2 = build(dev, lora_rank, dtype)
    cond = {k: v[torch.arange(batch) % v.shape[0]] for k, v in cond2.items()}
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, steps, eta=1.0), guidance)
    reward = _latent_reward
    if model == "video":  # VADER: a per-frame reward of the decoded frames (all, or reward_frames of them)
        frame_reward = PerFrameReward(tiny_cnn)

        def reward(x0):
            return frame_reward(adapter.decode_with_grad(x0, cond), ["p"] * batch)
    if setting["method"] in ("draft", "vader"):
        algo = DRaFT(DRaFTConfig(truncation=setting["K"], checkpointing=setting["checkpointing"]))
    else:
        algo = AlignProp(AlignPropConfig(min_truncation=1, checkpointing=setting["checkpointing"]))
    params = adapter.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and dtype == "bfloat16" \
        else contextlib.nullcontext()
    g = torch.Generator().manual_seed(0)
    latent_shape = adapter.initial_noise(cond).shape[1:]

    def update(i):
        x_T = torch.randn((batch,) + tuple(latent_shape), generator=g).to(dev)
        noise = torch.randn((batch, steps) + tuple(latent_shape), generator=g).to(dev)
        b = SamplingBatch(cond, ["p"] * batch, x_T, noise, reward, torch.Generator().manual_seed(i))
        with autocast:
            loss, metrics = algo.loss(b, policy, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(metrics["truncation"])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, ks = [], []
    error = None
    try:
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            ks.append(update(i))
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError as exc:  # the point of checkpointing: record it, do not crash
        error = f"out of memory ({str(exc).splitlines()[0][:80]})"
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    row = {"model": model, "device": dev.type, "dtype": dtype, "batch": batch, "steps": steps, **setting,
           **({"frames": shape["frames"], "resolution": shape["resolution"]} if model == "video" else {}),
           "mean_K": statistics.fmean(ks) if ks else None, "peak_mib": peak / 2 ** 20,
           "s_per_update": statistics.median(times) if times else None, "repeats": len(times)}
    if error:
        row["error"] = error
    return row


def _run_child(args_list) -> dict:
    """One setting in a fresh process (CPU peak memory must not see the other settings' high-water mark)."""
    out = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(args_list)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(rows):
    header = (f"{'model':5} {'dev':4} {'B':>2} {'T':>3} {'method':9} {'K':>6} {'ckpt':>5} {'decoded':>7} "
              f"{'peak MiB':>9} {'s/update':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        k = r["K"] if r["K"] != "random" else f"~{r['mean_K']:.1f}" if r["mean_K"] else "random"
        t = f"{r['s_per_update']:.3f}" if r["s_per_update"] is not None else r.get("error", "")[:20]
        scored = "-" if "reward_frames" not in r else f"{r['reward_frames'] or r['frames']}/{r['frames']}"
        print(f"{r['model']:5} {r['device']:4} {r['batch']:>2} {r['steps']:>3} {r['method']:9} {k:>6} "
              f"{'yes' if r['checkpointing'] else 'no':>5} {scored:>7} {r['peak_mib']:>9.1f} {t:>9}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def machine_facts(device):
    import platform
    facts = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                 threads=torch.get_num_threads(), cpus=os.cpu_count(), cpu_model=_cpu_model())
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", default=None,
                   help="comma-separated subset of tiny,sd15,video (default: tiny on CPU, tiny and sd15 on CUDA)")
    p.add_argument("--video-frames", type=int, default=VIDEO_SHAPE["frames"], help="video: frames per clip")
    p.add_argument("--video-resolution", type=int, default=VIDEO_SHAPE["resolution"], help="video: frame side (px)")
    p.add_argument("--video-kept", type=int, default=VIDEO_SHAPE["kept"],
                   help="video: frames decoded (and scored) when subsampling (VADER)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps T (default: 10 tiny, 20 sd15)")
    p.add_argument("--batch", type=int, default=None, help="samples per update (default: 4 tiny, 1 sd15)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=None, help="write the rows and machine facts to this file")
    p.add_argument("--note", default=None, help="a remark stored with the rows (e.g. that the machine was shared)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_setting(*json.loads(args.child))))
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    models = args.models.split(",") if args.models else (["tiny", "sd15"] if args.device == "cuda" else ["tiny"])
    rows = []
    for name in models:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        if name == "sd15" and args.device != "cuda":
            print("skipping sd15: it runs on CUDA only (bf16, SD1.5-size UNet)", file=sys.stderr)
            continue
        steps, batch = args.steps or MODELS[name][0], args.batch or MODELS[name][1]
        video_shape = {"frames": args.video_frames, "resolution": args.video_resolution}
        for s in settings(steps, name, args.video_kept):
            call = [name, args.device, steps, batch, args.repeats, args.warmup, s, 4, 4.0, video_shape]
            row = _run_child(call) if args.device == "cpu" else run_setting(*call)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_facts(args.device), "rows": rows,
                       **({"note": args.note} if args.note else {})}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
