"""The VP and EDM schedules and their step rules, and DDPM "fixed_large", against independent float64
formulas written here, torch.distributions.Normal and diffusers' own DDPMScheduler."""
import inspect
import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffalign import ops
from diffalign.mdp import (DDPMRule, DiffusionPolicy, EDMEulerRule, EDMRule, EDMSchedule, VPRule, VPSchedule,
                           make_step_rule)
from diffalign.modalities.toy import ToyAdapter

Normal = torch.distributions.Normal


def normal_logprob64(x, mean, std):
    """Mean over non-batch dims of log N(x; mean, std^2), float64, through torch.distributions."""
    std = std.double().reshape(-1, *([1] * (x.ndim - 1))).expand_as(x)
    return Normal(mean.double(), std).log_prob(x.double()).flatten(1).mean(1)


def x0_hat64(out, x, a, prediction_type):
    out, x = out.double(), x.double()
    if prediction_type == "epsilon":
        return (x - math.sqrt(1 - a) * out) / math.sqrt(a)
    if prediction_type == "v_prediction":
        return math.sqrt(a) * x - math.sqrt(1 - a) * out
    return out


def eps_hat64(out, x, a, prediction_type):
    x0 = x0_hat64(out, x, a, prediction_type)
    return (x.double() - math.sqrt(a) * x0) / math.sqrt(1 - a)


def posterior64(x0, x_t, a_t, a_prev):
    """q(x_prev | x_t, x0) of a VP chain between cumulative alphas a_t < a_prev: (mean, variance)."""
    beta = 1 - a_t / a_prev  # the step's own beta (strided steps too)
    mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x_t) / (1 - a_t)
    return mean, beta * (1 - a_prev) / (1 - a_t)


# ---- schedules -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,kwargs", [("linear", dict(beta_start=1e-4, beta_end=0.02)),
                                         ("squaredcos_cap_v2", {}),
                                         ("sigmoid", dict(beta_start=1e-7, beta_end=2e-3))])
def test_named_vp_schedules_match_diffusers_betas(kind, kwargs):
    ref = DDPMScheduler(num_train_timesteps=200, beta_schedule=kind, **kwargs)
    name = {"squaredcos_cap_v2": "cosine"}.get(kind, kind)
    ours = getattr(VPSchedule, name)(200, **kwargs)
    torch.testing.assert_close(ours.betas, ref.betas.double(), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-7, rtol=1e-5)
    assert ours.alphas_cumprod.dtype == torch.float64


def test_cosine_schedule_is_nichol_dhariwal_eq17():
    n, s = 30, 0.008
    f = [math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2 for t in range(n + 1)]
    betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(n)]
    torch.testing.assert_close(VPSchedule.cosine(n).betas, torch.tensor(betas, dtype=torch.float64))


def test_polynomial_schedule_is_e3_diffusion_polynomial_2():
    # E(3) diffusion (Hoogeboom et al. 2022): alpha^2(t) = (1 - (t/T)^2)^2 on t = 0..T, step ratios
    # clipped to [0.001, 1], then (1 - 2s) alpha^2 + s with s = 1e-5; model sees t/T, chain ends at t = 0
    T, s, power = 50, 1e-5, 2.0
    raw = [(1 - (t / T) ** power) ** 2 for t in range(T + 1)]
    a2, prev = [], 1.0
    for t in range(T + 1):
        step = min(max(raw[t] / (raw[t - 1] if t > 0 else 1.0), 0.001), 1.0)
        prev = prev * step
        a2.append((1 - 2 * s) * prev + s)
    sched = VPSchedule.polynomial(T, power=power, precision=s)
    torch.testing.assert_close(sched.alphas_cumprod, torch.tensor(a2[1:], dtype=torch.float64))
    assert sched.final_alpha_cumprod == pytest.approx(a2[0], abs=1e-15)
    torch.testing.assert_close(sched.model_times, torch.arange(1, T + 1, dtype=torch.float64) / T)
    assert sched.alphas_cumprod[-1].item() > 0  # the clipped ratios keep the noisiest entry positive


