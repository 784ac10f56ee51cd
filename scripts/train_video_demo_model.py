"""Train the shipped motion modules of the video demo (diffalign/assets/video_demo_motion) on procedural clips.

The video demo model (modalities/video/demo.py) is the shipped 32x32 pixel-space image demo model turned into an
AnimateDiff ``UNetMotionModel``: the image layers (and the text encoder) stay frozen, as AnimateDiff trains only
its motion modules, and the motion modules start from AnimateDiff's zero-initialised output projections (so the
untrained video model is the image model frame by frame). This script fully trains the motion modules
(``lora_rank: 0``; LoRA on a zero-initialised module gets no gradient) with the denoising loss (v-prediction, the
image model's scheduler) on clips of :mod:`diffalign.data.shapes_clips` drawn from the TRAINING captions only, so
the held-out captions the demo evaluates are never seen. Together with the motion modules it trains the text
encoder's NEW rows for the motion words ("moving", "up", "down": modalities/video/demo.py), the only text
parameters with gradient, so the caption can say which way to move; they are saved next to the motion modules.
``--moving-fraction`` sets how many training clips move (motion is what the modules must learn; still clips
teach them to keep objects in place). ``--frame-noise-alpha`` trains on PYoCo's mixed noise (modalities/video/
noise.py), the noise the demo samples from: a model trained on independent frame noise and sampled from noise its
frames share holds objects in place but does not move them. ``--init`` continues from saved motion modules.

The shipped weights were made by exactly the command in the asset's ``diffalign_video_demo.json`` (``command``),
on the CPU named there, with its seed, steps and wall time.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

DEFAULT_OUTPUT = "diffalign/assets/video_demo_motion"
METADATA = "diffalign_video_demo.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default=DEFAULT_OUTPUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=600, help="optimiser steps (the cosine schedule ends here)")
    p.add_argument("--max-minutes", type=float, default=25.0,
                   help="safety stop (a run stopped by it is recorded as such in the metadata)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per step (each of --frames frames)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--ema", type=float, default=0.98)
    p.add_argument("--num-clips", type=int, default=4000, help="training clips rendered up front")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--moving-fraction", type=float, default=0.5, help="fraction of training clips with motion")
    p.add_argument("--frame-noise-alpha", type=float, default=0.0,
                   help="PYoCo mixed-noise alpha of the training noise (0: independent frames)")
    p.add_argument("--init", default=None, help="start from these motion modules (a folder this script wrote)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "frames", "num_clips", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.caption_dropout < 1.0:
        p.error(f"--caption-dropout must be in [0, 1), got {args.caption_dropout}")
    if not 0.0 <= args.moving_fraction <= 1.0:
        p.error(f"--moving-fraction must be in [0, 1], got {args.moving_fraction}")
    if not (math.isfinite(args.frame_noise_alpha) and args.frame_noise_alpha >= 0):
        p.error(f"--frame-noise-alpha must be a finite number >= 0, got {args.frame_noise_alpha}")
    if args.init is not None and not os.path.isdir(args.init):
        p.error(f"--init: {args.init} is not a folder")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"--ema must be in [0, 1), got {args.ema}")
    return args


def render_clips(n: int, seed: int, frames: int, moving_fraction: float = 0.5):
    """(clips (n, 3, F, 32, 32) in [-1, 1], captions) of the training split, round(n * moving_fraction) of them
    moving: the dataset's items in order (kinds drawn 50/50), each kept while its kind still has room."""
    from diffalign.data.shapes_clips import ShapesClipsDataset
    room = {"moving": round(n * moving_fraction)}
    room["still"] = n - room["moving"]
    data = ShapesClipsDataset(4 * n, seed=seed, frames=frames, split="train")
    clips, captions = [], []
    for i in range(len(data)):
        if len(clips) == n:
            break
        clip = data.clip(i)
        if room[clip.scene.kind] == 0:
            continue
        room[clip.scene.kind] -= 1
        clips.append(clip.frames.permute(1, 0, 2, 3))  # (F, 3, H, W) -> (3, F, H, W), the adapter's state layout
        captions.append(clip.caption)
    if len(clips) < n:  # 4n items of a 50/50 draw leave this practically impossible; say so rather than run short
        raise RuntimeError(f"render_clips: only {len(clips)} of {n} clips with moving fraction {moving_fraction}")
    return torch.stack(clips) * 2 - 1, captions


