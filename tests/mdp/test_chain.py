"""The one chain runner: recorded rollouts, pre-drawn noise, stop-gradients, checkpointing, partial chains, and
noise that always goes through the adapter's project_noise."""
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, draw_noise, make_step_rule, run_chain
from diffalign.modalities.toy import ToyAdapter


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@pytest.fixture(scope="module")
def policy():
    adapter = ToyAdapter(["a", "b"], dim=3, hidden=16, pretrain_steps=10)
    return DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 5, eta=1.0), guidance_scale=2.0)


def test_predrawn_noise_reproduces_the_recorded_rollout(policy):
    cond = policy.adapter.encode_conditions(["a", "b", "a"])
    traj = policy.sample(cond, generator=gens([1, 2, 3]))
    x_T, noise = draw_noise(policy.adapter, cond, gens([1, 2, 3]), 5)
    assert noise.shape == (3, 5, 3)
    out = run_chain(policy, cond, x_T, noise=noise, record=True)
    assert torch.equal(torch.stack(out.states, 1), traj.latents)
    assert torch.allclose(torch.stack(out.log_probs, 1), traj.log_probs)


def test_partial_chains_compose(policy):
    cond = policy.adapter.encode_conditions(["a", "b"])
    x_T, noise = draw_noise(policy.adapter, cond, gens([4, 5]), 5)
    whole = run_chain(policy, cond, x_T, noise=noise).x
    half = run_chain(policy, cond, x_T, noise=noise, stop=2).x
    assert torch.equal(run_chain(policy, cond, half, noise=noise, start=2).x, whole)
    with pytest.raises(ValueError, match="start"):
        run_chain(policy, cond, x_T, noise=noise, start=3, stop=2)


def test_stop_gradient_and_checkpointing(policy):
    cond = policy.adapter.encode_conditions(["a", "b"])
    x_T, noise = draw_noise(policy.adapter, cond, gens([6, 7]), 5)
    x_T = x_T.requires_grad_(True)
    params = policy.adapter.trainable_parameters()
    plain = run_chain(policy, cond, x_T, noise=noise).x.sum()
    g_plain = torch.autograd.grad(plain, [x_T] + params)
    ckpt = run_chain(policy, cond, x_T, noise=noise, checkpoint=True).x.sum()
    g_ckpt = torch.autograd.grad(ckpt, [x_T] + params)
    for a, b in zip(g_plain, g_ckpt):
        assert torch.allclose(a, b, atol=1e-6)
    # steps before grad_from carry no graph: nothing reaches x_T
    late = run_chain(policy, cond, x_T, noise=noise, grad_from=3).x.sum()
    assert torch.autograd.grad(late, x_T, allow_unused=True)[0] is None


class Halfplane(ToyAdapter):
    """Samples constrained to x[1] = 0: noise is projected, so every draw respects it."""

    def project_noise(self, noise, cond):
        return noise * torch.tensor([1.0, 0.0, 1.0])

    def initial_noise(self, cond, generator=None):
        return self.project_noise(super().initial_noise(cond, generator), cond)


def test_every_draw_goes_through_project_noise():
    adapter = Halfplane(["a"], dim=3, hidden=16)
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 4, eta=1.0))
    cond = adapter.encode_conditions(["a", "a"])
    _, noise = draw_noise(adapter, cond, gens([0, 1]), 4)
    assert torch.all(noise[..., 1] == 0)
    out = policy.transition(torch.zeros(2, 3), 0, cond, generator=torch.Generator().manual_seed(0))
    assert torch.all(out.prev_sample[:, 1] == out.mean[:, 1])  # the step's noise has no x[1] component
    from diffalign.algorithms.rwr import RWR
    from diffalign.algorithms.base import TransitionBatch
    seen = []
    original = adapter.project_noise
    adapter.project_noise = lambda n, c: seen.append(n.shape) or original(n, c)
    try:
        batch = TransitionBatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2),
                                torch.ones(2), cond, torch.zeros(2, 3), 4)
        RWR().loss(batch, policy, policy.reference())
    finally:
        del adapter.project_noise
    assert seen, "RWR's re-noising did not go through project_noise"
