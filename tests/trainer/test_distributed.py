"""`accelerate launch --multi_gpu --num_processes 2` on a GPU-less machine: one gloo group of 2,
and 2 processes x half the batch reproduce the single-process first update."""
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


def test_two_processes_form_one_group_and_match_single_process(tiny_config, tmp_path):
    cfg = dict(tiny_config, epochs=1)
    cfg["algorithm"] = {"name": "ddpo", "clip_range": 0.05, "min_count": 100}
    cfg["train"] = {"batch_size": 8, "learning_rate": 0.01, "inner_epochs": 1}
    path = write_yaml(tmp_path / "cfg.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK")}
    single = subprocess.run([sys.executable, "-m", "diffalign.cli", "train", path, f"output_dir={tmp_path / 'one'}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", str(20000 + derive_seed(str(tmp_path)) % 20000), "-m", "diffalign.cli", "train", path,
              f"output_dir={tmp_path / 'two'}", "sampling.batch_size=4", "train.batch_size=4"]
    two = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = read_metrics(str(tmp_path / "one" / "metrics.jsonl"))[0]
    m2 = read_metrics(str(tmp_path / "two" / "metrics.jsonl"))[0]
    assert m1["num_processes"] == 1 and m2["num_processes"] == 2  # one group of two, not two loners
    # the reward statistics cover both ranks' samples: the gather went through the group
    assert m2["reward_mean"] == pytest.approx(m1["reward_mean"], rel=1e-6)
    assert m2["reward_std"] == pytest.approx(m1["reward_std"], rel=1e-6)
    w1 = load_checkpoint(latest_checkpoint(str(tmp_path / "one")))[0]
    w2 = load_checkpoint(latest_checkpoint(str(tmp_path / "two")))[0]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(w1[k], v) for k, v in load_initial(tiny_config).items())  # it did update


def load_initial(tiny_config):
    from diffalign.modalities.toy import ToyAdapter
    o = tiny_config["modality"]["options"]
    a = ToyAdapter(tiny_config["prompts"]["list"], dim=o["dim"], hidden=o["hidden"], scheduler=o["scheduler"],
                   pretrain_steps=o["pretrain_steps"])
    return a.trainable_state_dict()