def test_sampling_indices_and_karras_sigmas():
    sched = VPSchedule.linear(100)
    assert sched.sampling_indices(100).tolist() == list(range(99, -1, -1))
    idx = sched.sampling_indices(7).tolist()
    assert idx[0] == 99 and idx[-1] == 0 and all(a > b for a, b in zip(idx, idx[1:]))
    # Karras et al. 2022, eq. 5
    n, lo, hi, rho = 6, 0.002, 80.0, 7.0
    expected = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    torch.testing.assert_close(EDMSchedule().sampling_sigmas(n), torch.tensor(expected, dtype=torch.float64))
    assert EDMSchedule(sigmas=[3.0, 1.0, 0.5]).sampling_sigmas(3).tolist() == [3.0, 1.0, 0.5, 0.0]


# ---- DDPM fixed_large against diffusers -------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_ddpm_fixed_large_matches_diffusers_step(prediction_type, steps_offset):
    kwargs = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, variance_type="fixed_large",
                  prediction_type=prediction_type, steps_offset=steps_offset)
    rule = DDPMRule(DDPMScheduler(**kwargs), 6)
    ref = DDPMScheduler(**kwargs)
    ref.set_timesteps(6)
    assert rule.variance == "fixed_large"
    x = torch.randn(4, 3, 2)
    for i, t in enumerate(ref.timesteps):
        out_model = torch.randn_like(x)
        expected = ref.step(out_model, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        out = rule.step(i, out_model, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(out.prev_sample, expected, atol=2e-5, rtol=1e-5)
        if t > 0:  # diffusers' variance: current_beta_t = 1 - a_t / a_prev of the strided step
            torch.testing.assert_close(out.std.flatten() ** 2, ref._get_variance(t).float().expand(4),
                                       atol=1e-7, rtol=1e-5)
            torch.testing.assert_close(out.log_prob.double(), normal_logprob64(out.prev_sample, out.mean, out.std),
                                       atol=1e-5, rtol=1e-5)
        else:  # timestep 0: diffusers adds no noise
            assert torch.all(out.std == 0) and torch.all(out.log_prob == 0)
        x = expected
    assert (ref.timesteps[-1] > 0) == (steps_offset > 0)


def test_ddpm_fixed_large_mean_is_the_posterior_mean_and_std_is_sqrt_beta():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, variance_type="fixed_large")
    rule = DDPMRule(sched, 10)
    small = DDPMRule(DDPMScheduler.from_config(sched.config, variance_type="fixed_small"), 10)
    x, eps = torch.randn(3, 7), torch.randn(3, 7)
    for i in range(9):
        a_t, a_prev = rule.alpha_t[i].item(), rule.alpha_prev[i].item()
        mean, _ = posterior64(x0_hat64(eps, x, a_t, "epsilon"), x.double(), a_t, a_prev)
        out = rule.step(i, eps, x, noise=torch.zeros_like(x))
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-5, rtol=1e-5)
        same = small.step(i, eps, x, noise=torch.zeros_like(x)).mean  # the fixed_small (DDIM op) mean
        torch.testing.assert_close(out.mean, same, atol=1e-5, rtol=1e-5)
        assert out.std.flatten()[0].item() == pytest.approx(math.sqrt(1 - a_t / a_prev), rel=1e-6)


def test_ddpm_rejects_unsupported_variance():
    with pytest.raises(ValueError, match="variance_type .*'learned_range'"):
        DDPMRule(DDPMScheduler(variance_type="learned_range"), 10)


