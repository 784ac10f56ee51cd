"""Each loss against an independent float64 closed form (values and gradients)."""
import math

import pytest
import torch

from diffalign.algorithms import ALGORITHMS, DDPO, DPOK, GRPO, RWR, DDPOConfig, DPOKConfig, GRPOConfig, RWRConfig
from diffalign.algorithms.base import TransitionBatch
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter

PROMPTS = ["a", "b", "c", "a", "b", "c"]


def make_policy(scheduler="ddim", rule="ddim", reduction="mean"):
    adapter = ToyAdapter(["a", "b", "c"], dim=6, scheduler=scheduler)
    return DiffusionPolicy(adapter, make_step_rule(rule, adapter.scheduler, 8), guidance_scale=2.0,
                           logprob_reduction=reduction)


def make_batch(policy, advantages, old_shift=None, steps=None):
    cond = policy.adapter.encode_conditions(PROMPTS)
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([0, 1, 2, 5, 6, 7]) if steps is None else steps
    x_t, x_prev, old = traj.states_at(steps)
    if old_shift is not None:
        old = old + old_shift
    return TransitionBatch(x_t, x_prev, steps, old, advantages, cond, traj.x0, traj.num_steps)


def logp64(policy, batch):
    """Independent float64 Gaussian log-density of x_prev under the policy's step (mean, std)."""
    out = policy.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev)
    mean, std = out.mean.double(), out.std.double().reshape(-1, 1)
    lp = -((batch.x_prev.double() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    lp = lp.mean(1) if policy.logprob_reduction == "mean" else lp.sum(1)
    return lp, mean, std


def grads(policy, loss):
    params = policy.adapter.trainable_parameters()
    return [g.double() for g in torch.autograd.grad(loss, params)]


def assert_same_loss_and_grads(policy, loss, expected, rtol=1e-4, atol=1e-7):
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=atol)
    for g, e in zip(grads(policy, loss), grads(policy, expected)):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-6)


ADV = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.3, -2.0])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ddpo_score_function_is_minus_advantage_times_logprob(reduction):
    policy = make_policy(reduction=reduction)
    batch = make_batch(policy, ADV)
    loss, metrics = DDPO(DDPOConfig(estimator="score_function")).loss(batch, policy, None)
    lp, _, _ = logp64(policy, batch)
    assert_same_loss_and_grads(policy, loss, (-ADV.double() * lp).mean())
    assert metrics["approx_kl"].item() < 1e-10  # on policy


def test_ddpo_clipped_surrogate_matches_float64():
    policy = make_policy()
    shift = torch.tensor([0.0, 3e-4, -3e-4, 5e-5, -5e-5, 2e-4])  # some ratios outside 1 +- 1e-4
    batch = make_batch(policy, ADV, old_shift=shift)
    algo = DDPO(DDPOConfig(estimator="importance_clipped", clip_range=1e-4))
    loss, metrics = algo.loss(batch, policy, None)
    lp, _, _ = logp64(policy, batch)
    ratio = torch.exp(lp - batch.old_log_prob.double())
    a = ADV.double()
    expected = torch.maximum(-a * ratio, -a * ratio.clamp(1 - 1e-4, 1 + 1e-4)).mean()
    assert_same_loss_and_grads(policy, loss, expected, rtol=1e-6)
    clipped = ((ratio - 1).abs() > 1e-4).double().mean()
    assert metrics["clip_fraction"].item() == pytest.approx(clipped.item())
    assert 0 < metrics["clip_fraction"].item() < 1


