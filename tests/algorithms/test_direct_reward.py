"""ReFL, DRaFT-K, DRaFT-LV, AlignProp: losses and gradients against an independent float64 chain; checkpointing
gives the gradients of plain backprop; truncation stops the gradient; the reference stays frozen."""
import math

import pytest
import torch

from diffalign.algorithms import ALGORITHMS, AlignProp, AlignPropConfig, DRaFT, DRaFTConfig, ReFL, ReFLConfig
from diffalign.algorithms.base import DataPath
from diffalign.algorithms.direct_reward import SamplingBatch, predicted_x0, reward_loss, sample_chain
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter

PROMPTS = ["a", "b", "c", "a"]
T = 5
TARGET = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)


def make_policy(eta=1.0, guidance=1.0, scheduler="ddim", rule="ddim"):
    adapter = ToyAdapter(["a", "b", "c"], dim=4, hidden=16, scheduler=scheduler, dtype=torch.float64)
    kwargs = {"eta": eta} if rule == "ddim" else {}
    return DiffusionPolicy(adapter, make_step_rule(rule, adapter.scheduler, T, **kwargs), guidance_scale=guidance)


def reward(x0):  # differentiable, non-linear
    return -((x0 - TARGET.to(x0)) ** 2).sum(1) + torch.sin(x0[:, 0])


def make_batch(policy, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = policy.adapter.encode_conditions(PROMPTS)
    x_T = torch.randn(len(PROMPTS), 4, generator=g, dtype=torch.float64)
    noise = torch.randn(len(PROMPTS), T, 4, generator=g, dtype=torch.float64)
    return SamplingBatch(cond, PROMPTS, x_T, noise, reward, torch.Generator().manual_seed(seed + 100))


# ---- an independent float64 chain: DDIM(eta) from docs/design.md, the toy MLP called directly -------------------
def ref_model(policy, x, i, cond):
    t = policy.rule.timesteps[i].expand(x.shape[0])
    out = policy.adapter.denoiser(x, t, cond["prompt_id"])
    if policy.guidance_scale != 1.0:
        unc = policy.adapter.denoiser(x, t, policy.adapter.unconditional(cond)["prompt_id"])
        out = unc + policy.guidance_scale * (out - unc)
    return out


def ref_alphas(policy, i):
    sched = policy.rule.scheduler
    ac = sched.alphas_cumprod.double()
    t = int(policy.rule.timesteps[i])
    prev = max(t - sched.config.num_train_timesteps // T, 0)
    return ac[t], ac[prev]


def ref_x0(policy, i, eps, x):
    a, _ = ref_alphas(policy, i)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def ref_step(policy, x, i, cond, noise, eta):
    eps = ref_model(policy, x, i, cond)
    a, ap = ref_alphas(policy, i)
    std = eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    mean = ap.sqrt() * ref_x0(policy, i, eps, x) + (1 - ap - std ** 2).sqrt() * eps
    return mean + std * noise


def ref_chain(policy, batch, grad_from, stop=T, eta=1.0):
    x = batch.x_T
    for i in range(stop):
        x = ref_step(policy, x, i, batch.cond, batch.noise[:, i], eta)
        if i < grad_from:
            x = x.detach()
    return x


def param_grads(policy, loss):
    params = policy.adapter.trainable_parameters()
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_grads_close(a, b, tol=1e-9):
    for u, v in zip(a, b):
        if u is None or v is None:
            assert (u is None or u.abs().max() == 0) and (v is None or v.abs().max() == 0)
            continue
        assert torch.allclose(u, v, rtol=tol, atol=tol), (u - v).abs().max()


# ---- the reward terms --------------------------------------------------------------------------------------------
def test_reward_loss_linear_and_hinge_against_float64():
    r = torch.tensor([-2.0, -0.5, 0.3, 1.7], dtype=torch.float64, requires_grad=True)
    lin = reward_loss(r, "linear", 0.7)
    assert torch.allclose(lin, -0.7 * r.detach())
    hinge = reward_loss(r, "hinge", 2.0, margin=0.5)
    expected = torch.tensor([2 * 2.5, 2 * 1.0, 2 * 0.2, 0.0], dtype=torch.float64)
    assert torch.allclose(hinge, expected)
    (g,) = torch.autograd.grad(hinge.sum(), r)
    assert g.tolist() == [-2.0, -2.0, -2.0, 0.0]  # relu(c - r): no gradient once r >= c
    with pytest.raises(ValueError, match="reward_loss"):
        reward_loss(r, "square")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample", "flow"])
def test_predicted_x0_closed_form(prediction):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    if prediction == "flow":
        rule = make_step_rule("flow_sde", FlowMatchEulerDiscreteScheduler(shift=3.0), 6)
    else:
        rule = make_step_rule("ddim", DDIMScheduler(prediction_type=prediction, beta_schedule="scaled_linear",
                                                    set_alpha_to_one=False), 6)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    steps = torch.tensor([0, 2, 5])
    x_t = rule.add_noise(x0, eps, steps)
    target = rule.training_target(x0, eps, x_t, steps)  # the exact model output for this x0 and noise
    assert torch.allclose(predicted_x0(rule, steps, target, x_t), x0, atol=1e-10)


# ---- each method against the float64 chain -----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, T])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_draft_k_loss_and_gradients_match_float64_chain(k, checkpointing):
    policy = make_policy(guidance=2.0)
    batch = make_batch(policy)
    algo = DRaFT(DRaFTConfig(truncation=k, checkpointing=checkpointing))
    loss, metrics = algo.loss(batch, policy, None)
    expected = -reward(ref_chain(policy, batch, grad_from=T - k)).mean()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10 and metrics["truncation"] == k
    assert_grads_close(param_grads(policy, loss), param_grads(policy, expected))


def test_checkpointing_gives_the_same_gradients_as_plain_backprop_on_the_image_unet():
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    adapter = ImageAdapter.from_options(ImageOptions(resolution=16, lora_rank=4, prediction_type="v_prediction"))
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 3), guidance_scale=3.0)
    cond = adapter.encode_conditions(["a cat", "a dog"])
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 3, 4, 8, 8, generator=g)
    grads = []
    for ckpt in (False, True):
        x0 = sample_chain(policy, cond, x_T, noise, grad_from=0, checkpointing=ckpt)
        grads.append(torch.autograd.grad(x0.square().mean(), adapter.trainable_parameters()))
    assert any(float(g.abs().max()) > 0 for g in grads[0])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_truncation_stops_the_gradient_before_the_last_k_steps():
    policy = make_policy()
    batch = make_batch(policy)
    x_T = batch.x_T.clone().requires_grad_(True)
    for k, reaches_x_T in ((T - 1, False), (T, True)):
        x0 = sample_chain(policy, batch.cond, x_T, batch.noise, grad_from=T - k)
        (g,) = torch.autograd.grad(x0.sum(), x_T, allow_unused=True)
        assert (g is not None and g.abs().max() > 0) == reaches_x_T


