"""Measure ``diffalign demo`` as a user runs it: one full run per seed, one after another, each in its own process,
timed end to end; a table on stdout and the runs as JSON (the source of the README's headline and of
docs/results.md).

    python benchmarks/bench_demo.py --seeds 0,1,2,3,4 --json benchmarks/results/demo_default_cpu_2core_DATE.json
    python benchmarks/bench_demo.py --seeds 0 --emulate-avx2      # a CPU without bf16 units, on one that has them
    python benchmarks/bench_demo.py --seeds 0 -- --algo grpo train.learning_rate=3e-4   # demo options after --
    python benchmarks/bench_demo.py --seeds 0,1 -- --algo ipo demo.feedback=runs/fb/seed{seed}  # {seed}: the run's

``--emulate-avx2`` runs each demo with ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``: oneDNN and
torch's own kernels then use AVX2 only, as on a CPU without AVX-512 or bf16 units, so bf16 autocast is slow
(``train.mixed_precision: auto`` measures that and picks float32) and float32 runs at AVX2 speed. It emulates the
instruction set, not the clock or the memory of such a machine: say so beside its numbers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

KINDS = ("single", "count", "relation")
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds, one demo run each")
    p.add_argument("--output", default="runs/bench_demo", help="folder for the runs' output folders")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--emulate-avx2", action="store_true", help="restrict oneDNN and ATen to AVX2 (see above)")
    p.add_argument("--what", default="diffalign demo with the default settings", help="the JSON's description")
    p.add_argument("demo_args", nargs="*", help="extra `diffalign demo` arguments (after --)")
    return p.parse_args(argv)


def _keys(acc: dict) -> dict:
    return {k: acc[k] for k in ["accuracy"] + [f"accuracy/{kind}" for kind in KINDS] + ["accuracy_by_caption"]
            if k in acc}


def seed_args(demo_args, seed: int):
    """The demo arguments of one seed's run: ``{seed}`` becomes the seed (e.g. each seed's own stored feedback)."""
    return [a.replace("{seed}", str(seed)) for a in demo_args]


def run_one(seed: int, out: str, demo_args, env) -> dict:
    """One ``diffalign demo`` in a subprocess; its report's headline fields and the measured wall time."""
    cmd = [sys.executable, "-m", "diffalign.cli", "demo", "--output", out, "--seed", str(seed), *seed_args(demo_args, seed)]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    paired = report["paired"]["all"]
    return {"seed": seed, "epochs": report["info"].get("epochs"), "wall_seconds": round(wall, 1),
            "seconds": {k: round(v, 1) for k, v in report["seconds"].items()},
            "precision": report["precision"]["chosen"], "precision_reason": report["precision"]["reason"],
            "before": _keys(report["before"]), "after": _keys(report["after"]),
            "delta": paired["delta"], "ci95": paired["ci95"], "mcnemar_p": paired["mcnemar_p"],
            "improved": paired["fixed"], "worsened": paired["broken"],
            "per_kind": {k: {f: report["paired"][k][f] for f in ("delta", "ci95", "mcnemar_p", "fixed", "broken")}
                         for k in KINDS if k in report["paired"]},
            "report": os.path.join(out, "report.json")}


def table(runs) -> str:
    rows = ["| seed | epochs | wall (s) | precision | before | after | change [95% CI] | McNemar p | "
            "single / count / relation after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        a = r["after"]
        rows.append(f"| {r['seed']} | {r['epochs']} | {r['wall_seconds']:.0f} | {r['precision']} | "
                    f"{100 * r['before']['accuracy']:.1f}% | {100 * a['accuracy']:.1f}% | "
                    f"{100 * r['delta']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}] | "
                    f"{r['mcnemar_p']:.2g} | " + " / ".join(f"{100 * a.get(f'accuracy/{k}', 0):.0f}" for k in KINDS)
                    + "% |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    env = dict(os.environ, **(AVX2_ENV if args.emulate_avx2 else {}))
    from diffalign.trainer.precision import cpu_info
    runs = []
    for seed in seeds:
        runs.append(run_one(seed, os.path.join(args.output, f"seed{seed}"), args.demo_args, env))
        print(table(runs[-1:]), flush=True)
    with open(runs[0]["report"]) as f:
        first = json.load(f)
    result = {"what": args.what, "date": datetime.date.today().isoformat(),
              "cpu": cpu_info()["model"], "cpu_flags": cpu_info()["flags"], "threads": first["torch_threads"],
              "emulate_avx2": args.emulate_avx2, "env": AVX2_ENV if args.emulate_avx2 else {},
              "command": "diffalign demo " + " ".join(args.demo_args), "eval": first["eval"],
              "base": _keys(first["before"]), "runs": runs}
    print(table(runs))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