def build_adapter(seed: int, frames: int, init=None):
    """The demo video adapter with a fresh motion adapter (or the one saved in ``init``, with its motion words),
    motion modules trainable (full training)."""
    from diffalign.modalities.video.adapter import VideoAdapter
    from diffalign.modalities.video.options import VideoOptions
    return VideoAdapter.from_options(VideoOptions(model="demo", num_frames=frames, lora_rank=0, motion_adapter=init,
                                                  lora_layers="motion", seed=seed))


def main(argv=None) -> int:
    args = parse_args(argv)
    from diffalign.mdp.forward import ForwardProcess
    from diffalign.trainer.precision import cpu_info

    from diffalign.modalities.video.demo import motion_word_rows, save_motion_words
    from diffalign.modalities.video.noise import mixed_frame_noise

    torch.manual_seed(args.seed)
    load_start = list(os.getloadavg())
    t_start = time.time()
    clips, captions = render_clips(args.num_clips, args.seed, args.frames, args.moving_fraction)
    adapter = build_adapter(args.seed, args.frames, args.init)
    unet = adapter.denoiser
    names = adapter.trained_layer_names()
    assert all("motion_modules" in n for n in names), "only motion modules may train"  # image layers frozen
    # the motion words' rows: the one text parameter that trains (the image words' rows are a frozen buffer)
    word_rows = motion_word_rows(adapter.text_encoder).requires_grad_(True)
    words = sorted(adapter.tokenizer.vocab, key=adapter.tokenizer.vocab.get)[-word_rows.shape[0]:]
    params = adapter.trainable_parameters() + [word_rows]
    ids_all = adapter.tokenizer(captions)
    ids_empty = adapter.tokenizer([""])
    print(f"{len(clips)} clips ({sum('moving' in c for c in captions)} moving), trainable "
          f"{sum(p.numel() for p in params):,} params in {len(names)} tensors + the rows of {words} "
          f"(render + set-up {time.time() - t_start:.0f} s)", flush=True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    fwd = ForwardProcess(adapter.scheduler)
    gen = torch.Generator().manual_seed(args.seed)
    unet.train()
    losses, step, stopped_early = [], 0, False
    for step in range(args.steps):
        idx = torch.randint(0, len(clips), (args.batch_size,), generator=gen)
        x0 = clips[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(args.batch_size, generator=gen) < args.caption_dropout
        ids[drop] = ids_empty[0]
        emb = adapter.text_encoder(ids).last_hidden_state  # with gradient into the motion words' rows
        noise = (mixed_frame_noise(x0.shape, args.frame_noise_alpha, gen) if args.frame_noise_alpha
                 else torch.randn(x0.shape, generator=gen))
        t_idx = fwd.sample_indices(args.batch_size, gen)
        x_t = fwd.add_noise(x0, noise, t_idx)
        out = adapter.denoise(x_t, fwd.model_timesteps(t_idx, x_t), {"prompt_embeds": emb})
        loss = F.mse_loss(out, fwd.target(x0, noise, t_idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - args.ema)
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"step {step} loss {sum(losses[-20:]) / len(losses[-20:]):.4f} "
                  f"{time.time() - t_start:.0f} s", flush=True)
        if time.time() - t_start > args.max_minutes * 60:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            stopped_early = True
            break
    train_seconds = time.time() - t_start
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    adapter.save_pretrained(args.output)  # the motion modules alone, as a diffusers MotionAdapter folder
    save_motion_words(args.output, words, word_rows)
    size = sum(os.path.getsize(os.path.join(args.output, f)) for f in os.listdir(args.output))
    metadata = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python scripts/train_video_demo_model.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "steps": step + 1, "stopped_by_max_minutes": stopped_early,
        "batch_size": args.batch_size, "frames": args.frames, "learning_rate": args.lr, "warmup": args.warmup,
        "ema": args.ema, "num_clips": args.num_clips, "caption_dropout": args.caption_dropout,
        "moving_fraction": args.moving_fraction, "frame_noise_alpha": args.frame_noise_alpha, "init": args.init,
        "motion_words": words,
        "split": "train (diffalign.data.shapes_clips)", "train_wall_seconds": round(train_seconds, 1),
        "final_loss_mean_last_20": sum(losses[-20:]) / len(losses[-20:]),
        "trainable_params": sum(p.numel() for p in params), "weights_bytes": size,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_info(),
        "load_avg_at_start": load_start, "load_avg_at_end": list(os.getloadavg()),
    }
    with open(os.path.join(args.output, METADATA), "w") as f:
        json.dump(metadata, f, indent=1)
    print(json.dumps(metadata, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
