"""accelerate's own FSDP2 path on a GPU (benchmarks/gpu_check.sh runs it; skipped without CUDA): `accelerate launch`
with an FSDP2 config trains the toy through `diffalign train`, and a resumed run reproduces the uninterrupted one.
On CPU accelerate does not shard (tests/trainer/test_fsdp.py covers FSDP2 on 2 gloo processes instead)."""
import os
import subprocess
import sys

import pytest
import torch

from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import TIMING, write_yaml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate shards with FSDP on GPUs only")
pytest.importorskip("accelerate")  # a GPU machine without the project's dependencies installed

ACCELERATE_FSDP2 = {
    "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_processes": 1, "num_machines": 1,
    "machine_rank": 0, "mixed_precision": "no", "use_cpu": False,
    "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "NO_WRAP", "fsdp_reshard_after_forward": True,
                    "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_cpu_ram_efficient_loading": False,
                    "fsdp_offload_params": False},
}


def train(acc_cfg, cfg, out, *overrides):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", acc_cfg, "-m", "diffalign.cli",
           "train", cfg, f"output_dir={out}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(os.path.join(out, "metrics.jsonl"))]


def test_accelerate_fsdp2_trains_and_resumes_exactly(tiny_config, tmp_path):
    acc_cfg = write_yaml(tmp_path / "accelerate.yaml", ACCELERATE_FSDP2)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    full = train(acc_cfg, cfg, tmp_path / "full")
    train(acc_cfg, cfg, tmp_path / "part", "epochs=2")
    resumed = train(acc_cfg, cfg, tmp_path / "part", "resume_from=latest")
    assert [m["epoch"] for m in full] == [0, 1, 2, 3]
    assert resumed == full  # metrics.jsonl of the resumed run: epochs 0-1 written first, then 2-3 after resume
    assert os.listdir(tmp_path / "part" / "final")
