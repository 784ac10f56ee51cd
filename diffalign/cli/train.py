"""``diffalign train CONFIG.yaml [dotted.key=value ...]``: run the trainer on a config."""
from __future__ import annotations

import argparse
import os
import sys

from diffalign.config import resolve_config_path, shipped_config  # noqa: F401  (public here too)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (a path, or the name of a shipped config such as ddpo_tiny)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. epochs=3 train.learning_rate=1e-4")


def run(args) -> int:
    from diffalign.config import ConfigError, load_config
    from diffalign.trainer.distributed import make_accelerator
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg = load_config(resolve_config_path(args.config), args.overrides, num_processes=world)
    except ConfigError as exc:
        print(f"diffalign train: bad config: {exc}", file=sys.stderr)
        return 2
    from diffalign.trainer import make_trainer
    trainer = make_trainer(cfg, make_accelerator(cfg.train.mixed_precision))
    trainer.train()
    # the ranks of a multi-process run leave together and close their process group: a gloo group left to
    # interpreter exit aborted now and then ("terminate called without an active exception", SIGABRT) after a
    # run that had succeeded
    trainer.acc.wait_for_everyone()
    trainer.acc.end_training()
    del trainer
    import gc
    gc.collect()
    return 0


HELP = ("align a diffusion model: online RL (RWR, DDPO, DPOK, GRPO), direct reward fine-tuning (ReFL, DRaFT, "
        "AlignProp), online per-step preferences (D3PO, SPO) or offline preferences (DPO, IPO, ORPO, SimPO, KTO, E2PO)")
