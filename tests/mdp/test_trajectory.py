"""The rollout/training invariant and the policy's guidance, reduction, reference and constraints."""
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter

PROMPTS = ["a", "b", "c"]
RULES = [("ddim", "ddim"), ("ddpm", "ddpm"), ("flow", "flow_sde")]


def make_policy(scheduler="ddim", rule="ddim", dtype=torch.float32, guidance=3.0, dim=16, steps=10, **kw):
    adapter = ToyAdapter(PROMPTS, dim=dim, scheduler=scheduler, dtype=dtype)
    return DiffusionPolicy(adapter, make_step_rule(rule, adapter.scheduler, steps), guidance_scale=guidance, **kw)


# bf16 rollouts store bf16 states; rescoring them is exact here, but a different batch composition
# may change a bf16 model output by one ulp (2^-8 relative), which moves a mean-reduced log-prob by
# ~|z|/std * 2^-8 / sqrt(D): we state 2e-2 as the bf16 tolerance and 1e-5 for fp32.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("scheduler,rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputed_logprob_reproduces_rollout(batch, scheduler, rule, dtype):
    policy = make_policy(scheduler, rule, dtype)
    cond = policy.adapter.encode_conditions((PROMPTS * 3)[:batch])
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(batch))
    assert traj.latents.shape == (batch, 11, 16) and traj.log_probs.shape == (batch, 10)
    assert traj.latents.dtype == dtype and traj.log_probs.dtype == torch.float32
    tol = TOLERANCE[dtype]
    # training order: each sample visits the steps in its own random order (as DDPO does) ...
    perms = torch.stack([torch.randperm(10) for _ in range(batch)])
    for j in range(10):
        steps = perms[:, j]
        x_t, x_prev, old = traj.states_at(steps)
        new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
        assert (new - old).abs().max().item() <= tol
        assert (torch.exp(new - old) - 1).abs().max().item() <= 2 * tol
    # ... and in minibatches smaller than the rollout batch
    for idx in torch.arange(batch).split(2):
        sub = traj.select(idx)
        steps = torch.full((len(idx),), 4)
        x_t, x_prev, old = sub.states_at(steps)
        new = policy.transition(x_t, steps, sub.cond, prev_sample=x_prev).log_prob
        assert (new - old).abs().max().item() <= tol


def test_logprob_has_gradient_for_policy_and_none_for_reference():
    policy = make_policy()
    cond = policy.adapter.encode_conditions(PROMPTS)
    traj = policy.sample(cond)
    x_t, x_prev, _ = traj.states_at(torch.tensor([1, 2, 3]))
    lp = policy.transition(x_t, torch.tensor([1, 2, 3]), cond, prev_sample=x_prev).log_prob
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.adapter.trainable_parameters())
    ref = policy.reference().transition(x_t, torch.tensor([1, 2, 3]), cond, prev_sample=x_prev)
    assert not ref.log_prob.requires_grad


def test_reference_stays_frozen_when_policy_changes():
    policy = make_policy()
    cond = policy.adapter.encode_conditions(PROMPTS)
    x, steps = torch.randn(3, 16), torch.tensor([0, 5, 9])
    before = policy.reference().predict(x, steps, cond)
    torch.testing.assert_close(before, policy.predict(x, steps, cond).detach())
    with torch.no_grad():
        for p in policy.adapter.trainable_parameters():
            p.add_(0.1)
    torch.testing.assert_close(policy.reference().predict(x, steps, cond), before)
    assert not torch.allclose(policy.predict(x, steps, cond), before)


def test_classifier_free_guidance_combines_branches():
    policy = make_policy(guidance=4.0)
    adapter = policy.adapter
    cond = adapter.encode_conditions(PROMPTS)
    x, steps = torch.randn(3, 16), torch.tensor([2, 2, 2])
    t = policy.rule.model_timesteps(steps, x)
    u = adapter.denoise(x, t, adapter.unconditional(cond))
    c = adapter.denoise(x, t, cond)
    torch.testing.assert_close(policy.predict(x, steps, cond), u + 4.0 * (c - u), atol=1e-5, rtol=1e-5)
    plain = make_policy(guidance=1.0)
    torch.testing.assert_close(plain.predict(x, steps, cond), plain.adapter.denoise(x, t, cond))


def test_sum_reduction_is_dimension_times_mean():
    mean_policy = make_policy(logprob_reduction="mean")
    sum_policy = make_policy(logprob_reduction="sum")
    cond = mean_policy.adapter.encode_conditions(PROMPTS)
    a = mean_policy.sample(cond, generator=torch.Generator().manual_seed(1))
    b = sum_policy.sample(cond, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b.log_probs, a.log_probs * 16)
    with pytest.raises(ValueError, match="logprob_reduction"):
        make_policy(logprob_reduction="max")


def test_constraint_is_applied_and_scored():
    class Pinned(ToyAdapter):  # planning-style inpainting: coordinate 0 is observed and fixed to 0.5
        def project(self, x, cond):
            x = x.clone()
            x[:, 0] = 0.5
            return x

    adapter = Pinned(PROMPTS, dim=4)
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 6), guidance_scale=2.0)
    cond = adapter.encode_conditions(PROMPTS)
    traj = policy.sample(cond)
    assert torch.all(traj.latents[:, 1:, 0] == 0.5)
    steps = torch.tensor([0, 3, 5])
    x_t, x_prev, old = traj.states_at(steps)
    new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
    torch.testing.assert_close(new, old)


def test_trajectory_select_keeps_rows_together():
    policy = make_policy()
    cond = policy.adapter.encode_conditions(["a", "b", "c", "a"])
    traj = policy.sample(cond)
    sub = traj.select(torch.tensor([3, 1]))
    assert torch.equal(sub.latents, traj.latents[[3, 1]])
    assert torch.equal(sub.log_probs, traj.log_probs[[3, 1]])
    assert sub.cond["prompt_id"].tolist() == [0, 1]
    assert sub.batch_size == 2 and sub.num_steps == 10 and torch.equal(sub.x0, traj.latents[[3, 1], -1])


def test_sampling_is_reproducible_from_a_generator():
    policy = make_policy("flow", "flow_sde")
    cond = policy.adapter.encode_conditions(PROMPTS)
    a = policy.sample(cond, generator=torch.Generator().manual_seed(3))
    b = policy.sample(cond, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.latents, b.latents)


def test_per_sample_generators_make_trajectories_independent_of_batch_split():
    policy = make_policy("ddpm", "ddpm")
    prompts = ["a", "b", "c", "a"]
    cond = policy.adapter.encode_conditions(prompts)
    gens = lambda idx: [torch.Generator().manual_seed(100 + k) for k in idx]  # noqa: E731
    whole = policy.sample(cond, generator=gens(range(4)))
    first = policy.sample(policy.adapter.encode_conditions(prompts[:2]), generator=gens([0, 1]))
    second = policy.sample(policy.adapter.encode_conditions(prompts[2:]), generator=gens([2, 3]))
    torch.testing.assert_close(torch.cat([first.latents, second.latents]), whole.latents)
    torch.testing.assert_close(torch.cat([first.log_probs, second.log_probs]), whole.log_probs)
    with pytest.raises(ValueError, match="3 generators for 4 samples"):
        policy.sample(cond, generator=gens(range(3)))