def test_on_policy_clipped_gradient_equals_score_function_gradient():
    policy = make_policy()
    batch = make_batch(policy, ADV)
    sf, _ = DDPO(DDPOConfig(estimator="score_function")).loss(batch, policy, None)
    clipped, m = DDPO(DDPOConfig(estimator="importance_clipped")).loss(batch, policy, None)
    assert m["clip_fraction"].item() == 0
    for a, b in zip(grads(policy, sf), grads(policy, clipped)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_ddpo_advantages_per_prompt_and_clipped():
    algo = DDPO(DDPOConfig(min_count=2, buffer_size=3, adv_clip_max=5.0))
    r1 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    adv = algo.advantages(r1, PROMPTS)  # each prompt has 2 rewards >= min_count: per-prompt stats
    for p in "abc":
        idx = [i for i, q in enumerate(PROMPTS) if q == p]
        v = r1[idx].double()
        torch.testing.assert_close(adv[idx].double(), (v - v.mean()) / (v.std(unbiased=False) + 1e-6), rtol=1e-5,
                                   atol=1e-6)
    r2 = torch.tensor([10.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    adv2 = algo.advantages(r2, PROMPTS)  # buffer of "a" keeps the last 3: [4, 10, 0]
    buf = torch.tensor([4.0, 10.0, 0.0], dtype=torch.float64)
    assert adv2[0].item() == pytest.approx(((10 - buf.mean()) / (buf.std(unbiased=False) + 1e-6)).item(), rel=1e-5)
    big = DDPO(DDPOConfig(per_prompt_stats=False, adv_clip_max=0.5)).advantages(r1, PROMPTS)
    assert big.abs().max().item() == pytest.approx(0.5)


def test_stat_tracker_uses_batch_stats_below_min_count_and_round_trips():
    algo = DDPO(DDPOConfig(min_count=16))
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    adv = algo.advantages(r, PROMPTS)
    v = r.double()
    torch.testing.assert_close(adv.double(), (v - v.mean()) / (v.std(unbiased=False) + 1e-6), rtol=1e-5, atol=1e-6)
    other = DDPO(DDPOConfig(min_count=16))
    other.load_state_dict(algo.state_dict())
    r2 = torch.randn(6)
    torch.testing.assert_close(other.advantages(r2, PROMPTS), algo.advantages(r2, PROMPTS))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dpok_loss_adds_kl_summed_over_steps(reduction):
    policy = make_policy(reduction=reduction)
    ref = policy.reference()
    with torch.no_grad():  # move the policy away from the frozen reference
        for p in policy.adapter.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(policy, ADV)
    algo = DPOK(DPOKConfig(beta=0.3, estimator="score_function"))
    assert algo.needs_reference
    loss, metrics = algo.loss(batch, policy, ref)
    lp, mean, std = logp64(policy, batch)
    ref_mean = ref.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev).mean.double()
    kl = ((mean - ref_mean) ** 2 / (2 * std**2))
    kl = kl.mean(1) if reduction == "mean" else kl.sum(1)
    expected = (-ADV.double() * lp).mean() + 0.3 * 8 * kl.mean()
    assert_same_loss_and_grads(policy, loss, expected)
    assert metrics["kl"].item() == pytest.approx(8 * kl.mean().item(), rel=1e-4)
    assert metrics["kl"].item() > 0


def test_dpok_kl_is_zero_at_the_reference():
    policy = make_policy()
    batch = make_batch(policy, ADV)
    _, metrics = DPOK(DPOKConfig(beta=1.0)).loss(batch, policy, policy.reference())
    assert metrics["kl"].item() == pytest.approx(0.0, abs=1e-12)


def test_dpok_baselines():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0, 9.0])
    none = DPOK(DPOKConfig(baseline="none")).advantages(r, PROMPTS)
    torch.testing.assert_close(none, r.clamp(-5, 5))  # adv_clip_max
    batch = DPOK(DPOKConfig(baseline="batch")).advantages(r, PROMPTS)
    torch.testing.assert_close(batch, r - r.mean())
    algo = DPOK(DPOKConfig(baseline="per_prompt", reward_scale=2.0))
    first = algo.advantages(r, PROMPTS)  # unseen prompts: batch mean
    torch.testing.assert_close(first, (2.0 * (r - r.mean())).clamp(-5, 5))
    second = algo.advantages(torch.full((6,), 4.0), PROMPTS)  # now V(a) = (1 + 5) / 2 = 3
    assert second[0].item() == pytest.approx(2.0 * (4.0 - 3.0))
    assert not DPOK(DPOKConfig(beta=0.0)).needs_reference


