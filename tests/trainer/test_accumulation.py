"""Gradient accumulation: k minibatches of B/k samples accumulate the gradient of one minibatch of B samples."""
import pytest
import torch

from diffalign.config import load_config
from diffalign.trainer import make_trainer


def first_update_gradients(cfg_dict, *overrides):
    trainer = make_trainer(load_config(data=cfg_dict, overrides=list(overrides)))
    grads = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads.append([p.grad.detach().clone() for p in trainer.adapter.trainable_parameters()])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    metrics = trainer.run_epoch(0)
    return grads, metrics


@pytest.mark.parametrize("algorithm", [{"name": "ddpo", "clip_range": 0.05, "min_count": 4},
                                       {"name": "dpok", "beta": 0.1, "clip_range": 0.05}])
def test_accumulated_minibatches_give_the_full_batch_gradient(tiny_config, algorithm):
    tiny_config["algorithm"] = algorithm
    common = ["sampling.batch_size=8", "train.inner_epochs=1", "train.timestep_fraction=0.5", "checkpoint.every=100"]
    full, m_full = first_update_gradients(tiny_config, *common, "train.batch_size=8")
    split, m_split = first_update_gradients(tiny_config, *common, "train.batch_size=2",
                                            "train.gradient_accumulation_steps=4")
    assert len(full) == len(split) == 1  # one optimiser step either way
    assert any(g.abs().sum() > 0 for g in full[0])
    for a, b in zip(full[0], split[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))  # float reassociation
    assert m_full["reward_mean"] == m_split["reward_mean"]
    assert m_full["grad_norm"] == pytest.approx(m_split["grad_norm"], rel=1e-4)