def test_sample_chain_without_gradient_is_the_policys_own_sampler():
    policy = make_policy(guidance=2.0)
    batch = make_batch(policy)
    x0 = sample_chain(policy, batch.cond, batch.x_T, batch.noise, grad_from=T)
    assert not x0.requires_grad
    assert torch.allclose(x0, ref_chain(policy, batch, T).detach(), atol=1e-12)


def test_refl_one_gradient_step_on_the_predicted_x0_matches_float64():
    policy = make_policy()
    batch = make_batch(policy)
    algo = ReFL(ReFLConfig(late_steps=3, reward_loss="hinge", hinge_margin=0.5, reward_weight=2.0))
    j = algo.grad_step(T, torch.Generator().manual_seed(100))  # the draw loss() will make
    assert T - 3 <= j <= T - 1
    loss, metrics = algo.loss(batch, policy, None)
    assert metrics["grad_step"] == j
    x_j = ref_chain(policy, batch, grad_from=T, stop=j).detach()
    x0_hat = ref_x0(policy, j, ref_model(policy, x_j, j, batch.cond), x_j)
    expected = (2.0 * torch.relu(0.5 - reward(x0_hat))).mean()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10
    assert_grads_close(param_grads(policy, loss), param_grads(policy, expected))


def test_draft_lv_averages_one_step_denoisings_of_renoised_samples():
    policy = make_policy()
    batch = make_batch(policy)
    algo = DRaFT(DRaFTConfig(truncation=1, lv_samples=3, checkpointing=True))
    loss, _ = algo.loss(batch, policy, None)
    x0 = ref_chain(policy, batch, grad_from=T).detach()
    g = torch.Generator().manual_seed(100)
    a, _ = ref_alphas(policy, T - 1)
    terms = []
    for _ in range(3):  # loss() draws the re-noising eps, then the step noise, per LV sample
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        step_noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x1 = a.sqrt() * x0 + (1 - a).sqrt() * eps
        terms.append(-reward(ref_step(policy, x1, T - 1, batch.cond, step_noise, 1.0)))
    expected = torch.stack(terms).mean()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10
    assert_grads_close(param_grads(policy, loss), param_grads(policy, expected))


