"""Train the shipped tiny InstructPix2Pix-style editor (diffalign/assets/editing_demo_model) on procedural shape edits.

The shipped weights were made by exactly the command recorded in the asset's diffalign_editing_demo.json (2 CPU
cores shared with other work, one thread; its wall time, CPU and load average are recorded there too).

Starts from the shipped image demo model (modalities/editing/demo_model.editor_from_image_demo: conv_in widened
to 6 input channels with zero weights on the input image's channels, the instruction words appended to the
tokenizer with new embedding rows) and trains it on the TRAINING split of diffalign.data.shapes_edits only:
the held-out instructions and input scenes the demo evaluates are never seen.

Denoising (v-prediction, the image demo's cosine-beta DDIM scheduler) of the target picture, conditioned on the
instruction (cross-attention) and the input picture (concatenated channels), with InstructPix2Pix's condition
dropout (Brooks et al. 2023, section 3.2.1: text, image and both dropped for 5 % of the examples each) so that
dual classifier-free guidance works. The text encoder trains jointly; the saved weights are an EMA. Training is
meant to stop early, so that the editor is right on only part of the held-out edits and alignment has room.

The shipped editor is made in two runs (both commands are in its metadata: ``command`` and
``init_metadata.command``): the clean run above, then ``--init`` that editor with ``--noise-prob 0.5``: 300 more
steps on captions that name a near miss of their edit half of the time where the training split has one
(:func:`diffalign.data.shapes_edits.noisy_instruction`: another new colour, another direction, another colour or
shape to add, another object to remove). The clean editor's held-out errors were failures to generalise (the
wrong shape for a held-out "add", every object recoloured), which 10 minutes of alignment on training edits did
not move; the noisy editor's errors are near misses of the instruction, on training edits as on held-out ones,
and a reward for following the instruction repairs them, as the image demo model's colour-noisy captions do.

With evaluation on (the default) it then edits the held-out set with dual guidance and records the edit reward's
accuracies (diffalign.rewards.edit_compositional) in the metadata.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

EVAL_SAMPLER = {"num_steps": 10, "eta": 1.0, "text_guidance": 3.0, "image_guidance": 1.5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="diffalign/assets/editing_demo_model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (the cosine schedule ends here)")
    p.add_argument("--max-minutes", type=float, default=40.0,
                   help="safety stop (then not reproducible: recorded in the metadata)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--num-edits", type=int, default=20000, help="training triples rendered up front")
    p.add_argument("--drop-prob", type=float, default=0.05,
                   help="probability of each of: text dropped, image dropped, both dropped (InstructPix2Pix: 0.05)")
    p.add_argument("--init", default=None,
                   help="a saved editor folder to continue training from (default: widen the image demo model)")
    p.add_argument("--noise-prob", type=float, default=0.0,
                   help="probability that a training caption names a near miss of its edit instead "
                        "(shapes_edits.noisy_instruction), so that the editor errs by near misses")
    p.add_argument("--eval-per-kind", type=int, default=16, help="held-out edits of each kind scored at the end")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    p.add_argument("--eval-only", action="store_true",
                   help="only (re-)measure the saved model in --output and update its metadata")
    args = p.parse_args(argv)
    if not 0.0 <= args.noise_prob <= 1.0:
        p.error(f"--noise-prob must be in [0, 1], got {args.noise_prob}")
    if not 0.0 <= 3 * args.drop_prob <= 1.0:
        p.error(f"--drop-prob must be in [0, 1/3], got {args.drop_prob}")
    return args


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from diffalign.data import shapes_edits
    from diffalign.mdp.forward import ForwardProcess
    from diffalign.modalities.editing.demo_model import editor_from_image_demo, image_latents, save_editing_demo_model

    if args.eval_only:
        return evaluate_saved(args)
    torch.manual_seed(args.seed)
    t_start, load_start = time.time(), os.getloadavg()
    data = shapes_edits.EditsDataset(args.num_edits, seed=args.seed, split="train")
    sources = torch.empty(len(data), 3, 32, 32)
    targets = torch.empty(len(data), 3, 32, 32)
    instructions = []
    noise_rng = np.random.default_rng([args.seed, 7])  # the caption noise's own stream: data[i] stays as without
    for i in tqdm(range(len(data)), desc="render", mininterval=5):
        sources[i], text, targets[i] = data[i]
        if args.noise_prob > 0:
            text = shapes_edits.noisy_instruction(data.example(i), args.noise_prob, noise_rng)
        instructions.append(text)
    cond_images, targets = image_latents(sources), targets * 2 - 1
    if args.init:
        from diffalign.modalities.editing.demo_model import load_editing_demo_model
        unet, text_encoder, tokenizer, scheduler, init_meta = load_editing_demo_model(args.init)
    else:
        unet, text_encoder, tokenizer, scheduler = editor_from_image_demo(shapes_edits.VOCAB, seed=args.seed)
        init_meta = None
    unet.requires_grad_(True), text_encoder.requires_grad_(True)
    ids = tokenizer(instructions)
    empty = tokenizer([""])[0]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    print(f"{len(data)} edits, vocab {tokenizer.vocab_size}, unet {sum(p.numel() for p in unet.parameters()):,} "
          f"+ text {sum(p.numel() for p in text_encoder.parameters()):,} params", flush=True)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    fwd = ForwardProcess(scheduler)
    gen = torch.Generator().manual_seed(args.seed)
    unet.train(), text_encoder.train()
    bar = tqdm(range(args.steps), desc="train", mininterval=10)
    losses, step = [], 0
    for step in bar:
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x0, tok, image = targets[idx], ids[idx].clone(), cond_images[idx].clone()
        # one uniform draw per example: [0, p) text dropped, [p, 2p) image dropped, [2p, 3p) both
        u = torch.rand(args.batch_size, generator=gen)
        p = args.drop_prob
        drop_text = (u < p) | ((u >= 2 * p) & (u < 3 * p))
        drop_image = (u >= p) & (u < 3 * p)
        tok[drop_text] = empty
        image[drop_image] = 0.0  # InstructPix2Pix's null image latents are zeros
        noise = torch.randn(x0.shape, generator=gen)
        t_idx = fwd.sample_indices(args.batch_size, gen)
        x_t = fwd.add_noise(x0, noise, t_idx)
        emb = text_encoder(tok).last_hidden_state
        out = unet(torch.cat([x_t, image], dim=1), fwd.model_timesteps(t_idx, x_t), encoder_hidden_states=emb).sample
        loss = F.mse_loss(out, fwd.target(x0, noise, t_idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - args.ema)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if time.time() - t_start > args.max_minutes * 60:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    train_seconds = time.time() - t_start
    metadata = {
        "command": "OMP_NUM_THREADS=1 python scripts/train_editing_demo_model.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "init": (f"the editor in {args.init} (its metadata under 'init_metadata')" if args.init else
                 "the shipped image demo model (diffalign/assets/demo_model), conv_in widened with zero weights"),
        "noise_prob": args.noise_prob,
        "seed": args.seed, "steps": step + 1, "planned_steps": args.steps,
        # --max-minutes cut the cosine schedule short: rerunning with the same flags on a faster machine trains longer
        "stopped_by_max_minutes": step + 1 < args.steps, "batch_size": args.batch_size,
        "learning_rate": args.lr, "ema": args.ema, "num_edits": args.num_edits,
        "drop_prob_text_image_both": args.drop_prob,
        "image_condition": "input image scaled to [-1, 1], concatenated after the sample; unconditional = zeros",
        "train_wall_seconds": round(train_seconds, 1),
        "final_loss_mean_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "precision": "float32", "torch": torch.__version__,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
    }
    if init_meta is not None:
        metadata["init_metadata"] = init_meta
    save_editing_demo_model(args.output, ema_unet.eval(), ema_text.eval(), tokenizer, scheduler, metadata)
    print(f"saved {args.output} ({sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.output) for f in fs) / 2**20:.1f} MiB)",
          flush=True)
    if not args.no_eval:
        evaluate_saved(args)
    return 0


@torch.no_grad()
def dual_guided_edit(unet, text_encoder, tokenizer, scheduler, images: torch.Tensor, instructions, seeds,
                     num_steps: int, eta: float, text_guidance: float, image_guidance: float) -> torch.Tensor:
    """Edited images (B, 3, H, W) in [0, 1]: DDIM with InstructPix2Pix's dual guidance (Brooks et al. 2023, eq. 3):
    e = e(0, 0) + s_I (e(I, 0) - e(0, 0)) + s_T (e(I, T) - e(I, 0)). Each sample's noise comes from its own seed."""
    from diffalign.modalities.editing.demo_model import image_latents

    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_steps)
    b = images.shape[0]
    cond = image_latents(images)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn(images.shape[1:], generator=g) for g in gens])
    text = text_encoder(tokenizer(list(instructions))).last_hidden_state
    null = text_encoder(tokenizer([""] * b)).last_hidden_state
    for t in scheduler.timesteps:
        inp = torch.cat([torch.cat([x, cond], 1), torch.cat([x, cond], 1), torch.cat([x, torch.zeros_like(cond)], 1)])
        out = unet(inp, t, encoder_hidden_states=torch.cat([text, null, null])).sample
        full, img_only, uncond = out.chunk(3)
        guided = uncond + image_guidance * (img_only - uncond) + text_guidance * (full - img_only)
        noise = torch.stack([torch.randn(images.shape[1:], generator=g) for g in gens])
        x = scheduler.step(guided, t, x, eta=eta, variance_noise=noise).prev_sample
    return (x.clamp(-1, 1) + 1) / 2


