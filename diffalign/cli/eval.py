"""``diffalign eval preference|samples ...``: the evaluation suite (survey section 5).

Each evaluation lives in its own module under diffalign/eval with ``add_arguments(parser)``,
``run(args) -> int`` and a ``HELP`` line; EVALUATIONS lists them.
"""
from __future__ import annotations

import argparse
import importlib

# evaluation name -> module
EVALUATIONS = {
    "preference": "diffalign.eval.preference",
    "samples": "diffalign.eval.samples",
}

HELP = "evaluate: pairwise preference accuracy of a reward (preference), or a model's samples (samples)"


def _available():
    found = {}
    for name, module in EVALUATIONS.items():
        try:
            found[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency inside the module is a real error
                raise
    return found


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="evaluation", required=True)
    for name, module in _available().items():
        module.add_arguments(sub.add_parser(name, help=module.HELP))


def run(args) -> int:
    return importlib.import_module(EVALUATIONS[args.evaluation]).run(args)
