"""Step rules against diffusers' own schedulers and independent float64 formulas."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from diffalign.mdp import DDIMRule, DDPMRule, FlowODERule, FlowSDERule, make_step_rule


def sd_ddim(prediction_type="epsilon", set_alpha_to_one=False):
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         set_alpha_to_one=set_alpha_to_one, clip_sample=False, steps_offset=1,
                         prediction_type=prediction_type)


def logpdf64(x, mean, std):
    x, mean, std = x.double(), mean.double(), std.double().reshape(-1, *([1] * (x.ndim - 1)))
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_step(prediction_type, eta):
    sched = sd_ddim(prediction_type)
    rule = DDIMRule(sched, 8, eta=eta)
    ref = sd_ddim(prediction_type)
    ref.set_timesteps(8)
    x = torch.randn(3, 4, 5, 5)
    for i, t in enumerate(ref.timesteps):
        eps, noise = torch.randn_like(x), torch.randn_like(x)
        expected = ref.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        out = rule.step(i, eps, x, noise=noise)
        torch.testing.assert_close(out.prev_sample, expected, atol=2e-5, rtol=1e-5)
        if eta > 0:
            torch.testing.assert_close(out.log_prob.double(), logpdf64(out.prev_sample, out.mean, out.std),
                                       atol=1e-5, rtol=1e-5)
        else:
            assert torch.all(out.log_prob == 0) and torch.all(out.std == 0)
        x = expected


def test_ddim_last_step_clamps_prev_timestep_like_ddpo():
    # with set_alpha_to_one=True diffusers would use alpha_prev = 1 (a deterministic last step);
    # we follow the DDPO trainer and clamp the previous timestep at 0 -> alphas_cumprod[0]
    sched = sd_ddim(set_alpha_to_one=True)
    rule = DDIMRule(sched, 10, eta=1.0)
    assert rule.alpha_prev[-1].item() == pytest.approx(sched.alphas_cumprod[0].item())
    assert rule.alpha_prev[0].item() == pytest.approx(sched.alphas_cumprod[rule.timesteps[0] - 100].item())
    out = rule.step(9, torch.randn(2, 3), torch.randn(2, 3))
    assert torch.all(out.std > 0)


def test_ddpm_matches_diffusers_step_with_same_generator():
    kwargs = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False)
    rule = DDPMRule(DDPMScheduler(**kwargs), 6)
    ref = DDPMScheduler(**kwargs)
    ref.set_timesteps(6)
    x = torch.randn(4, 3, 2)
    for i, t in enumerate(ref.timesteps):
        eps = torch.randn_like(x)
        expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        out = rule.step(i, eps, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(out.prev_sample, expected, atol=2e-5, rtol=1e-5)
        x = expected
    assert torch.all(out.std == 0) and torch.all(out.log_prob == 0)  # last step: alpha_prev = 1


def test_flow_ode_matches_euler_scheduler():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    rule = FlowODERule(sched, 5)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ref.set_timesteps(5)
    x = torch.randn(2, 4, 3, 3)
    for i, t in enumerate(ref.timesteps):
        v = torch.randn_like(x)
        expected = ref.step(v, t, x).prev_sample
        torch.testing.assert_close(rule.step(i, v, x).prev_sample, expected, atol=1e-5, rtol=1e-5)
        assert rule.model_timesteps(i, x)[0] == t
        x = expected


def test_flow_sde_against_float64_formula():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    rule = FlowSDERule(sched, 6, noise_level=0.7)
    x, v, noise = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    for i in range(1, 6):  # step 0 has sigma = 1, handled by the op's documented substitution
        s, s_next = rule.sigma[i].double(), rule.sigma_next[i].double()
        dt = s_next - s
        st = 0.7 * torch.sqrt(s / (1 - s))
        mean = x.double() + (v.double() * (1 + st**2 * (1 - s) / (2 * s)) + x.double() * st**2 / (2 * s)) * dt
        std = st * torch.sqrt(-dt)
        out = rule.step(i, v, x, noise=noise)
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.std.flatten().double(), std.expand(3), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.prev_sample.double(), mean + std * noise.double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.log_prob.double(), logpdf64(out.prev_sample, out.mean, out.std), atol=1e-5,
                                   rtol=1e-5)


def test_per_sample_step_indices_equal_separate_calls():
    rule = DDIMRule(sd_ddim(), 10, eta=1.0)
    x, eps, prev = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    steps = torch.tensor([0, 4, 9])
    batched = rule.step(steps, eps, x, prev_sample=prev).log_prob
    single = torch.cat([rule.step(int(s), eps[k:k + 1], x[k:k + 1], prev_sample=prev[k:k + 1]).log_prob
                        for k, s in enumerate(steps)])
    torch.testing.assert_close(batched, single)


@pytest.mark.parametrize("name,sched", [("ddim", sd_ddim()), ("ddim", sd_ddim("v_prediction")),
                                        ("flow_sde", FlowMatchEulerDiscreteScheduler(shift=3.0))])
def test_forward_process_matches_scheduler_and_target_inverts_it(name, sched):
    rule = make_step_rule(name, sched, 10)
    x0, noise = torch.randn(4, 5), torch.randn(4, 5)
    steps = torch.tensor([0, 3, 6, 9])
    xt = rule.add_noise(x0, noise, steps)
    t = rule.model_timesteps(steps, x0)
    if name == "ddim":
        torch.testing.assert_close(xt, sched.add_noise(x0, noise, t.long()), atol=1e-6, rtol=1e-5)
    else:
        expected = torch.stack([rule.scheduler.scale_noise(x0[k:k + 1], t[k:k + 1], noise[k:k + 1])[0]
                                for k in range(4)])
        torch.testing.assert_close(xt, expected, atol=1e-6, rtol=1e-5)
    # a perfect prediction of the training target makes a deterministic step land on the data line
    target = rule.training_target(x0, noise, xt, steps)
    if name == "flow_sde":
        torch.testing.assert_close(xt - rule.sigma[steps].float()[:, None] * target, x0, atol=1e-5, rtol=1e-5)
    elif sched.config.prediction_type == "epsilon":
        assert torch.equal(target, noise)
    else:
        a = sched.alphas_cumprod[t.long()][:, None]
        torch.testing.assert_close(a.sqrt() * xt - (1 - a).sqrt() * target, x0, atol=1e-5, rtol=1e-5)


def test_rule_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown step rule 'ddpn'"):
        make_step_rule("ddpn", sd_ddim(), 10)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        DDIMRule(sd_ddim(), 10, eta=-1)
    rule = DDIMRule(sd_ddim(), 10)
    with pytest.raises(ValueError, match="out of range"):
        rule.step(10, torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        DDIMRule(sd_ddim(), 0)


def test_rule_does_not_mutate_callers_scheduler():
    sched = sd_ddim()
    sched.set_timesteps(50)
    DDIMRule(sched, 10)
    assert len(sched.timesteps) == 50
