"""The ``diffalign`` command line.

One module per subcommand (``diffalign/cli/<name>.py``) with ``add_arguments(parser)``, ``run(args) -> int``
and a ``HELP`` line; SUBCOMMANDS lists them. Modules are imported lazily so ``diffalign --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Dict, List, Optional, Tuple

from diffalign.cli.train import shipped_config  # noqa: F401  (public: tests and users resolve shipped configs)

# subcommand name -> module under diffalign.cli
SUBCOMMANDS = {
    "train": "train",
    "feedback": "feedback",
    "eval": "eval",
    "reward": "reward",
    "demo": "demo",
    "sample": "sample",
    "export-3d": "export3d",
}


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, Dict[str, ModuleType]]:
    """(args, the subcommand modules). ``dotted.key=value`` overrides may come after options too
    (``diffalign demo molecule --seed 1 algorithm.beta=2000``): argparse fills a positional list in one go, so
    overrides it meets after an option would be "unrecognized"; they are appended to ``args.overrides``."""
    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models with rewards and preferences")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module in SUBCOMMANDS.items():
        modules[name] = importlib.import_module(f"diffalign.cli.{module}")
        modules[name].add_arguments(sub.add_parser(name, help=modules[name].HELP))
    args, rest = parser.parse_known_args(argv)
    late = [a for a in rest if "=" in a and not a.startswith("-")]
    if late and isinstance(getattr(args, "overrides", None), list):
        args.overrides += late
        rest = [a for a in rest if a not in late]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args, modules


def main(argv: Optional[List[str]] = None) -> None:
    args, modules = parse_args(sys.argv[1:] if argv is None else argv)
    raise SystemExit(modules[args.command].run(args))
