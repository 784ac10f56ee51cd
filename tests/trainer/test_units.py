"""Small pieces of the trainer: checkpoints, seeds, the accelerator fallback, the metrics log."""
import json
import os
import warnings

import torch

from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from diffalign.trainer.distributed import derive_seed, generator, has_accelerator_device, make_accelerator
from diffalign.trainer.logging import MetricsLogger, read_metrics


def test_checkpoints_latest_ignores_partial_and_prunes(tmp_path):
    out = str(tmp_path)
    assert latest_checkpoint(out) is None and resolve_resume(out, "latest") is None and resolve_resume(out, None) is None
    for epoch in range(3):
        save_checkpoint(out, epoch, {"w": torch.full((2,), float(epoch))}, {"epoch": epoch}, keep_last=2)
    os.makedirs(os.path.join(out, "checkpoints", "epoch_000009.tmp"))  # a write killed half-way
    latest = latest_checkpoint(out)
    assert latest.endswith("epoch_000002") and resolve_resume(out, "latest") == latest
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["epoch_000001", "epoch_000002", "epoch_000009.tmp"]
    weights, state = load_checkpoint(latest)
    assert torch.equal(weights["w"], torch.full((2,), 2.0)) and state == {"epoch": 2}


def test_seeds_are_stable_and_distinct():
    assert derive_seed(1, 2, "x") == derive_seed(1, 2, "x") != derive_seed(1, 3, "x")
    assert 0 <= derive_seed("a") < 2**63
    a = torch.randn(3, generator=generator(0, "n"))
    assert torch.equal(a, torch.randn(3, generator=generator(0, "n")))


def test_accelerator_asks_for_the_cpu_backend_exactly_without_a_device(monkeypatch):
    # Without cpu=True, launched processes on a GPU-less machine each run alone (distributed.py's docstring);
    # the device is "cpu" either way, so what must be checked is the flag (test_distributed checks the group).
    import accelerate

    from diffalign.trainer import distributed
    real, asked = accelerate.Accelerator, []

    def recording(*args, **kwargs):
        asked.append(kwargs.get("cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", recording)
    for device in (False, True):
        monkeypatch.setattr(distributed, "has_accelerator_device", lambda: device)
        acc = make_accelerator("no")
        assert asked[-1] is (not device), (device, asked)
    if not has_accelerator_device():
        assert acc.device.type == "cpu"


def test_accelerator_precision_can_change_within_one_process():
    # the demo and the test suite build several trainers in one process; accelerate alone refuses a new precision
    with warnings.catch_warnings():  # explicit bf16 warns on a CPU where bf16 is slow (diffalign.trainer.precision)
        warnings.filterwarnings("ignore", "train.mixed_precision=bf16", RuntimeWarning)
        assert make_accelerator("bf16").mixed_precision == "bf16"
    acc = make_accelerator("no")
    assert acc.mixed_precision == "no"
    with acc.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_metrics_logger_truncates_redone_epochs_on_resume(tmp_path):
    log = MetricsLogger(str(tmp_path), tensorboard=False)
    for e in range(3):
        log.log({"epoch": e, "reward_mean": float(e)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "rew')  # torn by a kill mid-write
    assert [m["epoch"] for m in read_metrics(str(tmp_path / "metrics.jsonl"))] == [0, 1, 2]
    MetricsLogger(str(tmp_path), tensorboard=False, start_epoch=2)
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [m["epoch"] for m in lines] == [0, 1]
