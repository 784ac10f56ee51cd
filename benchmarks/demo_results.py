"""Collect the report.json of `diffalign demo video` / `editing` / `planning` / `molecule` runs into one results
file under benchmarks/results/ (name it demo_<modality>_<cpu>_<date>.json).

    python benchmarks/demo_results.py OUT.json RUN_DIR [RUN_DIR ...] [--command "..."] [--note "..."]

Each RUN_DIR is a demo output folder; its report.json gives one row (training seed, epochs, accuracies before
and after per kind and attribute, the paired change with its CI and McNemar p, seconds, precision, CPU). Every
run must be of the same modality. benchmarks/report.py renders the file (docs/results.md and the README block of
that modality's demo).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence


MODALITIES = ("video", "editing", "planning", "molecule")
MODEL = {"video": "diffalign/assets/video_demo_motion", "editing": "diffalign/assets/editing_demo_model",
         "planning": "diffalign/assets/planning_demo_model", "molecule": "diffalign/assets/molecule_demo_model"}


def run_row(report: dict, modality: str = "video") -> dict:
    """One results row from a ``diffalign demo <modality>`` report.json."""
    if report.get("modality") != modality:
        raise ValueError(f"not a {modality} demo report (modality {report.get('modality')!r})")
    paired = report["paired"]
    if "all" not in paired:  # a demo without an accuracy headline (molecule: paired Vina energies): its own tests
        return {"seed": report["info"]["overrides"]["seed"], "algo": report["algo"], "epochs": report["info"]["epochs"],
                "before": report["before"], "after": report["after"], "paired": paired,
                "seconds": report["seconds"], "precision": report["precision"]["chosen"], "quick": report["quick"],
                "eval": report["eval"], "load_average": report.get("load_average")}
    return {"seed": report["info"]["overrides"]["seed"], "algo": report["algo"], "epochs": report["info"]["epochs"],
            "before": report["before"], "after": report["after"], "delta": paired["all"]["delta"],
            "ci95": paired["all"]["ci95"], "mcnemar_p": paired["all"]["mcnemar_p"],
            "fixed": paired["all"]["fixed"], "broken": paired["all"]["broken"],
            "per_kind": {k: v for k, v in paired.items() if k != "all"}, "seconds": report["seconds"],
            "precision": report["precision"]["chosen"], "precision_reason": report["precision"]["reason"],
            "quick": report["quick"], "eval": report["eval"]}


def collect(run_dirs: Sequence[str], command: Optional[str] = None, note: Optional[str] = None) -> dict:
    reports = []
    for d in run_dirs:
        with open(Path(d) / "report.json", encoding="utf-8") as f:
            reports.append(json.load(f))
    modality = reports[0].get("modality")
    if modality not in MODALITIES:
        raise ValueError(f"{run_dirs[0]}: modality {modality!r} is not one of {MODALITIES}")
    hw = reports[0]["hardware"]
    return {"what": f"diffalign demo {modality}, one run per algorithm and training seed",
            "command": command or f"diffalign demo {modality} --seed SEED --output DIR",
            "date": datetime.date.today().isoformat(), "cpu": hw["model"], "cpu_flags": hw["flags"],
            "threads": reports[0]["torch_threads"], "model": MODEL[modality], **({"note": note} if note else {}),
            "runs": [run_row(r, modality) for r in reports]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output")
    p.add_argument("runs", nargs="+")
    p.add_argument("--command", default=None, help="the command each run used (default: the plain demo command)")
    p.add_argument("--note", default=None)
    args = p.parse_args(argv)
    data = collect(args.runs, args.command, args.note)
    Path(args.output).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(data['runs'])} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
