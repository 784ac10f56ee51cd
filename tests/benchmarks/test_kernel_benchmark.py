"""The kernel benchmark script runs end to end on CPU and writes the rows it promises."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_writes_rows_for_every_case(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "kernels.json"
    rows = bench.main(["--device", "cpu", "--ops", "logprob,dpo,ddim_step", "--shapes", "S", "--providers",
                       "eager,diffalign", "--masks", "none,full,positions,bool", "--runs", "2", "--rep-ms", "3",
                       "--wall-calls", "3", "--json", str(out)])
    assert len(rows) == 3 * 4 * 2 * 2  # ops x masks x modes x providers
    assert {r["mask"] for r in rows} == {"none", "full", "positions", "bool"}
    assert all(len(r["runs_p50_us"]) == 2 and r["p50_us"] == min(r["runs_p50_us"]) for r in rows)
    printed = capsys.readouterr().out
    assert "FAILED" not in printed and "x floor" in printed and "positions" in printed
    data = json.loads(out.read_text())
    assert data["copy_GBps"] > 0 and data["rows"] == rows
    for r in rows:
        assert {"kernel", "provider", "mode", "shape", "dtype", "p20_us", "p50_us", "p80_us", "wall_us", "device",
                "roofline_us", "floor_us"} <= set(r)
        assert 0 < r["p20_us"] <= r["p50_us"] <= r["p80_us"]
    data_rows = {(r["kernel"], r["mode"], r["mask"]) for r in rows}
    assert ("ddim_step", "full", "positions") in data_rows


def test_kernel_benchmark_rejects_unknown_names():
    bench = _load()
    with pytest.raises(SystemExit, match="unknown op 'nope'"):
        bench.main(["--device", "cpu", "--ops", "nope"])
    with pytest.raises(SystemExit, match="unknown shape 'XL'"):
        bench.main(["--device", "cpu", "--shapes", "XL"])
    with pytest.raises(SystemExit, match="unknown mask 'half'"):
        bench.main(["--device", "cpu", "--masks", "half"])
