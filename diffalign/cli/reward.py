"""``diffalign reward train CONFIG.yaml [dotted.key=value ...]``: train a preference reward model."""
from __future__ import annotations

import argparse
import sys

from diffalign.cli.train import resolve_config_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="reward_command", required=True)
    t = sub.add_parser("train", help="fit a reward model (Bradley-Terry / Plackett-Luce, aspects, ties) to "
                                     "preference data; saves OUTPUT_DIR/reward")
    t.add_argument("config", help="YAML config (a path, or a shipped config name such as reward_bt_tiny)")
    t.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. epochs=5 data.path=pairs.jsonl")


def run(args) -> int:
    from diffalign.config import ConfigError
    from diffalign.data.types import PreferenceDataError
    from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model
    try:
        cfg = load_reward_train_config(resolve_config_path(args.config), args.overrides)
    except ConfigError as exc:
        print(f"diffalign reward train: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        train_reward_model(cfg)
    except (PreferenceDataError, FileNotFoundError) as exc:  # unusable data, missing backbone weights
        print(f"diffalign reward train: {exc}", file=sys.stderr)
        return 1
    return 0


HELP = "reward models: `reward train CONFIG` fits one to preference data (BT Eq. 3, PL Eq. 5, aspects, ties)"
