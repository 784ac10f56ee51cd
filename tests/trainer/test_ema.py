"""``train.ema_decay``: a moving average of the trainable weights, against a float64 recurrence written here
from diffusers' documented schedule (decay_n = min((1 + n) / (10 + n), ema_decay), n counted from the second
optimiser step; the first step copies the weights), kept through checkpoints, and the weights a run ends with."""
import pytest
import torch

from diffalign.config import load_config
from diffalign.trainer import make_trainer

DATA = {"seed": 3, "epochs": 3, "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 20}},
        "prompts": {"list": ["a", "b"]}, "sampling": {"num_steps": 4, "batch_size": 4},
        "reward": {"name": "toy_target_distance"}, "algorithm": {"name": "rwr"},
        "train": {"batch_size": 2, "learning_rate": 0.05, "ema_decay": 0.8},
        "logging": {"tensorboard": False, "progress_bar": False}}


def _trainer(out, epochs=3, resume=None, **train):
    return make_trainer(load_config(data={**DATA, "output_dir": str(out), "epochs": epochs, "resume_from": resume,
                                          "train": {**DATA["train"], **train}}))


def _weights(trainer):
    return [p.detach().to(torch.float64).clone() for p in trainer.adapter.trainable_parameters()]


def test_average_follows_the_documented_schedule_and_is_what_the_run_ends_with(tmp_path):
    trainer = _trainer(tmp_path / "run")
    seen = []  # the live weights after every optimiser step
    step = trainer.step_optimizer

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(_weights(trainer))
        return out
    trainer.step_optimizer = recording_step
    trainer.train()
    assert len(seen) >= 4
    average = seen[0]
    for n, live in enumerate(seen[1:], start=1):
        decay = min((1 + n) / (10 + n), 0.8)
        average = [decay * a + (1 - decay) * w for a, w in zip(average, live)]
    final = _weights(trainer)
    assert any(not torch.allclose(f, w) for f, w in zip(final, seen[-1]))  # rollouts used the live weights
    for f, a in zip(final, average):
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-6)


def test_average_survives_a_resume(tmp_path):
    full = _trainer(tmp_path / "full")
    full.train()
    _trainer(tmp_path / "split", epochs=2).train()
    resumed = _trainer(tmp_path / "split", resume="latest")
    assert resumed.start_epoch == 2
    resumed.train()
    for a, b in zip(_weights(full), _weights(resumed)):
        torch.testing.assert_close(a, b)


def test_resuming_without_the_average_that_the_config_asks_for_says_so(tmp_path):
    plain = _trainer(tmp_path / "run", epochs=1, ema_decay=0.0)
    assert plain.ema is None
    plain.train()
    with pytest.raises(ValueError, match="no moving average of the weights, but train.ema_decay is 0.8"):
        _trainer(tmp_path / "run", resume="latest")

