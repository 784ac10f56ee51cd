"""benchmarks/demo_results.py collects `diffalign demo video` / `demo editing` reports; benchmarks/report.py renders
them (docs/results.md and README's headline block of each demo)."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _acc(total, moving, still):
    return {"accuracy": total, "reward": 0.5, "n": 48.0, "color": 0.5, "shape": 0.6, "count": 0.7,
            "direction": 0.25, "smoothness": 0.875, "accuracy/moving": moving, "accuracy/still": still}


def _report(seed, after):
    pc = {"n": 48, "delta": after - 0.125, "ci95": [after - 0.2, after - 0.05], "mcnemar_p": 0.0123,
          "fixed": 9, "broken": 2}
    return {"modality": "video", "algo": "rwr", "before": _acc(0.125, 0.0, 0.25), "after": _acc(after, 0.125, 0.5),
            "paired": {"all": pc, "moving": dict(pc), "still": dict(pc)},
            "info": {"overrides": {"seed": seed}, "epochs": 7}, "seconds": {"total": 900.0},
            "precision": {"chosen": "bf16", "reason": "measured faster"}, "quick": False,
            "eval": {"samples": 48}, "hardware": {"model": "AMD EPYC 9B14", "flags": ["avx512_bf16"]},
            "torch_threads": 2}


def test_collect_and_render(tmp_path):
    collector, report = _load("demo_results"), _load("report")
    dirs = []
    for seed, after in ((0, 0.3125), (1, 0.1875)):
        d = tmp_path / f"run{seed}"
        d.mkdir()
        (d / "report.json").write_text(json.dumps(_report(seed, after)))
        dirs.append(str(d))
    results = tmp_path / "results"
    results.mkdir()
    out = results / "demo_video_cpu_2core_2026-12-07.json"
    assert collector.main([str(out), *dirs, "--note", "a note"]) == 0
    data = json.loads(out.read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1] and data["cpu"] == "AMD EPYC 9B14" and data["threads"] == 2
    assert data["runs"][0]["delta"] == pytest.approx(0.1875) and data["runs"][0]["fixed"] == 9
    doc = report.render_results(results)
    assert "benchmarks/results/demo_video_cpu_2core_2026-12-07.json" in doc
    assert "12.5% -> **31.2%**" in doc and "**+18.8** [+11.2, +26.2]" in doc and "0.012" in doc and "9 / 2" in doc
    assert "0 / 25 -> 12 / 50" in doc and "15.0" in doc  # moving / still before -> after; 900 s = 15 minutes
    assert "change +6.2 to +18.8 points, mean +12.5; 1 of 2 reach +10" in doc and "a note" in doc
    headline = report.render_video_headline(results)
    assert "AMD EPYC 9B14" in headline and "12.5% -> **31.2%**" in headline and out.name in headline
    text = f"x\n{report.VIDEO_HEADLINE_START}\nold\n{report.VIDEO_HEADLINE_END}\ny\n"
    replaced = report.replace_block(text, headline, report.VIDEO_HEADLINE_START, report.VIDEO_HEADLINE_END)
    assert "old" not in replaced and headline in replaced


def test_collect_refuses_an_image_report(tmp_path):
    collector = _load("demo_results")
    with pytest.raises(ValueError, match="not a video demo report"):
        collector.run_row(dict(_report(0, 0.25), modality="image"))


@pytest.mark.parametrize("modality", ["video", "editing"])
def test_readme_demo_blocks_are_what_report_generates(modality):
    report = _load("report")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = report.modality_headline_markers(modality)
    assert start in readme
    assert readme == report.replace_block(readme, report.render_modality_headline(modality, report.RESULTS), start, end)
