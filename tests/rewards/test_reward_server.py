"""The reward server: same scores as in process, faults retried or raised (never a silent 0), trainer use."""
import logging
import os
import sys
import time

import pytest
import torch

from diffalign.rewards import REWARDS, bind_reward_kwargs
from diffalign.rewards.server import RewardServer, RewardServerError, make_reward_fn, submit_reward

FAULTS = '''
import os, time, torch

def crash_once(samples, prompts, marker):
    """Kills its process on the first call (a marker file remembers it across restarts)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return samples.flatten(1).mean(1)

def hang(samples, prompts):
    time.sleep(3600)

def raises(samples, prompts):
    raise ZeroDivisionError("a bug in the reward")

def nan_for_the_second(samples, prompts):
    r = torch.ones(len(prompts))
    r[1] = float("nan")
    return r
'''


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """A module of misbehaving rewards, importable in the spawned worker (it inherits sys.path)."""
    (tmp_path / "server_faults.py").write_text(FAULTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("server_faults", None)


def _images(n, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_scores_equal_in_process_scores_batched_and_async():
    images, prompts = _images(8), [f"p{i}" for i in range(8)]
    local = bind_reward_kwargs(REWARDS["color_target"], "color_target", {"target": [1.0, 0.0, 0.0]})
    expected = local(images, prompts)
    with RewardServer("color_target", {"target": [1.0, 0.0, 0.0]}, batch_size=3, timeout_s=30) as server:
        pid = server.pid
        assert torch.equal(server(images, prompts), expected)  # 3 requests of 3, 3, 2 samples
        first = server.submit(images[:5], prompts[:5])      # two calls in flight before either is read
        second = submit_reward(server, images[5:], prompts[5:], "cpu")
        assert torch.equal(second.result(), expected[5:]) and torch.equal(first.result(), expected[:5])
        assert server.pid == pid and server.restarts == 0   # one warm worker served every call
    assert server.pid is None


def test_a_crashed_worker_is_restarted_and_the_batch_retried(faults, caplog):
    marker = str(faults / "crashed")
    images = _images(4, 1)
    with caplog.at_level(logging.WARNING, logger="diffalign.rewards.server"):
        with RewardServer("server_faults:crash_once", {"marker": marker}, retries=1, timeout_s=30) as server:
            r = server(images, ["a"] * 4)
            assert server.restarts == 1 and len(server.faults) == 1
    assert os.path.exists(marker)
    assert torch.allclose(r, images.flatten(1).mean(1))
    assert "batch 0 (4 samples) crashed the reward process (exit code 7) (attempt 1 of 2)" in caplog.text


def test_a_hanging_reward_times_out_and_raises_after_its_retries(faults):
    server = RewardServer("server_faults:hang", retries=1, timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(RewardServerError, match=r"batch 0 \(2 samples\) timed out after 0.5 s .*attempt 2 of 2.*"
                                                r"giving up after 2 attempts"):
        server(_images(2), ["a", "b"])
    assert server.restarts == 1 and len(server.faults) == 2
    assert time.perf_counter() - start < 60
    server.close()


def test_reward_errors_are_raised_at_once_and_bad_scores_never_pass(faults):
    with RewardServer("server_faults:raises", retries=3, timeout_s=30) as server:
        with pytest.raises(RewardServerError, match="(?s)raised on batch 0.*ZeroDivisionError: a bug in the reward"):
            server(_images(2), ["a", "b"])
        assert server.restarts == 0  # a Python error is not retried: the same inputs would raise again
    with RewardServer("server_faults:nan_for_the_second", timeout_s=30) as server:
        with pytest.raises(RewardServerError, match="expected 3 finite values"):
            server(_images(3), ["a", "b", "c"])
    with pytest.raises(RewardServerError, match="(?s)loading the reward failed.*unknown"):
        RewardServer("no_such_reward", timeout_s=30)
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        RewardServer("brightness", timeout_s=0, start=False)


def test_make_reward_fn_follows_the_config():
    from diffalign.config import RewardConfig, RewardServerConfig
    local = make_reward_fn(RewardConfig("brightness"), "image")
    assert not isinstance(local, RewardServer)
    assert torch.equal(submit_reward(local, torch.ones(2, 3, 4, 4), ["a", "b"], "cpu").result(), torch.ones(2))
    served = make_reward_fn(RewardConfig("brightness", server=RewardServerConfig(enabled=False)), "image")
    assert not isinstance(served, RewardServer)


def test_trainer_with_the_reward_server_matches_the_in_process_run(tmp_path):
    from diffalign.config import load_config
    from diffalign.trainer import make_trainer

    base = {"seed": 3, "epochs": 2,
            "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 5}},
            "prompts": {"list": ["a", "b"]}, "sampling": {"num_steps": 3, "batch_size": 4, "num_batches_per_epoch": 2},
            "reward": {"name": "toy_target_distance"}, "algorithm": {"name": "ddpo", "min_count": 2},
            "train": {"batch_size": 4}, "logging": {"tensorboard": False, "progress_bar": False}}
    runs = {}
    for served in (False, True):
        data = dict(base, output_dir=str(tmp_path / f"served_{served}"))
        data["reward"] = dict(base["reward"], server={"enabled": served, "timeout_s": 30, "retries": 1})
        trainer = make_trainer(load_config(data=data))
        runs[served] = trainer.train()
        if served:
            assert isinstance(trainer.reward_fn, RewardServer) and trainer.reward_fn.pid is None  # closed at the end
    for a, b in zip(runs[False], runs[True]):
        assert a["reward_mean"] == b["reward_mean"] and a["loss"] == b["loss"]
        assert b["reward_server_restarts"] == 0 and "reward_server_restarts" not in a