def test_alignprop_draws_its_truncation_uniformly_and_matches_float64():
    algo = AlignProp(AlignPropConfig(min_truncation=2, max_truncation=4))
    g = torch.Generator().manual_seed(0)
    draws = [algo.truncation(T, g) for _ in range(300)]
    assert set(draws) == {2, 3, 4} and all(abs(draws.count(k) / 300 - 1 / 3) < 0.1 for k in (2, 3, 4))
    policy = make_policy(eta=0.0)  # the deterministic DDIM sampler as well
    batch = make_batch(policy)
    k = algo.truncation(T, torch.Generator().manual_seed(100))
    loss, metrics = algo.loss(batch, policy, None)
    assert metrics["truncation"] == k
    expected = -reward(ref_chain(policy, batch, grad_from=T - k, eta=0.0)).mean()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10
    assert_grads_close(param_grads(policy, loss), param_grads(policy, expected))


# ---- the pre-training term and the frozen reference -----------------------------------------------------------------
def test_pretrain_term_matches_float64_and_the_reference_stays_frozen():
    policy = make_policy()
    reference = policy.reference()
    batch = make_batch(policy)
    algo = ReFL(ReFLConfig(late_steps=2, pretrain_weight=0.5))
    assert algo.needs_reference
    with torch.no_grad():  # move the policy away from the base so the distillation term is non-zero
        for p in policy.adapter.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(100)
    algo.grad_step(T, g)
    loss, metrics = algo.loss(batch, policy, reference)
    # recompute the term: same x0_hat (the ReFL prediction), then the pretrain draws from the same generator
    j = T - 1 - int(torch.randint(2, (1,), generator=torch.Generator().manual_seed(100)))
    x_j = ref_chain(policy, batch, grad_from=T, stop=j).detach()
    x0 = ref_x0(policy, j, ref_model(policy, x_j, j, batch.cond), x_j).detach()
    steps = torch.randint(T, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ac = policy.rule.alpha_t[steps].reshape(-1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    t = policy.rule.timesteps[steps]
    pred = policy.adapter.denoiser(x_t, t, batch.cond["prompt_id"])
    base = policy.adapter._reference_denoiser(x_t, t, batch.cond["prompt_id"])
    expected_pre = ((pred - base) ** 2).mean(1).mean()
    assert float(metrics["pretrain_loss"]) > 1e-6
    assert abs(float(metrics["pretrain_loss"]) - float(expected_pre.detach())) < 1e-10
    before = [p.clone() for p in policy.adapter._reference_denoiser.parameters()]
    opt = torch.optim.SGD(policy.adapter.trainable_parameters(), lr=0.1)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in policy.adapter._reference_denoiser.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, policy.adapter._reference_denoiser.parameters()))


def test_a_reward_without_a_graph_is_rejected():
    policy = make_policy()
    batch = make_batch(policy)
    batch.reward = lambda x0: reward(x0).detach()
    with pytest.raises(ValueError, match="differentiable reward"):
        DRaFT(DRaFTConfig()).loss(batch, policy, None)


def test_registry_data_path_and_config_checks():
    for name, cls in (("refl", ReFL), ("draft", DRaFT), ("alignprop", AlignProp)):
        assert ALGORITHMS[name] is cls and cls.data_path == DataPath.DIFFERENTIABLE_SAMPLING
    with pytest.raises(ValueError, match="algorithm.lv_samples"):
        DRaFTConfig(truncation=2, lv_samples=2)
    with pytest.raises(ValueError, match="algorithm.max_truncation"):
        AlignPropConfig(min_truncation=3, max_truncation=2)
    with pytest.raises(ValueError, match="algorithm.reward_loss"):
        ReFLConfig(reward_loss="exp")
    with pytest.raises(ValueError, match="algorithm.late_steps = 9 exceeds sampling.num_steps = 5"):
        ReFL(ReFLConfig(late_steps=9)).check_steps(5)
    with pytest.raises(ValueError, match="algorithm.truncation = 6"):
        DRaFT(DRaFTConfig(truncation=6)).check_steps(5)
    assert math.isclose(DRaFTConfig().reward_weight, 1.0)
