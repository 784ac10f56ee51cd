"""Train the shipped tiny text-to-image model (diffalign/assets/demo_model) on the procedural shapes data.

The shipped weights were made by exactly these two commands (2 CPU cores; see the asset's
diffalign_demo.json for the measured wall times, steps and base accuracy):

    OMP_NUM_THREADS=1 python scripts/train_demo_model.py --output /tmp/demo_clean --seed 0 --no-eval
    OMP_NUM_THREADS=1 python scripts/train_demo_model.py --init /tmp/demo_clean --output diffalign/assets/demo_model \
        --seed 1 --steps 300 --lr 7e-4 --warmup 10 --ema 0.98 --caption-noise 0.5

(one thread: on 2 cores shared with other work, two OpenMP threads spun on each other and a step took
10x longer.) Both stages train on the training split of diffalign.demo.shapes only: the held-out captions the
demo evaluates (at least 8 of every caption kind) are never seen, not even as a noisy caption.

Denoising (v-prediction, cosine betas) on 32x32 RGB images from diffalign.demo.shapes.ShapesDataset, with
10% caption dropout so classifier-free guidance works; the text encoder trains jointly; the saved weights
are an EMA of the trained ones. Training is meant to stop early: the model should draw recognisable
coloured shapes but still get many compositions (counts, relations, colour binding) wrong, so that
alignment against the compositional reward has something to fix. At the end it samples the held-out
prompts with the demo's evaluation sampler and records the measured accuracy in the metadata.

``--caption-noise p`` replaces each object's colour word with another colour with probability p
(:func:`diffalign.demo.shapes.noisy_caption`), as web alt-text is often wrong about what a picture shows. The
images are those of a clean run. A model trained on clean captions (p = 0, 2000 steps) learned its colours,
shapes and counts but not relations or shape binding, which 10 minutes of alignment on 2 CPU cores could not
teach it (every recipe measured stayed within noise). Trained with p = 0.5 it draws the prompt's colours only
about half the time: an error the reward sees and alignment can fix in minutes, as it does for web-trained
models (held-out numbers in the README). At p = 0.7 it drew the right colours too rarely to be a useful base
(held-out accuracy 13%, against 30% at p = 0.5, measured 2026-12-06).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="diffalign/assets/demo_model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (the cosine schedule ends here)")
    p.add_argument("--max-minutes", type=float, default=90.0, help="safety stop (then not reproducible: recorded in the metadata)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--num-images", type=int, default=20000, help="training images rendered up front")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--init", default=None, help="start from this saved demo model folder instead of random weights")
    p.add_argument("--caption-noise", type=float, default=0.0,
                   help="probability that each object's colour word is replaced by another colour "
                        "(shapes.noisy_caption): web-like captions, an error alignment can fix")
    p.add_argument("--eval-per-kind", type=int, default=None,
                   help="held-out samples of each caption kind scored at the end (default: the demo's, "
                        "diffalign.demo.run.SAMPLES_PER_KIND)")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    p.add_argument("--eval-only", action="store_true",
                   help="only (re-)measure the saved model in --output and update its metadata")
    args = p.parse_args(argv)
    if not 0.0 <= args.caption_noise <= 1.0:
        p.error(f"--caption-noise must be in [0, 1], got {args.caption_noise}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from diffalign.demo import shapes
    from diffalign.demo.model import build_demo_model, save_demo_model, task_vocabulary
    from diffalign.mdp.forward import ForwardProcess

    if args.eval_only:
        return evaluate_saved(args)
    torch.manual_seed(args.seed)
    t_start = time.time()
    data = shapes.ShapesDataset(args.num_images, seed=args.seed, split="train")
    images = torch.empty(len(data), 3, 32, 32)
    captions = []
    for i in tqdm(range(len(data)), desc="render", mininterval=5):
        images[i], c = data[i]
        if args.caption_noise > 0:  # its own generator, so the images are those of a clean run
            scene, _ = data.scene(i)
            c = shapes.noisy_caption(scene, np.random.default_rng([args.seed, i, 1]), args.caption_noise)
        captions.append(c)
    images = images * 2 - 1
    if args.init:  # continue from a saved demo model (a second training stage)
        from diffalign.demo.model import load_demo_model
        unet, text_encoder, tokenizer, scheduler, init_meta = load_demo_model(args.init)
        unet.requires_grad_(True), text_encoder.requires_grad_(True)
    else:
        unet, text_encoder, tokenizer, scheduler = build_demo_model(task_vocabulary(), seed=args.seed)
        init_meta = None
    ids = tokenizer(captions)
    empty = tokenizer([""])[0]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    print(f"{len(data)} images, vocab {tokenizer.vocab_size}, unet {sum(p.numel() for p in unet.parameters()):,} "
          f"+ text {sum(p.numel() for p in text_encoder.parameters()):,} params", flush=True)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    fwd = ForwardProcess(scheduler)
    gen = torch.Generator().manual_seed(args.seed)
    unet.train(), text_encoder.train()
    bar = tqdm(range(args.steps), desc="train")
    losses, step = [], 0
    for step in bar:
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x0, tok = images[idx], ids[idx].clone()
        drop = torch.rand(args.batch_size, generator=gen) < args.caption_dropout
        tok[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t_idx = fwd.sample_indices(args.batch_size, gen)
        x_t = fwd.add_noise(x0, noise, t_idx)
        emb = text_encoder(tok).last_hidden_state
        out = unet(x_t, fwd.model_timesteps(t_idx, x_t), encoder_hidden_states=emb).sample
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
        "command": "OMP_NUM_THREADS=1 python scripts/train_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "steps": step + 1, "batch_size": args.batch_size, "learning_rate": args.lr,
        "ema": args.ema, "num_images": args.num_images, "caption_dropout": args.caption_dropout,
        "caption_noise": args.caption_noise, "init": args.init,
        **({"init_metadata": {k: v for k, v in init_meta.items() if k != "base_eval"}} if init_meta else {}),
        "train_wall_seconds": round(train_seconds, 1), "final_loss_mean_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
    }
    save_demo_model(args.output, ema_unet.eval(), ema_text.eval(), tokenizer, scheduler, metadata)
    if not args.no_eval:
        evaluate_saved(args)
    print(f"saved {args.output} ({sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.output) for f in fs) / 2**20:.1f} MiB)")
    return 0


def evaluate_saved(args) -> int:
    """Sample the held-out prompts with the demo's evaluation sampler; record the scores in the metadata."""
    from diffalign.demo.model import MARKER
    from diffalign.demo.run import EVAL_DEFAULTS, SAMPLES_PER_KIND, base_sampler, eval_set, evaluate

    per_kind = SAMPLES_PER_KIND if args.eval_per_kind is None else args.eval_per_kind
    prompts, seeds = eval_set(per_kind)
    t0 = time.time()
    _, report = evaluate(base_sampler(args.output), prompts, seeds)
    path = os.path.join(args.output, MARKER)
    with open(path) as f:
        metadata = json.load(f)
    metadata["base_eval"] = dict(report, samples=len(prompts), samples_per_kind=per_kind,
                                 sampler=dict(EVAL_DEFAULTS), seconds=round(time.time() - t0, 1))
    with open(path, "w") as f:
        json.dump(metadata, f, indent=1)
    print(json.dumps(metadata["base_eval"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