def test_grpo_group_advantages_and_loss():
    algo = GRPO(GRPOConfig(group_size=2, beta=0.1, clip_range=1e-4))
    r = torch.tensor([1.0, 2.0, 4.0, 3.0, 0.0, 6.0])
    adv = algo.advantages(r, PROMPTS)
    for p in "abc":
        idx = [i for i, q in enumerate(PROMPTS) if q == p]
        v = r[idx].double()
        torch.testing.assert_close(adv[idx].double(), (v - v.mean()) / (v.std(unbiased=False) + 1e-4), rtol=1e-5,
                                   atol=1e-6)
    policy = make_policy("flow", "flow_sde")
    ref = policy.reference()
    with torch.no_grad():
        for p in policy.adapter.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    shift = torch.tensor([0.0, 3e-4, -3e-4, 5e-5, -5e-5, 2e-4])
    batch = make_batch(policy, adv, old_shift=shift)
    loss, metrics = algo.loss(batch, policy, ref)
    lp, mean, std = logp64(policy, batch)
    ratio = torch.exp(lp - batch.old_log_prob.double())
    a = adv.double()
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - 1e-4, 1 + 1e-4)).mean()
    ref_mean = ref.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev).mean.double()
    kl = ((mean - ref_mean) ** 2 / (2 * std**2)).mean(1).mean()
    assert_same_loss_and_grads(policy, loss, pg + 0.1 * kl, rtol=1e-5)
    assert metrics["kl"].item() == pytest.approx(kl.item(), rel=1e-4)


def test_grpo_rejects_incomplete_groups():
    with pytest.raises(ValueError, match="group_size=4"):
        GRPO(GRPOConfig(group_size=4)).advantages(torch.randn(6), PROMPTS)
    with pytest.raises(ValueError, match="algorithm.group_size"):
        GRPOConfig(group_size=1)


def test_rwr_weights():
    r = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5, 3.0])
    w = RWR(RWRConfig(weighting="exp", temperature=0.7)).advantages(r, PROMPTS)
    e = torch.exp(0.7 * r.double())
    torch.testing.assert_close(w.double(), 6 * e / e.sum(), rtol=1e-5, atol=1e-7)
    s = RWR(RWRConfig(weighting="sparse", threshold=1.0)).advantages(r, PROMPTS)
    assert s.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("scheduler,rule", [("ddim", "ddim"), ("flow", "flow_sde")])
def test_rwr_loss_is_weighted_denoising_mse(scheduler, rule):
    policy = make_policy(scheduler, rule)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.5, 1.0])
    batch = make_batch(policy, w)
    torch.manual_seed(5)
    loss, _ = RWR().loss(batch, policy, None)
    torch.manual_seed(5)
    noise = torch.randn_like(batch.x0).double()
    x0 = batch.x0.double()
    if scheduler == "ddim":
        a = policy.rule.alpha_t[batch.steps].reshape(-1, 1)
        x_t, target = a.sqrt() * x0 + (1 - a).sqrt() * noise, noise
    else:
        s = policy.rule.sigma[batch.steps].reshape(-1, 1)
        x_t, target = (1 - s) * x0 + s * noise, noise - x0
    t = policy.rule.timesteps[batch.steps]
    pred = policy.adapter.denoise(x_t.float(), t, batch.cond).double()  # conditional, unguided
    expected = (w.double() * ((pred - target) ** 2).mean(1)).mean()
    assert_same_loss_and_grads(policy, loss, expected, rtol=1e-5)


def test_registry_and_config_errors():
    assert set(ALGORITHMS) == {"rwr", "ddpo", "dpok", "grpo", "dpo", "ipo", "e2po", "orpo", "simpo", "kto",
                               "refl", "draft", "alignprop", "d3po", "spo", "sds", "dreamdpo"}
    with pytest.raises(ValueError, match="algorithm.estimator must be one of"):
        DDPOConfig(estimator="reinforce")
    with pytest.raises(ValueError, match="algorithm.baseline"):
        DPOKConfig(baseline="value_net")
    with pytest.raises(ValueError, match="algorithm.weighting"):
        RWRConfig(weighting="linear")
    with pytest.raises(TypeError, match="wants a DDPOConfig"):
        DDPO(GRPOConfig())


