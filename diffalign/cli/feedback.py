"""``diffalign feedback CONFIG OUT_DIR``: AI feedback, i.e. reward-labelled preference pairs."""
from __future__ import annotations

import argparse
import sys

from diffalign.cli.train import resolve_config_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config giving the model (modality), prompts, sampling and reward.name")
    p.add_argument("out_dir", help="folder for pairs.jsonl and the samples")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.0, help="keep pairs whose reward gap exceeds this")
    p.add_argument("--pairing", choices=("all", "best_worst"), default="all")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides (before the --options)")


def run(args) -> int:
    from diffalign.config import ConfigError, load_config
    from diffalign.inference.feedback import generate_feedback
    try:
        cfg = load_config(resolve_config_path(args.config), args.overrides)
    except ConfigError as exc:
        print(f"diffalign feedback: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        report = generate_feedback(cfg, args.out_dir, args.samples_per_prompt, args.threshold, args.pairing)
    except ValueError as exc:
        print(f"diffalign feedback: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


HELP = ("AI feedback: sample a model, label same-prompt pairs with a reward, write the preference JSONL "
        "the offline trainer reads")
