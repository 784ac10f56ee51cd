"""benchmarks/gpu_check.sh's control flow, offline: python3 and nvidia-smi are stubs that log their
arguments, and a carried build (.gpu_so/) stands in for the CUDA build, so no GPU or compiler is needed.
A device session has minutes, not hours: a wrong stage order or a missing flag there costs a whole run."""
import os
import pathlib
import shutil
import stat
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _stub(path: pathlib.Path, log: pathlib.Path):
    path.write_text(f'#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "{log}"\nexit 0\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path, **env):
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", repo / "benchmarks" / "gpu_check.sh")
    (repo / "diffalign").mkdir()
    (repo / "modalities").mkdir()
    (repo / ".gpu_so").mkdir()
    (repo / ".gpu_so" / "_C.cpython-312-x86_64-linux-gnu.so").write_bytes(b"carried build")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("python3", "nvidia-smi", "g++"):
        _stub(bin_dir / name, log)
    out = tmp_path / "out"
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(out), "HOME": str(tmp_path), **env}
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--shapes", "S,XL"], cwd=repo, env=full_env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = [line for line in log.read_text().splitlines() if line.startswith("python3")]
    return repo, res.stdout, calls


def test_default_runs_tests_kernels_and_one_compiled_e2e(tmp_path):
    repo, stdout, calls = _run(tmp_path)
    assert "reusing the carried extension build" in stdout
    assert (repo / "diffalign" / "_C.cpython-312-x86_64-linux-gnu.so").read_bytes() == b"carried build"
    assert (repo / "diffalign" / "modalities").is_symlink()
    tests = [c for c in calls if "-m pytest" in c]
    kernels = [c for c in calls if "benchmarks/bench_ops.py" in c]
    e2e = [c for c in calls if "benchmarks/bench_e2e.py" in c]
    assert len(tests) == 1 and "tests/ops/test_ops_long_rows.py" in tests[0]
    assert "tests/ops/test_ops_masks.py" in tests[0]  # the masked CUDA kernels run on the lent GPU too
    assert "tests/trainer/test_fsdp_gpu.py" in tests[0]  # and accelerate's own FSDP2 path
    assert len(kernels) == 1 and "--device cuda" in kernels[0] and kernels[0].endswith("--shapes S,XL")
    # one e2e run: sd15 with the compiled UNet, which also times eager, diffalign and the UNet-only floor
    assert len(e2e) == 1 and "--models sd15 --compile inductor" in e2e[0]
    order = [next(i for i, c in enumerate(calls) if key in c) for key in ("-m pytest", "bench_ops.py", "bench_e2e.py")]
    assert order == sorted(order)


def test_stages_and_uncompiled_e2e(tmp_path):
    _, _, calls = _run(tmp_path, STAGES="e2e", E2E_COMPILE="0")
    assert not any("-m pytest" in c or "bench_ops.py" in c for c in calls)
    e2e = [c for c in calls if "benchmarks/bench_e2e.py" in c]
    assert len(e2e) == 1 and "--compile" not in e2e[0] and "--models" not in e2e[0]