def test_rwr_pretrain_term_distils_to_the_frozen_base():
    policy = make_policy()
    ref = policy.reference()
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.5, 1.0])
    batch = make_batch(policy, w)
    algo = RWR(RWRConfig(pretrain_weight=0.7))
    assert algo.needs_reference and not RWR().needs_reference
    # at the base the term is 0 with a zero gradient: the loss is plain RWR
    torch.manual_seed(5)
    at_base, metrics = algo.loss(batch, policy, ref)
    torch.manual_seed(5)
    plain, _ = RWR().loss(batch, policy, None)
    assert metrics["pretrain_loss"].item() == 0.0
    for g, e in zip(grads(policy, at_base), grads(policy, plain)):
        torch.testing.assert_close(g, e)
    # away from it: plain RWR + beta * mean ||eps_theta - eps_ref||^2 on the same noised samples
    with torch.no_grad():
        for p in policy.adapter.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(5)
    loss, metrics = algo.loss(batch, policy, ref)
    torch.manual_seed(5)
    noise = torch.randn_like(batch.x0)
    x_t = policy.rule.add_noise(batch.x0, noise, batch.steps)
    t = policy.rule.timesteps[batch.steps]
    pred = policy.adapter.denoise(x_t, t, batch.cond).double()
    with policy.adapter.reference_mode(), torch.no_grad():
        base = policy.adapter.denoise(x_t, t, batch.cond).double()
    expected = (w.double() * ((pred - noise.double()) ** 2).mean(1)).mean() + 0.7 * ((pred - base) ** 2).mean(1).mean()
    assert metrics["pretrain_loss"].item() > 0
    assert_same_loss_and_grads(policy, loss, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="algorithm.pretrain_weight"):
        RWRConfig(pretrain_weight=-1.0)


def test_rwr_exclude_final_steps_zeroes_the_least_noise_steps():
    # steps [0, 1, 2, 5, 6, 7] of T = 8: excluding the last 2 drops the samples at steps 6 and 7
    policy = make_policy()
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.5, 1.0])
    batch = make_batch(policy, w)
    torch.manual_seed(5)
    loss, _ = RWR(RWRConfig(exclude_final_steps=2)).loss(batch, policy, None)
    torch.manual_seed(5)
    noise = torch.randn_like(batch.x0).double()
    a = policy.rule.alpha_t[batch.steps].reshape(-1, 1)
    x_t = a.sqrt() * batch.x0.double() + (1 - a).sqrt() * noise
    pred = policy.adapter.denoise(x_t.float(), policy.rule.timesteps[batch.steps], batch.cond).double()
    kept = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    expected = (w.double() * kept * ((pred - noise) ** 2).mean(1)).mean()
    assert_same_loss_and_grads(policy, loss, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="algorithm.exclude_final_steps"):
        RWRConfig(exclude_final_steps=-1)


def test_rwr_guided_regresses_the_classifier_free_guided_output():
    policy = make_policy()  # guidance_scale 2.0
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.5, 1.0])
    batch = make_batch(policy, w)
    torch.manual_seed(5)
    loss, _ = RWR(RWRConfig(guided=True)).loss(batch, policy, None)
    torch.manual_seed(5)
    noise = torch.randn_like(batch.x0).double()
    a = policy.rule.alpha_t[batch.steps].reshape(-1, 1)
    x_t = (a.sqrt() * batch.x0.double() + (1 - a).sqrt() * noise).float()
    t = policy.rule.timesteps[batch.steps]
    text = policy.adapter.denoise(x_t, t, batch.cond).double()
    uncond = policy.adapter.denoise(x_t, t, policy.adapter.unconditional(batch.cond)).double()
    pred = uncond + 2.0 * (text - uncond)
    expected = (w.double() * ((pred - noise) ** 2).mean(1)).mean()
    assert_same_loss_and_grads(policy, loss, expected, rtol=1e-5)


