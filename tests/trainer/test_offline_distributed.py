"""Diffusion-KTO across 2 gloo processes: the reference point z is all-reduced, so 2 processes x 4
labels reproduce 1 process x 8 labels (same z, same loss, same weights)."""
import os
import subprocess
import sys

import pytest
import torch

from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from diffalign.trainer.distributed import derive_seed, has_accelerator_device
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import write_yaml

pytestmark = pytest.mark.skipif(has_accelerator_device(), reason="checks the CPU (gloo) fallback")

CFG = {
    "seed": 2, "epochs": 1,
    "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 20}},
    "prompts": {"list": ["a", "b", "c"]},
    "data": {"path": "synthetic:toy", "num_pairs": 16},
    "algorithm": {"name": "kto", "beta": 50.0},
    "train": {"batch_size": 8, "learning_rate": 0.01},
    "logging": {"tensorboard": False, "progress_bar": False},
}


def test_kto_reference_point_is_all_reduced_across_processes(tmp_path):
    path = write_yaml(tmp_path / "cfg.yaml", CFG)
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK")}
    single = subprocess.run([sys.executable, "-m", "diffalign.cli", "train", path, f"output_dir={tmp_path / 'one'}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(20000 + derive_seed(str(tmp_path), "kto") % 20000), "-m", "diffalign.cli", "train",
              path, f"output_dir={tmp_path / 'two'}", "train.batch_size=4"]
    two = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = read_metrics(str(tmp_path / "one" / "metrics.jsonl"))[0]
    m2 = read_metrics(str(tmp_path / "two" / "metrics.jsonl"))[0]
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2) and m1["num_items"] == m2["num_items"] == 32
    # z from the whole global batch on both ranks (it is > 0 here, so it matters); a per-rank z would differ
    assert m1["kl_ref"] > 0.01
    assert m2["kl_ref"] == pytest.approx(m1["kl_ref"], rel=1e-5, abs=1e-9)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m2["implicit_acc"] == pytest.approx(m1["implicit_acc"], abs=1e-6)
    w1 = load_checkpoint(latest_checkpoint(str(tmp_path / "one")))[0]
    w2 = load_checkpoint(latest_checkpoint(str(tmp_path / "two")))[0]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=1e-5)
