"""The end-to-end benchmark runs on CPU (fp32, and the bf16/autocast path the GPU model takes) and writes its rows."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "benchmarks" / "bench_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_e2e_benchmark_writes_rows_and_checks_the_two_loops_agree(tmp_path, capsys, dtype):
    bench = _load()
    out = tmp_path / "e2e.json"
    rows = bench.main(["--device", "cpu", "--batch", "2", "--steps", "2", "--repeats", "2", "--warmup", "0",
                       "--dtype", dtype, "--json", str(out)])
    assert [(r["loop"], r["provider"]) for r in rows] == [(loop, p) for loop in ("rollout", "train")
                                                          for p in ("eager", "diffalign", "unet_only")]
    data = json.loads(out.read_text())
    assert data["rows"] == rows and data["machine"]["torch"]
    for r in rows:
        assert r["model"] == "tiny" and r["dtype"] == dtype and r["batch"] == 2 and r["steps"] == 2
        assert 0 < r["throughput_p20"] <= r["throughput"] <= r["throughput_p80"]
        assert r["unit"] == ("samples/s" if r["loop"] == "rollout" else "steps/s")
        assert ("speedup_vs_eager" in r) == (r["provider"] != "eager")
    # the eager DDPO-style step and the fused op score the same transitions alike
    (agree,) = [r["logprob_max_abs_diff"] for r in rows if r["logprob_max_abs_diff"] is not None]
    assert agree < 1e-4
    assert "diffalign" in capsys.readouterr().out


def test_e2e_benchmark_skips_the_gpu_model_on_cpu_and_rejects_unknown_models(capsys):
    bench = _load()
    assert bench.main(["--device", "cpu", "--models", "sd15"]) == []
    assert "sd15: it runs on CUDA only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--models", "sdxl"])


def test_eager_step_matches_diffusers_ddim_scheduler():
    """The baseline really is a diffusers DDIMScheduler step: same prev_sample for the same noise."""
    import torch
    from diffusers import DDIMScheduler
    bench = _load()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, set_alpha_to_one=False, clip_sample=False, steps_offset=1)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = sched.timesteps[3]
    torch.manual_seed(1)
    prev, log_prob = bench.eager_ddim_step(sched, 10, eps, t.repeat(2), x, 1.0)
    torch.manual_seed(1)
    noise = torch.randn_like(x)
    expected = sched.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(prev, expected, rtol=1e-5, atol=1e-5)
    assert log_prob.shape == (2,) and torch.isfinite(log_prob).all()


def test_e2e_benchmark_times_a_compiled_copy_of_the_unet(tmp_path):
    bench = _load()
    rows = bench.main(["--device", "cpu", "--batch", "2", "--steps", "2", "--repeats", "1", "--warmup", "1",
                       "--compile", "aot_eager", "--json", str(tmp_path / "e2e.json")])
    assert [(r["loop"], r["provider"]) for r in rows] == [(loop, p) for loop in ("rollout", "train")
                                                          for p in ("eager", "diffalign", "unet_only", "compiled")]
    for r in rows:
        assert ("speedup_vs_eager" in r) == (r["provider"] != "eager") and r["throughput"] > 0
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--compile", "no_such_backend"])
