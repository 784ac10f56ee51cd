"""``diffalign sample CONFIG --method NAME [--budget N] [--output DIR]``: training-free alignment of any
configured model (the config's modality, prompts, sampling and reward.name), weights untouched.

Writes DIR/samples/NNNN.* (the modality adapter's ``save_sample``: PNG for images, a frame folder plus a GIF
for videos, .npy for vectors, SDF for molecules; an invalid sample, decoded to None, has none: its "file" is null)
and DIR/results.json: the method, budget,
model evaluations spent (and what plain sampling of the same samples costs), the reward of each
sample and their mean, and per sample its prompt, seed and what the method chose.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from diffalign.inference.methods import METHODS
    p.add_argument("config", help="YAML config (a path, or a shipped config name such as ddpo_tiny)")
    p.add_argument("--method", choices=METHODS, default="best_of_n")
    p.add_argument("--budget", type=int, default=None,
                   help="best_of_n: N; rejection: most samples; noise_opt: gradient steps; prompt_opt: candidates; "
                        "attend_excite: refinement iterations (see diffalign/inference/methods.py)")
    p.add_argument("--output", default=None, help="output folder (default: the config's output_dir + '/sample')")
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--reward", default=None, help="reward name ranking samples (default: the config's reward.name)")
    p.add_argument("--grad-reward", default=None,
                   help="noise_opt: the differentiable reward it climbs (default: --reward), e.g. shapes_surrogate")
    p.add_argument("--threshold", type=float, default=None, help="rejection: accept a sample at this reward")
    p.add_argument("--subjects", default=None, help="attend_excite: comma-separated subject words (default: content "
                                                    "words of each prompt)")
    p.add_argument("--lm-path", default=None, help="prompt_opt: a local causal LM folder used as a rewriter")
    p.add_argument("--baseline", action="store_true", help="also sample plainly at the same seeds and report it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config (before the --options)")




def run(args) -> int:
    from diffalign.cli.train import resolve_config_path
    from diffalign.config import ConfigError, load_config
    overrides = list(args.overrides)
    if not any(o.startswith("output_dir=") for o in overrides):
        overrides.append("output_dir=" + (args.output or "runs"))
    try:
        cfg = load_config(resolve_config_path(args.config), overrides)
    except ConfigError as exc:
        print(f"diffalign sample: bad config: {exc}", file=sys.stderr)
        return 2
    if args.samples_per_prompt < 1:
        print("diffalign sample: --samples-per-prompt must be >= 1", file=sys.stderr)
        return 2
    try:
        report = sample(cfg, args)
    except ValueError as exc:
        print(f"diffalign sample: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("method", "budget", "model_evaluations", "plain_model_evaluations",
                                             "reward_mean", "output")}, indent=1))
    return 0


def sample(cfg, args) -> dict:
    import torch

    from diffalign.inference.methods import plain_evaluations, run_method
    from diffalign.inference.rewards import make_reward
    from diffalign.config import config_prompts
    from diffalign.rewards import call_reward
    from diffalign.trainer.builders import build_adapter, build_policy
    from diffalign.seeding import derive_seed
    out_dir = args.output or os.path.join(cfg.output_dir, "sample")
    prompts = config_prompts(cfg)
    adapter = build_adapter(cfg, prompts, torch.device("cpu"))
    policy = build_policy(cfg, adapter)
    spec = args.reward or {"name": cfg.reward.name, "kwargs": cfg.reward.kwargs}
    reward_fn = make_reward(spec, adapter)
    grad_reward = make_reward(args.grad_reward, adapter) if args.grad_reward else None
    all_prompts = [p for p in prompts for _ in range(args.samples_per_prompt)]
    seeds = [derive_seed(cfg.seed, "sample", i) for i in range(len(all_prompts))]
    subjects = None
    if args.subjects:
        words = [w.strip() for w in args.subjects.split(",") if w.strip()]
        subjects = [words] * len(all_prompts)
    start = time.time()
    out = run_method(policy, args.method, all_prompts, seeds, reward_fn, args.budget, threshold=args.threshold,
                     grad_reward=grad_reward, subjects=subjects, lm_path=args.lm_path,
                     batch_size=cfg.sampling.batch_size, progress=not args.no_progress)
    seconds = time.time() - start
    rewards = call_reward(reward_fn, out.decoded, all_prompts, torch.device("cpu"))
    os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
    rows = []
    for i, (p, s) in enumerate(zip(all_prompts, seeds)):
        sample = out.decoded[i]  # None: an invalid sample (a molecule whose bonds were not perceived): no file
        file = None if sample is None else os.path.join("samples", adapter.save_sample(
            sample, os.path.join(out_dir, "samples"), f"{i:04d}"))
        rows.append({"file": file, "prompt": p, "seed": s, "reward": float(rewards[i]), **out.info[i]})
    from diffalign.inference.methods import DEFAULT_BUDGETS
    report = {"method": args.method, "budget": args.budget if args.budget is not None else DEFAULT_BUDGETS[args.method],
              "reward": spec if isinstance(spec, str) else cfg.reward.name,
              "model_evaluations": out.evaluations,
              "plain_model_evaluations": plain_evaluations(policy, len(all_prompts), all_prompts[0]),
              "evaluation_unit": "one denoiser forward on one sample (a guided step costs one per guidance branch: "
                                 "2 per sample for classifier-free guidance)",
              "reward_mean": float(rewards.mean()), "seconds": round(seconds, 3), "output": out_dir, "samples": rows}
    if args.baseline:
        base = run_method(policy, "plain", all_prompts, seeds, batch_size=cfg.sampling.batch_size, progress=False)
        plain = call_reward(reward_fn, base.decoded, all_prompts, torch.device("cpu"))
        report["plain_reward_mean"] = float(plain.mean())
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


HELP = ("training-free alignment of a configured model: best-of-N, rejection sampling, noise or prompt "
        "optimisation, Attend-and-Excite; writes samples and results.json")
