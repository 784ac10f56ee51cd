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

def misbehave(samples, prompts):
    """What goes wrong is named by the first prompt."""
    what = prompts[0]
    if what.startswith("crash_once:"):  # kill the process on the first call; a marker file remembers it
        marker = what.split(":", 1)[1]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(7)
    elif what == "hang":
        time.sleep(3600)
    elif what == "raise":
        raise ZeroDivisionError("a bug in the reward")
    elif what == "nan":
        return torch.tensor([1.0] + [float("nan")] * (len(prompts) - 1))
    return samples.flatten(1).mean(1)
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


def test_faults_are_retried_or_raised_never_scored_zero(faults, caplog):
    """One server through every fault (each spawn costs seconds): a reward error, a non-finite score,
    a crash (retried, succeeds), a hang (times out, raises after its retries)."""
    images = _images(3, 1)
    server = RewardServer("server_faults:misbehave", retries=1, timeout_s=3)
    with pytest.raises(RewardServerError, match="(?s)raised on batch 0.*ZeroDivisionError: a bug in the reward"):
        server(images, ["raise"] * 3)
    assert server.restarts == 0  # a Python error is not retried: the same inputs would raise again
    with pytest.raises(RewardServerError, match="expected 3 finite values"):
        server(images, ["nan"] * 3)
    assert torch.equal(server(images, ["fine"] * 3), images.flatten(1).mean(1))  # the worker survived both

    marker = str(faults / "crashed")
    with caplog.at_level(logging.WARNING, logger="diffalign.rewards.server"):
        r = server(images, [f"crash_once:{marker}"] * 3)
    assert os.path.exists(marker) and server.restarts == 1
    assert torch.equal(r, images.flatten(1).mean(1))
    assert "batch 3 (3 samples) crashed the reward process (exit code 7) (attempt 1 of 2)" in caplog.text

    start = time.perf_counter()
    with pytest.raises(RewardServerError, match=r"batch 4 \(2 samples\) timed out after 3 s .*attempt 2 of 2.*"
                                                r"giving up after 2 attempts"):
        server(images[:2], ["hang", "hang"])
    assert server.restarts == 2 and len(server.faults) == 5
    assert time.perf_counter() - start < 120
    server.close()
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


def test_a_script_without_a_main_guard_is_not_rerun_in_the_worker(tmp_path):
    """Spawn would re-import the caller's script in the worker: an unguarded training script would run twice."""
    import subprocess
    script = tmp_path / "unguarded.py"
    script.write_text("import torch\nfrom diffalign.rewards.server import RewardServer\nprint('script body runs')\n"
                      "with RewardServer('brightness', timeout_s=60) as s:\n"
                      "    print('scores', s(torch.ones(2, 3, 4, 4), ['a', 'b']).tolist())\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("script body runs") == 1 and "scores [1.0, 1.0]" in done.stdout
