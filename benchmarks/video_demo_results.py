"""Collect the report.json of `diffalign demo video` runs into one results file under benchmarks/results/.

    python benchmarks/video_demo_results.py OUT.json RUN_DIR [RUN_DIR ...] [--command "..."] [--note "..."]

Each RUN_DIR is a demo output folder; its report.json gives one row (training seed, epochs, accuracies before
and after per kind and attribute, the paired change with its CI and McNemar p, seconds, precision, CPU).
benchmarks/report.py renders the file (docs/results.md and README's video headline block).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence


def run_row(report: dict) -> dict:
    """One results row from a video demo report.json."""
    if report.get("modality") != "video":
        raise ValueError(f"not a video demo report (modality {report.get('modality')!r})")
    paired = report["paired"]
    return {"seed": report["info"]["overrides"]["seed"], "algo": report["algo"], "epochs": report["info"]["epochs"],
            "before": report["before"], "after": report["after"], "delta": paired["all"]["delta"],
            "ci95": paired["all"]["ci95"], "mcnemar_p": paired["all"]["mcnemar_p"],
            "fixed": paired["all"]["fixed"], "broken": paired["all"]["broken"],
            "per_kind": {k: v for k, v in paired.items() if k != "all"}, "seconds": report["seconds"],
            "precision": report["precision"]["chosen"], "precision_reason": report["precision"]["reason"],
            "quick": report["quick"], "eval": report["eval"]}


def collect(run_dirs: Sequence[str], command: str, note: Optional[str] = None) -> dict:
    reports = []
    for d in run_dirs:
        with open(Path(d) / "report.json", encoding="utf-8") as f:
            reports.append(json.load(f))
    hw = reports[0]["hardware"]
    return {"what": "diffalign demo video, the default algorithm, one run per training seed",
            "command": command, "date": datetime.date.today().isoformat(), "cpu": hw["model"],
            "cpu_flags": hw["flags"], "threads": reports[0]["torch_threads"],
            "motion_model": "diffalign/assets/video_demo_motion", **({"note": note} if note else {}),
            "runs": [run_row(r) for r in reports]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output")
    p.add_argument("runs", nargs="+")
    p.add_argument("--command", default="diffalign demo video --seed SEED --output DIR")
    p.add_argument("--note", default=None)
    args = p.parse_args(argv)
    data = collect(args.runs, args.command, args.note)
    Path(args.output).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(data['runs'])} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
