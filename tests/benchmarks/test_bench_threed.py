"""benchmarks/bench_threed.py's results file and how benchmarks/report.py renders it (docs/results.md, README block)."""
import importlib.util
import json
import os

import pytest

from diffalign.eval.multiview import paired_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data():
    before = [[True] * 2 + [False] * 14, [False] * 16]
    after = [[True] * 6 + [False] * 10, [True] * 1 + [False] * 15]
    runs = []
    for i, (b, a) in enumerate(zip(before, after)):
        run = {"prompt": "a red circle", "seed": i}
        for method, c in (("sds", b), ("dreamfl", a)):
            run[method] = {"accuracy": sum(c) / 16, "ci95": [0.0, 0.5], "correct": c, "reward": 0.5,
                           "train_seconds": 10.0}
        runs.append(run)
    summary = paired_runs(before, after)
    return {"what": "Text-to-3D", "command": "python benchmarks/bench_threed.py", "date": "2026-12-07",
            "cpu": "AMD EPYC", "cpu_flags": ["avx2"], "threads": 1, "precision": "float32",
            "load_average": [5.0, 5.5], "epochs": 10, "baseline": "sds", "method": "dreamfl", "runs": runs,
            "summary": {k: v for k, v in summary.items() if k not in ("before_accuracy", "after_accuracy")}}


def test_threed_results_render_every_run_and_the_paired_summary(tmp_path):
    report = _module("report")
    data = _data()
    lines = "\n".join(report.render_threed("threed_cpu_2core_2026-12-07.json", data))
    assert lines.count("| a red circle |") == 2
    assert "12.5% [0%, 50%]" in lines and "37.5% [0%, 50%]" in lines and "+25.0" in lines
    # mean change (25 + 6.25) / 2 = 15.6 points; all 32 views pooled: 5 fixed, 0 broken
    assert "change +15.6 points" in lines and "5 fixed, 0 broken" in lines
    assert "load average 5.0 -> 5.5" in lines
    (tmp_path / "threed_cpu_2core_2026-12-07.json").write_text(json.dumps(data))
    head = report.render_threed_headline(tmp_path)
    assert "threed_cpu_2core_2026-12-07.json" in head and "change +15.6 points" in head
    assert "No measured run" in report.render_threed_headline(tmp_path / "none")
    # another method's file (bench_threed --method dreamdpo) goes to docs/results.md, not the demo's headline
    other = dict(data, method="dreamdpo", runs=[{**{k: v for k, v in r.items() if k != "dreamfl"},
                                                 "dreamdpo": r["dreamfl"]} for r in data["runs"]])
    (tmp_path / "threed_dreamdpo_cpu_2core_2026-12-08.json").write_text(json.dumps(other))
    assert "threed_cpu_2core_2026-12-07.json" in report.render_threed_headline(tmp_path)
    assert report.renderer_for("threed_dreamdpo_cpu_2core_2026-12-08.json")[1] is report.render_threed
    assert "dreamdpo accuracy" in "\n".join(report.render_threed("x.json", other))
    assert report.renderer_for("threed_cpu_2core_2026-12-07.json")[1] is report.render_threed


def test_the_recorded_command_leaves_the_note_out():
    bench = _module("bench_threed")
    assert bench._without_note(["--seeds", "1", "--note", "a long sentence"]) == ["--seeds", "1", "--note", "'...'"]


@pytest.mark.slow
def test_bench_threed_writes_every_run(tmp_path):
    bench = _module("bench_threed")
    out = tmp_path / "threed.json"
    assert bench.main(["--prompts", "a red circle", "--seeds", "0", "--epochs", "1", "--work", str(tmp_path / "w"),
                       "--out", str(out), "--method", "dreamdpo"]) == 0
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 1 and data["summary"]["runs"] == 1
    assert len(data["runs"][0]["sds"]["correct"]) == 16 and data["runs"][0]["dreamdpo"]["epochs"] == 1
    assert data["method"] == "dreamdpo"