# ---- the VP rule -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("num_steps", [40, 7])
def test_vp_ancestral_step_is_the_posterior(prediction_type, num_steps):
    sched = VPSchedule.cosine(40, prediction_type=prediction_type)
    rule = VPRule(sched, num_steps)
    x = torch.randn(3, 5, 2, dtype=torch.float64)  # float64 end to end: tight tolerances
    for i, k in enumerate(rule.indices.tolist()):
        a_t = sched.alphas_cumprod[k].item()
        a_prev = sched.alphas_cumprod[rule.indices[i + 1]].item() if i + 1 < num_steps else 1.0
        out_model, noise = torch.randn_like(x), torch.randn_like(x)
        mean, var = posterior64(x0_hat64(out_model, x, a_t, prediction_type), x.double(), a_t, a_prev)
        out = rule.step(i, out_model, x, noise=noise)
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(out.std.double().flatten(), torch.full((3,), math.sqrt(var), dtype=torch.float64),
                                   atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(out.prev_sample.double(), mean + math.sqrt(var) * noise.double(), atol=2e-5,
                                   rtol=1e-4)
        if var > 0:
            torch.testing.assert_close(out.log_prob.double(), normal_logprob64(out.prev_sample, mean, out.std),
                                       atol=1e-10, rtol=1e-10)
        else:  # the last step lands on x0_hat (a_prev = 1): deterministic, as DDPM and Diffuser
            assert i == num_steps - 1 and torch.all(out.log_prob == 0)
        assert rule.model_timesteps(i, x).tolist() == [k] * 3
        x = out.prev_sample


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_vp_ddim_eta_against_song_et_al_formula(eta):
    sched = VPSchedule.linear(100, prediction_type="v_prediction")
    rule = VPRule(sched, 10, eta=eta)
    assert rule.stochastic == (eta > 0)
    x, v, noise = (torch.randn(2, 9, dtype=torch.float64) for _ in range(3))
    for i in range(10):
        a_t, a_prev = rule.alpha_t[i].item(), rule.alpha_prev[i].item()
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x0, eps = x0_hat64(v, x, a_t, "v_prediction"), eps_hat64(v, x, a_t, "v_prediction")
        mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
        out = rule.step(i, v, x, noise=noise)
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(out.prev_sample.double(), mean + sigma * noise.double(), atol=1e-10, rtol=1e-10)


def test_vp_full_chain_matches_diffusers_ddpm():
    # over every training index the "vp" rule is diffusers' DDPM (fixed_small) on the same betas
    ref = DDPMScheduler(num_train_timesteps=30, beta_schedule="linear", beta_start=1e-3, beta_end=0.2,
                        clip_sample=False)
    ref.set_timesteps(30)
    rule = make_step_rule("vp", VPSchedule.linear(30, beta_start=1e-3, beta_end=0.2), 30)
    x = torch.randn(2, 4)
    for i, t in enumerate(ref.timesteps):
        eps = torch.randn_like(x)
        expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        out = rule.step(i, eps, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(out.prev_sample, expected, atol=2e-5, rtol=1e-4)
        assert rule.model_timesteps(i, x)[0] == t
        x = expected


def test_vp_fixed_large_and_final_alpha():
    sched = VPSchedule.polynomial(20, prediction_type="epsilon")
    rule = VPRule(sched, 20, variance="fixed_large")
    x, eps, noise = (torch.randn(2, 6, dtype=torch.float64) for _ in range(3))
    for i in range(20):
        a_t = sched.alphas_cumprod[19 - i].item()
        a_prev = sched.alphas_cumprod[18 - i].item() if i < 19 else sched.final_alpha_cumprod
        mean, _ = posterior64(x0_hat64(eps, x, a_t, "epsilon"), x.double(), a_t, a_prev)
        std = math.sqrt(1 - a_t / a_prev) if i < 19 else 0.0  # DDPM's Algorithm 2: z = 0 at the last step
        out = rule.step(i, eps, x, noise=noise)
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-10, rtol=1e-10)
        assert out.std.flatten()[0].item() == pytest.approx(std, rel=1e-12, abs=1e-14)
        torch.testing.assert_close(out.prev_sample.double(), mean + std * noise.double(), atol=1e-10, rtol=1e-10)
    # E(3) diffusion's chain ends at alpha^2(0) = 1 - 1e-5 and conditions on t / T
    assert rule.alpha_prev[-1].item() == pytest.approx(1 - 1e-5, abs=1e-12)
    assert rule.model_timesteps(0, x)[0].item() == pytest.approx(1.0)
    assert rule.model_timesteps(19, x)[0].item() == pytest.approx(1 / 20)


def test_vp_forward_process_and_targets():
    for pt in ("epsilon", "sample", "v_prediction"):
        rule = VPRule(VPSchedule.cosine(50, prediction_type=pt), 10)
        x0, noise = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        steps = torch.tensor([0, 4, 9])
        a = rule.alpha_t[steps][:, None]
        xt = rule.add_noise(x0, noise, steps)
        torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-12, rtol=1e-12)
        target = rule.training_target(x0, noise, xt, steps)
        # a perfect prediction of the target gives back x0 through the prediction type's parameterisation
        recovered = torch.stack([x0_hat64(target[k], xt[k], a[k].item(), pt) for k in range(3)])
        torch.testing.assert_close(recovered, x0, atol=1e-10, rtol=1e-10)


# ---- the EDM rule ------------------------------------------------------------------------------------------