def evaluate_saved(args) -> int:
    """Edit the held-out set with dual guidance; record the edit reward's accuracies in the metadata."""
    from diffalign.data import shapes_edits
    from diffalign.modalities.editing.demo_model import MARKER, load_editing_demo_model
    from diffalign.rewards.edit_compositional import edit_accuracies, score_edits

    torch.manual_seed(0)
    unet, text_encoder, tokenizer, scheduler, _ = load_editing_demo_model(args.output)
    examples = shapes_edits.edits("heldout", per_kind=args.eval_per_kind, seed=0)
    t0 = time.time()
    edited, inputs = [], []
    for start in range(0, len(examples), 32):
        chunk = examples[start:start + 32]
        src = torch.stack([torch.from_numpy(e.images()[0]).permute(2, 0, 1).float() / 255 for e in chunk])
        inputs.append(src)
        edited.append(dual_guided_edit(unet, text_encoder, tokenizer, scheduler, src, [e.instruction for e in chunk],
                                       range(start, start + len(chunk)), **EVAL_SAMPLER))
    results = score_edits(torch.cat(edited), torch.cat(inputs), [e.edit for e in examples])
    report = edit_accuracies(results)
    path = os.path.join(args.output, MARKER)
    with open(path) as f:
        metadata = json.load(f)
    metadata["base_eval"] = dict(report, samples=len(examples), samples_per_kind=args.eval_per_kind,
                                 sampler=dict(EVAL_SAMPLER), seconds=round(time.time() - t0, 1))
    with open(path, "w") as f:
        json.dump(metadata, f, indent=1)
    print(json.dumps(metadata["base_eval"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
