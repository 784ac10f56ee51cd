"""The ``diffalign`` command line: ``diffalign train CONFIG.yaml [dotted.key=value ...]``.

Subcommands register in SUBCOMMANDS (name -> (add_arguments, run)); bench, eval, demo and sample
will join ``train`` there.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Tuple


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (a path, or the name of a shipped config such as ddpo_tiny)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. epochs=3 train.learning_rate=1e-4")


def shipped_config(name: str) -> Optional[str]:
    """Path of a config shipped in diffalign/configs (``ddpo_tiny`` or ``ddpo_tiny.yaml``), else None."""
    import os
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    for candidate in (name, name + ".yaml"):
        path = os.path.join(base, candidate)
        if os.path.isfile(path):
            return path
    return None


def _train(args) -> int:
    import os

    from diffalign.config import ConfigError, load_config
    from diffalign.trainer.distributed import make_accelerator
    path = args.config if os.path.isfile(args.config) else (shipped_config(args.config) or args.config)
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg = load_config(path, args.overrides, num_processes=world)
    except ConfigError as exc:
        print(f"diffalign train: bad config: {exc}", file=sys.stderr)
        return 2
    from diffalign.trainer import make_trainer
    trainer = make_trainer(cfg, make_accelerator(cfg.train.mixed_precision))
    trainer.train()
    return 0


def _feedback_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config giving the model (modality), prompts, sampling and reward.name")
    p.add_argument("out_dir", help="folder for pairs.jsonl and the samples")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.0, help="keep pairs whose reward gap exceeds this")
    p.add_argument("--pairing", choices=("all", "best_worst"), default="all")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides (before the --options)")


def _feedback(args) -> int:
    import os

    from diffalign.config import ConfigError, load_config
    from diffalign.data.ai_feedback import generate_feedback
    path = args.config if os.path.isfile(args.config) else (shipped_config(args.config) or args.config)
    try:
        cfg = load_config(path, args.overrides)
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


SUBCOMMANDS: Dict[str, Tuple[Callable, Callable, str]] = {
    "train": (_train_args, _train, "align a diffusion model online (RWR, DDPO, DPOK, GRPO) or offline from "
                                   "preferences (DPO, IPO, ORPO, SimPO, KTO, E2PO)"),
    "feedback": (_feedback_args, _feedback, "AI feedback: sample a model, label same-prompt pairs with a reward, "
                                            "write the preference JSONL the offline trainer reads"),
}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models with rewards and preferences")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _, help_text) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    raise SystemExit(SUBCOMMANDS[args.command][1](args))


if __name__ == "__main__":
    main()
