"""End to end on the toy modality: metrics, checkpoints, exact resume (also after SIGKILL), CLI."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from diffalign.config import load_config
from diffalign.trainer import make_trainer
from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import TIMING, write_yaml

REQUIRED = {"epoch", "reward_mean", "reward_std", "loss", "clip_fraction", "approx_kl", "samples_per_s"}


def run(cfg_dict, *overrides):
    trainer = make_trainer(load_config(data=cfg_dict, overrides=list(overrides)))
    return trainer.train()


def comparable(lines):
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def test_metrics_checkpoints_and_final_weights(tiny_config):
    history = run(tiny_config, "epochs=2", "checkpoint.keep_last=1")
    out = tiny_config["output_dir"]
    lines = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [line["epoch"] for line in lines] == [0, 1]
    assert REQUIRED <= set(lines[0])
    assert comparable(lines) == comparable(history)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["epoch_000001"]  # keep_last=1
    weights, state = load_checkpoint(latest_checkpoint(out))
    assert state["epoch"] == 1 and "tracker" in state["algorithm"]
    assert os.path.isfile(os.path.join(out, "final", "trainable.safetensors"))


@pytest.mark.parametrize("algorithm", [
    {"name": "ddpo", "clip_range": 0.05, "min_count": 4},
    {"name": "dpok", "beta": 0.1, "clip_range": 0.05},
])
def test_resume_reproduces_uninterrupted_run(tiny_config, tmp_path, algorithm):
    tiny_config["algorithm"] = algorithm
    full = run(tiny_config, f"output_dir={tmp_path / 'full'}")
    run(tiny_config, f"output_dir={tmp_path / 'part'}", "epochs=2")
    resumed = run(tiny_config, f"output_dir={tmp_path / 'part'}", "resume_from=latest")
    assert [m["epoch"] for m in resumed] == [2, 3]
    assert comparable(resumed) == comparable(full[2:])
    lines = read_metrics(str(tmp_path / "part" / "metrics.jsonl"))
    assert comparable(lines) == comparable(full)
    a = load_checkpoint(latest_checkpoint(str(tmp_path / "full")))[0]
    b = load_checkpoint(latest_checkpoint(str(tmp_path / "part")))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


# The CLI run, stopped for certain mid-save: once epoch 2's state.pt is written into epoch_000002.tmp (not yet
# renamed), it says so and waits to be killed.
KILLED_MID_SAVE = """
import sys, time, torch
real_save = torch.save
def save(obj, path, *args, **kwargs):
    real_save(obj, path, *args, **kwargs)
    if isinstance(obj, dict) and obj.get("epoch") == 2:
        print("MID-SAVE", flush=True)
        time.sleep(600)
torch.save = save
from diffalign.cli import main
main(["train", sys.argv[1]])
"""


def test_resume_after_sigkill(tiny_config, tmp_path):
    full = run(tiny_config, f"output_dir={tmp_path / 'full'}", "epochs=5")
    cfg = dict(tiny_config, output_dir=str(tmp_path / "killed"), epochs=5)
    path = write_yaml(tmp_path / "cfg.yaml", cfg)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, path], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        said = []
        for line in proc.stdout:
            said.append(line.strip())
            if line.strip() == "MID-SAVE":
                break
        assert said and said[-1] == "MID-SAVE" and proc.poll() is None, (said, proc.poll())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckdir = tmp_path / "killed" / "checkpoints"
    assert "epoch_000002.tmp" in os.listdir(ckdir)  # the kill landed in the middle of a save
    assert latest_checkpoint(str(tmp_path / "killed")).endswith("epoch_000001")
    resumed = run(cfg, "resume_from=latest")
    assert [m["epoch"] for m in resumed] == [2, 3, 4]
    lines = read_metrics(str(tmp_path / "killed" / "metrics.jsonl"))
    assert comparable(lines) == comparable(full)


def test_cli_train_writes_metrics(tiny_config, tmp_path):
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    proc = subprocess.run([sys.executable, "-m", "diffalign.cli", "train", path, "epochs=1",
                           "logging.tensorboard=true"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tiny_config["output_dir"]
    assert json.loads(open(os.path.join(out, "metrics.jsonl")).readline())["epoch"] == 0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(out, "tensorboard")))


TARGET, FIRST = "toy_target_distance", "toy_first_coordinate"


@pytest.mark.parametrize("algorithm,scheduler,reward,extra", [
    ({"name": "ddpo", "clip_range": 0.05, "min_count": 4}, "ddim", TARGET, []),
    # one unclipped step per rollout (Eq. 17): noisier, so the easier, monotone reward
    ({"name": "ddpo", "estimator": "score_function"}, "ddpm", FIRST,
     ["train.learning_rate=0.003", "train.inner_epochs=1", "train.batch_size=16"]),
    ({"name": "dpok", "beta": 0.01, "clip_range": 0.05}, "ddim", TARGET, []),
    ({"name": "rwr", "weighting": "exp", "temperature": 1.0}, "ddim", TARGET, []),
    ({"name": "rwr", "weighting": "sparse", "threshold": -1.0}, "ddim", TARGET, ["train.learning_rate=0.003"]),
    ({"name": "grpo", "group_size": 4, "clip_range": 0.05, "beta": 0.01}, "flow", TARGET, []),
])
def test_every_algorithm_raises_the_toy_reward(tiny_config, algorithm, scheduler, reward, extra):
    tiny_config["algorithm"] = algorithm
    tiny_config["modality"]["options"].update(scheduler=scheduler, pretrain_steps=100)
    tiny_config["reward"]["name"] = reward
    history = run(tiny_config, "epochs=12", "sampling.batch_size=16", "train.batch_size=8",
                  "train.learning_rate=0.01", "prompts.list=[a]", "checkpoint.every=100", *extra)
    first = sum(m["reward_mean"] for m in history[:3]) / 3
    last = sum(m["reward_mean"] for m in history[-3:]) / 3
    assert last > first, [round(m["reward_mean"], 3) for m in history]