def ancestral64(sigma, sigma_next, eta):
    """k-diffusion's get_ancestral_step, float64 scalars."""
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_edm_euler_ancestral_against_float64_formula(eta):
    sched = EDMSchedule(sigma_min=0.01, sigma_max=20.0)
    rule = EDMRule(sched, 6, eta=eta)
    assert rule.stochastic == (eta > 0) and rule.init_noise_sigma == pytest.approx(20.0)
    sigmas = sched.sampling_sigmas(6).tolist()
    x = 20.0 * torch.randn(3, 4, 2, dtype=torch.float64)
    for i in range(6):
        s, s2 = sigmas[i], sigmas[i + 1]
        denoised, noise = torch.randn_like(x), torch.randn_like(x)
        down, up = ancestral64(s, s2, eta)
        mean = x.double() + (down - s) * (x.double() - denoised.double()) / s
        out = rule.step(i, denoised, x, noise=noise)
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-10, rtol=1e-10)
        assert out.std.flatten()[0].item() == pytest.approx(up, rel=1e-12, abs=1e-14)
        torch.testing.assert_close(out.prev_sample.double(), mean + up * noise.double(), atol=1e-10, rtol=1e-10)
        if up > 0:
            torch.testing.assert_close(out.log_prob.double(), normal_logprob64(out.prev_sample, mean, out.std),
                                       atol=1e-10, rtol=1e-10)
        else:
            assert torch.all(out.log_prob == 0)
        if eta == 1.0 and s2 > 0:  # eta = 1 is the VE posterior q(x_{s'} | x_s, x0 = D)
            post_mean = denoised.double() + s2**2 / s**2 * (x.double() - denoised.double())
            torch.testing.assert_close(out.mean.double(), post_mean, atol=1e-10, rtol=1e-10)
            assert up**2 == pytest.approx(s2**2 * (s**2 - s2**2) / s**2)
        x = out.prev_sample
    torch.testing.assert_close(out.prev_sample, denoised)  # sigma' = 0: the last step lands on D


def test_edm_epsilon_prediction_and_euler_variant_agree_with_denoised():
    sched_d, sched_e = EDMSchedule(), EDMSchedule(prediction_type="epsilon")
    x, denoised = 5 * torch.randn(2, 8), torch.randn(2, 8)
    for cls, kw in ((EDMRule, {"eta": 1.0}), (EDMEulerRule, {})):
        r_d, r_e = cls(sched_d, 8, **kw), cls(sched_e, 8, **kw)
        for i in (0, 3, 7):
            eps = (x - denoised) / r_d.sigma[i].float()
            noise = torch.randn_like(x)
            torch.testing.assert_close(r_e.step(i, eps, x, noise=noise).prev_sample,
                                       r_d.step(i, denoised, x, noise=noise).prev_sample, atol=1e-5, rtol=1e-5)
    euler = EDMEulerRule(sched_d, 8)
    s, s2 = euler.sigma[2].item(), euler.sigma_next[2].item()
    out = euler.step(2, denoised, x)
    torch.testing.assert_close(out.prev_sample.double(), x.double() + (s2 - s) * (x.double() - denoised.double()) / s,
                               atol=1e-5, rtol=1e-5)
    assert torch.all(out.log_prob == 0) and not euler.stochastic


def test_edm_model_time_forward_process_and_target():
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    steps = torch.tensor([0, 2, 4])
    for model_time, fn in (("c_noise", lambda s: s.log() / 4), ("sigma", lambda s: s),
                           (lambda s: 1000 * s.atan() * 2 / math.pi, lambda s: 1000 * s.atan() * 2 / math.pi)):
        rule = EDMRule(EDMSchedule(model_time=model_time), 5)
        t = rule.model_timesteps(steps, x0)
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, fn(rule.sigma[steps]).float())
    s = rule.sigma[steps][:, None]
    torch.testing.assert_close(rule.add_noise(x0, noise, steps).double(), x0.double() + s * noise.double())
    assert torch.equal(rule.training_target(x0, noise, None, steps), x0)
    assert torch.equal(EDMRule(EDMSchedule(prediction_type="epsilon"), 5).training_target(x0, noise, None, steps),
                       noise)


# ---- shared invariants ---------------------------------------------------------------------------------------

