"""The direct-reward memory benchmark: its settings, one setting in a subprocess (as the CPU run measures it),
the table and the JSON, and the GPU-only model skipped on CPU."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_cover_k_1_5_all_and_alignprop_with_and_without_checkpointing():
    bench = _load()
    rows = bench.settings(10)
    assert [(r["method"], r["K"]) for r in rows if not r["checkpointing"]] == \
        [("draft", 1), ("draft", 5), ("draft", 10), ("alignprop", "random")]
    assert len(rows) == 8 and sum(r["checkpointing"] for r in rows) == 4
    assert [r["K"] for r in bench.settings(3) if r["method"] == "draft"][:2] == [1, 3]


def test_one_setting_runs_in_a_subprocess_and_the_table_prints(tmp_path, capsys):
    bench = _load()
    row = bench._run_child(["tiny", "cpu", 3, 1, 1, 0, {"method": "draft", "K": 3, "checkpointing": True}])
    assert row["model"] == "tiny" and row["K"] == 3 and row["mean_K"] == 3 and row["repeats"] == 1
    assert row["s_per_update"] > 0 and row["peak_mib"] >= 0 and "error" not in row
    inproc = bench.run_setting("tiny", "cpu", 3, 1, 1, 0, {"method": "alignprop", "K": "random", "checkpointing": False})
    assert 1 <= inproc["mean_K"] <= 3
    bench.print_table([row, inproc])
    out = capsys.readouterr().out
    assert "draft" in out and "alignprop" in out and "peak MiB" in out


def test_gpu_model_is_skipped_on_cpu_and_json_written(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "m.json"
    assert bench.main(["--device", "cpu", "--models", "sd15", "--json", str(out), "--note", "shared"]) == []
    assert "sd15: it runs on CUDA only" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["rows"] == [] and data["machine"]["torch"] and data["machine"]["cpu_model"]
    assert data["note"] == "shared"
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--models", "sdxl"])


def test_video_rows_cover_checkpointing_and_frame_subsampling_and_run():
    bench = _load()
    rows = bench.settings(10, "video", kept=2)
    assert [(r["K"], r["checkpointing"], r["reward_frames"]) for r in rows] == [
        (k, ckpt, f) for k in (1, 10) for ckpt in (False, True) for f in (None, 2)]
    assert all(r["method"] == "vader" for r in rows)
    row = bench.run_setting("video", "cpu", 2, 1, 1, 0, rows[3], video_shape={"frames": 3, "resolution": 16})
    assert row["model"] == "video" and row["frames"] == 3 and row["resolution"] == 16 and row["reward_frames"] == 2
    assert row["s_per_update"] > 0 and row["mean_K"] == 1 and row["checkpointing"] and "error" not in row