def test_rwr_group_weights_are_group_normalised_and_sum_to_zero_per_prompt():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.8])
    prompts = ["a", "a", "b", "b", "c", "c"]
    w = RWR(RWRConfig(weighting="group", group_size=2)).advantages(r, prompts).double()
    for i in (0, 2, 4):  # pairs: (r - mean) / (population std + 1e-4)
        g = r[i:i + 2].double()
        expected = (g - g.mean()) / ((g - g.mean()).abs().mean() + 1e-4)
        torch.testing.assert_close(w[i:i + 2], expected, rtol=1e-6, atol=1e-8)
        assert abs(w[i:i + 2].sum().item()) < 1e-9
    assert w[2:4].abs().max().item() == 0.0  # a tie carries no signal
    with pytest.raises(ValueError, match="algorithm.group_size must be >= 2"):
        RWRConfig(weighting="group")


def test_rwr_common_noise_renoises_each_group_with_one_noise():
    # groups of 2 consecutive samples, each group at one step: one noise draw per group, repeated
    policy = make_policy()
    w = torch.tensor([1.0, -1.0, 0.5, -0.5, -2.0, 2.0])
    steps = torch.tensor([0, 0, 3, 3, 6, 6])
    batch = make_batch(policy, w, steps=steps)
    algo = RWR(RWRConfig(weighting="group", group_size=2, common_noise=True))
    assert algo.minibatch_group_size == 2 and RWR(RWRConfig(weighting="group", group_size=2)).minibatch_group_size == 1
    torch.manual_seed(5)
    loss, _ = algo.loss(batch, policy, None)
    torch.manual_seed(5)
    noise = torch.randn(3, batch.x0.shape[1]).double().repeat_interleave(2, dim=0)
    a = policy.rule.alpha_t[steps].reshape(-1, 1)
    x_t = a.sqrt() * batch.x0.double() + (1 - a).sqrt() * noise
    pred = policy.adapter.denoise(x_t.float(), policy.rule.timesteps[steps], batch.cond).double()
    expected = (w.double() * ((pred - noise) ** 2).mean(1)).mean()
    assert_same_loss_and_grads(policy, loss, expected, rtol=1e-5)
    # the shared draw is the point: two identical samples with opposite weights cancel exactly
    same = TransitionBatch(batch.x_t, batch.x_prev, steps, batch.old_log_prob, w, batch.cond,
                           batch.x0[[0, 0, 2, 2, 4, 4]], batch.num_steps)
    same.cond = {"prompt_id": batch.cond["prompt_id"][[0, 0, 2, 2, 4, 4]]}
    zero, _ = algo.loss(same, policy, None)
    assert abs(zero.item()) < 1e-7
    plain, _ = RWR(RWRConfig(weighting="group", group_size=2)).loss(same, policy, None)
    assert abs(plain.item()) > 1e-4
    with pytest.raises(ValueError, match="not whole groups of 2 consecutive samples at one step"):
        algo.loss(make_batch(policy, w), policy, None)  # steps [0, 1, 2, 5, 6, 7]
    with pytest.raises(ValueError, match="algorithm.common_noise needs weighting 'group'"):
        RWRConfig(common_noise=True)


def test_rwr_common_noise_normalises_each_rollout_group_on_its_own():
    # prompt "a" drawn twice (two groups of 2): with common_noise each group is zero-sum by itself
    r = torch.tensor([1.0, 0.0, 0.9, 0.7, 0.2, 0.8])
    prompts = ["a", "a", "a", "a", "c", "c"]
    w = RWR(RWRConfig(weighting="group", group_size=2, common_noise=True)).advantages(r, prompts).double()
    for i in (0, 2, 4):
        g = r[i:i + 2].double()
        torch.testing.assert_close(w[i:i + 2], (g - g.mean()) / ((g - g.mean()).abs().mean() + 1e-4), rtol=1e-6, atol=1e-8)
    merged = RWR(RWRConfig(weighting="group", group_size=2)).advantages(r, prompts).double()
    assert abs(merged[2:4].sum().item()) > 0.1  # by prompt, the second pair is not zero-sum on its own