def new_rules():
    large = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          variance_type="fixed_large")
    return [("ddpm_large", DDPMRule(large, 10)),
            ("vp", VPRule(VPSchedule.cosine(100, prediction_type="v_prediction"), 10)),
            ("vp_large", VPRule(VPSchedule.linear(100), 10, variance="fixed_large")),
            ("vp_eta", VPRule(VPSchedule.polynomial(100, prediction_type="sample"), 10, eta=0.3)),
            ("edm", EDMRule(EDMSchedule(sigma_max=10.0), 10)),
            ("edm_eta", EDMRule(EDMSchedule(sigma_max=10.0, prediction_type="epsilon"), 10, eta=0.6))]


@pytest.mark.parametrize("name", [n for n, _ in new_rules()])
def test_rescoring_the_drawn_sample_reproduces_its_logprob(name):
    rule = dict(new_rules())[name]
    x = torch.randn(4, 3, 3)
    for i in range(rule.num_steps):
        out_model = torch.randn_like(x, requires_grad=True)
        drawn = rule.step(i, out_model, x, generator=torch.Generator().manual_seed(i))
        again = rule.step(i, out_model, x, prev_sample=drawn.prev_sample.detach())
        assert torch.equal(again.log_prob, drawn.log_prob)  # the importance ratio is exactly 1
        assert again.log_prob.dtype == torch.float32 and again.log_prob.shape == (4,)
        assert again.std.shape == (4, 1, 1)
        if bool((again.std > 0).all()):  # the log-prob trains the model: its gradient is the Normal's
            grad = torch.autograd.grad(again.log_prob.sum(), out_model, retain_graph=True)[0]
            mean = again.mean.detach().double().requires_grad_(True)
            normal_logprob64(drawn.prev_sample.detach(), mean, again.std).sum().backward()
            expected = torch.autograd.grad(again.mean, out_model, grad_outputs=mean.grad.to(again.mean.dtype))[0]
            torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-4)
            assert grad.abs().sum() > 0
        x = drawn.prev_sample.detach()


@pytest.mark.parametrize("name", ["vp", "edm", "ddpm_large"])
def test_per_sample_indices_equal_separate_calls(name):
    rule = dict(new_rules())[name]
    x, out_model, prev = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    steps = torch.tensor([0, 4, 8])
    batched = rule.step(steps, out_model, x, prev_sample=prev)
    single = [rule.step(int(s), out_model[k:k + 1], x[k:k + 1], prev_sample=prev[k:k + 1]) for k, s in enumerate(steps)]
    torch.testing.assert_close(batched.log_prob, torch.cat([o.log_prob for o in single]))
    torch.testing.assert_close(batched.mean, torch.cat([o.mean for o in single]))


@pytest.mark.parametrize("scheduler,rule", [(VPSchedule.cosine(1000), "vp"), (EDMSchedule(sigma_max=5.0), "edm")])
def test_policy_rollout_rescored_at_training_time(scheduler, rule):
    adapter = ToyAdapter(["a", "b"], dim=8)
    adapter.scheduler = scheduler
    policy = DiffusionPolicy(adapter, make_step_rule(rule, scheduler, 6), guidance_scale=2.0)
    cond = adapter.encode_conditions(["a", "b", "a"])
    traj = policy.sample(cond, generator=[torch.Generator().manual_seed(k) for k in range(3)])
    for j in range(6):
        steps = torch.full((3,), j)
        x_t, x_prev, old = traj.states_at(steps)
        new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
        assert (new - old).abs().max().item() <= 1e-5
    assert torch.all(traj.log_probs[:, -1] == 0)  # both chains end deterministically on the data


def _accepts_mask(fn):
    return "mask" in inspect.signature(fn).parameters


@pytest.mark.skipif(not _accepts_mask(ops.gaussian_logprob), reason="ops.gaussian_logprob has no mask= yet")
@pytest.mark.parametrize("name", ["edm", "vp_large"])
def test_masked_logprob_is_the_masked_mean(name):
    rule = dict(new_rules())[name]
    x, out_model, prev = torch.randn(3, 5, 2), torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    mask = torch.ones(3, 5, 1)
    mask[0, 3:] = 0
    mask[1, 1:] = 0
    out = rule.step(2, out_model, x, prev_sample=prev, mask=mask)
    std = out.std.double().expand_as(x)
    lp = Normal(out.mean.double(), std).log_prob(prev.double())
    m = mask.double().expand_as(x)
    torch.testing.assert_close(out.log_prob.double(), (lp * m).flatten(1).sum(1) / m.flatten(1).sum(1),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not _accepts_mask(ops.ddim_step_with_logprob), reason="ops.ddim_step_with_logprob has no mask= yet")
