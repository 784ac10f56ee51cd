"""The ``diffalign`` command line.

One module per subcommand (``diffalign/cli/<name>.py``) with ``add_arguments(parser)``, ``run(args) -> int``
and a ``HELP`` line; SUBCOMMANDS lists them. Modules are imported lazily so ``diffalign --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models with rewards and preferences")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module in SUBCOMMANDS.items():
        modules[name] = importlib.import_module(f"diffalign.cli.{module}")
        modules[name].add_arguments(sub.add_parser(name, help=modules[name].HELP))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    raise SystemExit(modules[args.command].run(args))