def test_masked_vp_step_forwards_the_mask():
    rule = dict(new_rules())["vp"]
    x, out_model, prev = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    out = rule.step(1, out_model, x, prev_sample=prev, mask=mask)
    lp = Normal(out.mean.double(), out.std.double().expand_as(x)).log_prob(prev.double())
    torch.testing.assert_close(out.log_prob.double(), (lp * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)


# ---- errors --------------------------------------------------------------------------------------------------

def test_schedule_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\); betas\[1\] = 1.2"):
        VPSchedule([0.1, 1.2])
    with pytest.raises(ValueError, match=r"betas\[0\] = 0"):
        VPSchedule([0.0, 0.1])
    with pytest.raises(ValueError, match=r"alphas_cumprod must be strictly decreasing.*alphas_cumprod\[2\]"):
        VPSchedule(alphas_cumprod=[0.9, 0.5, 0.6])
    with pytest.raises(ValueError, match=r"alphas_cumprod must lie in \(0, 1\)"):
        VPSchedule(alphas_cumprod=[1.0, 0.5])
    with pytest.raises(ValueError, match="exactly one of betas or alphas_cumprod"):
        VPSchedule()
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        VPSchedule([0.1], prediction_type="flow")
    with pytest.raises(ValueError, match="final_alpha_cumprod must lie in"):
        VPSchedule([0.1, 0.2], final_alpha_cumprod=0.5)
    with pytest.raises(ValueError, match=r"model_times must have shape \(2,\)"):
        VPSchedule([0.1, 0.2], model_times=[1.0])
    with pytest.raises(ValueError, match=r"sigmas must be strictly decreasing.*sigmas\[2\] = 3"):
        EDMSchedule(sigmas=[5.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"sigmas must be positive.*sigmas\[1\] = 0"):
        EDMSchedule(sigmas=[5.0, 0.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMSchedule(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="rho must be positive"):
        EDMSchedule(rho=0)
    with pytest.raises(ValueError, match="model_time must be one of"):
        EDMSchedule(model_time="log")


def test_rule_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"num_steps must lie in \[1, 10\]"):
        VPRule(VPSchedule.linear(10), 11)
    with pytest.raises(ValueError, match="needs a VPSchedule, got DDPMScheduler"):
        make_step_rule("vp", DDPMScheduler(), 10)
    with pytest.raises(ValueError, match="need an EDMSchedule, got VPSchedule"):
        make_step_rule("edm", VPSchedule.linear(10), 5)
    with pytest.raises(ValueError, match="eta must be 1"):
        VPRule(VPSchedule.linear(10), 5, eta=0.5, variance="fixed_large")
    with pytest.raises(ValueError, match="variance must be one of"):
        VPRule(VPSchedule.linear(10), 5, variance="learned")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        EDMRule(EDMSchedule(), 5, eta=-0.1)
    with pytest.raises(ValueError, match=r"num_steps must equal the number of explicit sigmas \(2\)"):
        EDMRule(EDMSchedule(sigmas=[2.0, 1.0]), 3)
    with pytest.raises(ValueError, match="out of range"):
        EDMRule(EDMSchedule(), 5).step(5, torch.randn(2, 3), torch.randn(2, 3))


@pytest.mark.parametrize("name", ["vp", "vp_large", "edm"])
def test_mask_reaches_the_op_only_when_given(name, monkeypatch):
    # independent of whether the ops accept mask= yet: record what the rule passes them
    seen = []

    def spy(real):
        def call(*args, **kwargs):
            seen.append(kwargs.pop("mask", "absent"))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(ops, "ddim_step_with_logprob", spy(ops.ddim_step_with_logprob))
    monkeypatch.setattr(ops, "gaussian_logprob", spy(ops.gaussian_logprob))
    rule = dict(new_rules())[name]
    x, out_model = torch.randn(2, 4), torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)
    rule.step(3, out_model, x)
    rule.step(3, out_model, x, mask=mask)
    assert seen[0] == "absent" and seen[1] is mask and len(seen) == 2
