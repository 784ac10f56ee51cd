"""Fused ops versus the pure-PyTorch reference (values and gradients), and the reference versus
independent closed forms (torch.distributions, diffusers' DDIMScheduler, the survey's formulas)."""
import math

import pytest
import torch

import diffalign.ops as ops
from diffalign.ops import reference as R

from ops_testing import DEVICES, assert_close, make, requires_ext, std_of

SHAPES = [(1, 5), (3, 4, 5), (4, 2, 3, 7)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LAYOUTS = ["scalar", "row", "row_keepdim", "full"]


def _grads(out, inputs, seed=11):
    """Gradient of a weighted sum of out (so every output element gets a distinct weight)."""
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.device)
    wanted = [t for t in inputs if t.requires_grad]
    return torch.autograd.grad((out.double() * w).sum(), wanted)


# ---------------------------------------------------------------- reference vs closed forms ----
def test_reference_logprob_matches_torch_distributions():
    x, mean = make((3, 4, 5), torch.float64, "cpu"), make((3, 4, 5), torch.float64, "cpu", seed=1)
    std = std_of("row", (3, 4, 5), "cpu")
    normal = torch.distributions.Normal(mean, std.view(3, 1, 1))
    expected = normal.log_prob(x)
    torch.testing.assert_close(R.gaussian_logprob(x, mean, std, "sum"), expected.sum(dim=(1, 2)))
    torch.testing.assert_close(R.gaussian_logprob(x, mean, std, "mean"), expected.mean(dim=(1, 2)))


def test_reference_kl_matches_torch_distributions():
    m1, m2 = make((2, 6), torch.float64, "cpu"), make((2, 6), torch.float64, "cpu", seed=1)
    s1, s2 = std_of("full", (2, 6), "cpu"), std_of("row", (2, 6), "cpu", seed=9)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1),
                                                 torch.distributions.Normal(m2, s2.view(2, 1)))
    torch.testing.assert_close(R.gaussian_kl(m1, m2, s1, s2, "sum"), expected.sum(1))
    # equal stds: (m1 - m2)^2 / (2 sigma^2), DPOK's per-step regulariser (survey Eq. 21-22)
    torch.testing.assert_close(R.gaussian_kl(m1, m2, s1, None, "mean"), ((m1 - m2) ** 2 / (2 * s1**2)).mean(1))


def test_reference_dpo_matches_survey_eq25_by_hand():
    mp, rp, t = (make((4, 3), torch.float64, "cpu", seed=s) for s in range(3))
    beta = 7.0
    e = lambda p: ((p - t) ** 2).mean(1)
    em, er = e(mp), e(rp)
    inside = -0.5 * beta * ((em[:2] - em[2:]) - (er[:2] - er[2:]))
    expected = torch.tensor([-math.log(1 / (1 + math.exp(-float(v)))) for v in inside], dtype=torch.float64).mean()
    loss, margin = R.diffusion_dpo_loss(mp, rp, t, beta, "sigmoid", "mean")
    torch.testing.assert_close(loss, expected.double())
    torch.testing.assert_close(margin, inside)


def test_reference_kto_matches_formula_by_hand():
    mp, rp, t = (make((4, 3), torch.float64, "cpu", seed=s) for s in range(3))
    des = torch.tensor([True, False, True, False])
    g = ((rp - t) ** 2).mean(1) - ((mp - t) ** 2).mean(1)
    z = max(0.0, float(g.mean()))
    beta = 3.0
    per = [(1.0 if d else 2.0) * (1 - 1 / (1 + math.exp(-(1 if d else -1) * beta * (float(gi) - z))))
           for gi, d in zip(g, des)]
    loss, zz = R.diffusion_kto_loss(mp, rp, t, des, beta, 1.0, 2.0)
    assert abs(float(loss) - sum(per) / 4) < 1e-12 and abs(float(zz) - z) < 1e-12


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_reference_ddim_step_matches_diffusers(prediction_type):
    DDIMScheduler = pytest.importorskip("diffusers").DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type,
                          clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(20)
    t = int(sched.timesteps[5])
    prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
    a_t, a_prev = sched.alphas_cumprod[t].double(), sched.alphas_cumprod[prev_t].double()
    x, eps, noise = (make((2, 4, 3, 3), torch.float64, "cpu", seed=s) for s in range(3))
    expected = sched.step(eps, t, x, eta=0.8, variance_noise=noise).prev_sample
    prev, lp, mean, std = R.ddim_step_with_logprob(eps, x, a_t, a_prev, 0.8, None, noise, prediction_type)
    torch.testing.assert_close(prev, expected, rtol=1e-6, atol=1e-6)
    # log-prob of the drawn sample: prev - mean = std * noise exactly
    expected_lp = (-(noise**2) / 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lp, expected_lp)


def test_reference_flow_step_matches_design_formula():
    # docs/design.md's flow SDE formula as written: sigma_t = a sqrt(s/(1-s)),
    # mu = x + [v (1 + sigma_t^2 (1-s)/(2s)) + x sigma_t^2/(2s)] dt, std = sigma_t sqrt(-dt)
    s, sn, a = torch.tensor([0.8, 0.3]).double(), torch.tensor([0.6, 0.1]).double(), 0.7
    x, v, noise = (make((2, 5), torch.float64, "cpu", seed=k) for k in range(3))
    st = a * torch.sqrt(s / (1 - s))
    dt = (sn - s).view(2, 1)
    s_, st_ = s.view(2, 1), st.view(2, 1)
    mu = x + (v * (1 + st_**2 * (1 - s_) / (2 * s_)) + x * st_**2 / (2 * s_)) * dt
    prev, lp, mean, std = R.flow_sde_step_with_logprob(v, x, s, sn, a, None, noise)
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(std.flatten(), (st * torch.sqrt(sn.neg() + s)))
    torch.testing.assert_close(prev, mu + std * noise)


def test_flow_step_is_finite_at_sigma_one():
    x, v, noise = (make((2, 5), torch.float32, "cpu", seed=k) for k in range(3))
    out = ops.flow_sde_step_with_logprob(v, x, torch.tensor(1.0), torch.tensor(0.95), noise=noise)
    for t in out:
        assert torch.isfinite(t).all()
    # the 1/(1-sigma) factor then uses sigma_next: std = a sqrt(1/(1-0.95)) sqrt(0.05)
    torch.testing.assert_close(out.std.flatten(), torch.full((2,), 0.7 * math.sqrt(1 / 0.05) * math.sqrt(0.05)))


# ------------------------------------------------------------------ extension vs reference ----
@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_logprob_and_kl_match_reference(device, dtype, shape, layout, reduction):
    noncontig = len(shape) > 2
    x = make(shape, dtype, device, noncontig=noncontig, requires_grad=True)
    mean = make(shape, dtype, device, seed=1, requires_grad=True)
    std = std_of(layout, shape, device).requires_grad_()
    for fused, ref in ((ops.gaussian_logprob, R.gaussian_logprob),
                       (lambda a, b, s, r: ops.gaussian_kl(a, b, s, None, r), lambda a, b, s, r: R.gaussian_kl(a, b, s, None, r))):
        out, expected = fused(x, mean, std, reduction), ref(x, mean, std, reduction)
        assert out.shape == (shape[0],) and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_close(out, expected, dtype, "value")
        for g, ge, name in zip(_grads(out, [x, mean, std]), _grads(expected, [x, mean, std]), ["x", "mean", "std"]):
            assert g.shape == ge.shape
            assert_close(g, ge, dtype if name != "std" else torch.float32, f"grad {name}")


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout2", LAYOUTS)
def test_kl_with_ref_std_matches_reference(device, layout2):
    shape = (3, 2, 5)
    m1, m2 = make(shape, torch.float32, device, requires_grad=True), make(shape, torch.float32, device, seed=1,
                                                                         requires_grad=True)
    s1 = std_of("row", shape, device).float().requires_grad_()
    s2 = std_of(layout2, shape, device, seed=8).float().requires_grad_()
    out, expected = ops.gaussian_kl(m1, m2, s1, s2), R.gaussian_kl(m1, m2, s1, s2)
    assert_close(out, expected, torch.float32)
    for g, ge in zip(_grads(out, [m1, m2, s1, s2]), _grads(expected, [m1, m2, s1, s2])):
        assert_close(g, ge, torch.float32)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("shape", [(2, 3), (6, 4, 5, 5)])
def test_dpo_matches_reference(device, dtype, loss_type, reduction, shape):
    mp = make(shape, dtype, device, requires_grad=True, noncontig=len(shape) > 2)
    rp = (mp.detach().double() + 0.05 * make(shape, torch.float64, device, seed=3)).to(dtype)
    t = make(shape, dtype, device, seed=4)
    beta = 50.0 if loss_type != "ipo" else 0.5
    got = ops.diffusion_dpo_loss(mp, rp, t, beta, loss_type, reduction, return_stats=True)
    exp_loss, exp_margin = R.diffusion_dpo_loss(mp, rp, t, beta, loss_type, reduction)
    assert_close(got.loss, exp_loss, dtype, "loss")
    assert_close(got.reward_margin, exp_margin, dtype, "margin")
    torch.testing.assert_close(got.implicit_acc, (exp_margin > 0).to(got.implicit_acc.dtype))
    assert_close(_grads(got.loss, [mp])[0], _grads(exp_loss, [mp])[0], dtype, "grad")


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_ref_point", [False, True])
def test_kto_matches_reference(device, dtype, with_ref_point):
    shape = (5, 3, 4)
    mp = make(shape, dtype, device, requires_grad=True)
    rp = (mp.detach().double() + 0.1 * make(shape, torch.float64, device, seed=3)).to(dtype)
    t = make(shape, dtype, device, seed=4)
    des = torch.tensor([True, False, True, True, False], device=device)
    kl_ref = torch.tensor(0.02, device=device) if with_ref_point else None
    got = ops.diffusion_kto_loss(mp, rp, t, des, 20.0, 1.0, 1.5, kl_ref, return_stats=True)
    exp_loss, exp_z = R.diffusion_kto_loss(mp, rp, t, des, 20.0, 1.0, 1.5, kl_ref)
    assert_close(got.loss, exp_loss, dtype, "loss")
    assert_close(got.kl_ref, exp_z, dtype, "z")
    assert_close(_grads(got.loss, [mp])[0], _grads(exp_loss, [mp])[0], dtype, "grad")


def _alphas(b, device, per_sample):
    if per_sample:
        a_t = torch.linspace(0.2, 0.7, b, dtype=torch.float64)
        return a_t.to(device), (a_t + 0.25).to(device)
    return torch.tensor(0.4, dtype=torch.float64, device=device), torch.tensor(0.6, dtype=torch.float64, device=device)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_ddim_step_matches_reference(device, dtype, prediction_type, per_sample):
    shape = (3, 4, 5)
    eps = make(shape, dtype, device, requires_grad=True)
    x = make(shape, dtype, device, seed=1, requires_grad=True)
    noise = make(shape, dtype, device, seed=2)
    a_t, a_prev = _alphas(3, device, per_sample)
    got = ops.ddim_step_with_logprob(eps, x, a_t, a_prev, 0.9, noise=noise, prediction_type=prediction_type)
    exp = R.ddim_step_with_logprob(eps, x, a_t, a_prev, 0.9, None, noise, prediction_type)
    for name, g, e in zip(got._fields, got, exp):
        assert g.shape == e.shape, name
        assert_close(g, e, dtype, name)
    # gradients through the drawn sample and the mean (differentiable sampling, DRaFT/AlignProp)
    got_g = _grads(got.prev_sample.double().sum(dim=(1, 2)) + got.mean.double().pow(2).sum(dim=(1, 2)), [eps, x])
    exp_g = _grads(exp[0].double().sum(dim=(1, 2)) + exp[2].double().pow(2).sum(dim=(1, 2)), [eps, x])
    for g, e in zip(got_g, exp_g):
        assert_close(g, e, dtype, "grad")
    # scoring a given sample: gradients of the log-prob for the model output, x_t and x_{t-1}
    prev = exp[0].detach().clone().requires_grad_()
    got = ops.ddim_step_with_logprob(eps, x, a_t, a_prev, 0.9, prev_sample=prev, prediction_type=prediction_type)
    exp = R.ddim_step_with_logprob(eps, x, a_t, a_prev, 0.9, prev, None, prediction_type)
    assert got.prev_sample is prev
    assert_close(got.log_prob, exp[1], dtype, "rescored log-prob")
    for g, e in zip(_grads(got.log_prob, [eps, x, prev]), _grads(exp[1], [eps, x, prev])):
        assert_close(g, e, dtype, "grad of log-prob")


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_flow_step_matches_reference(device, dtype):
    shape = (4, 3, 6)
    v = make(shape, dtype, device, requires_grad=True)
    x = make(shape, dtype, device, seed=1, requires_grad=True)
    noise = make(shape, dtype, device, seed=2)
    sigma = torch.tensor([1.0, 0.75, 0.4, 0.1], device=device)
    sigma_next = torch.tensor([0.9, 0.6, 0.2, 0.0], device=device)
    got = ops.flow_sde_step_with_logprob(v, x, sigma, sigma_next, noise=noise)
    exp = R.flow_sde_step_with_logprob(v, x, sigma, sigma_next, 0.7, None, noise)
    for name, g, e in zip(got._fields, got, exp):
        assert_close(g, e, dtype, name)
    prev = exp[0].detach().clone().requires_grad_()
    got = ops.flow_sde_step_with_logprob(v, x, sigma, sigma_next, prev_sample=prev)
    exp = R.flow_sde_step_with_logprob(v, x, sigma, sigma_next, 0.7, prev, None)
    for g, e in zip(_grads(got.log_prob, [v, x, prev]), _grads(exp[1], [v, x, prev])):
        assert_close(g, e, dtype, "grad")


def _schedule(layout, b, device):
    """alpha_prod_t / alpha_prod_prev in the layouts a caller may pass: the op passes the first two through
    as they are and copies the others into its (B,) float32 form."""
    a_t = torch.linspace(0.2, 0.7, b, dtype=torch.float64, device=device)
    if layout == "per_sample":
        return a_t.float(), (a_t + 0.25).float()
    if layout == "scalar":
        return torch.tensor(0.4, device=device), torch.tensor(0.6, device=device)
    if layout == "mixed":  # one per sample, one shared: the shared one is expanded
        return a_t.float(), torch.tensor(0.95, device=device)
    if layout == "strided":  # a (B,) view with stride 2
        both = torch.stack([a_t, a_t + 0.25], dim=1).float()
        assert not both[:, 0].is_contiguous()
        return both[:, 0], both[:, 1]
    return a_t, a_t + 0.25  # float64 with float32 data: cast


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["per_sample", "scalar", "mixed", "strided", "float64"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "expanded", "strided"])
def test_step_schedule_and_gradient_layouts(device, layout, grad_layout):
    """Every schedule-value layout, and every layout of the log-prob's incoming gradient (the gradient of
    .sum() arrives as a stride-0 expand, read in place), gives the reference's values and gradients."""
    b, shape = 3, (3, 4, 5)
    eps = make(shape, torch.float32, device, requires_grad=True)
    x = make(shape, torch.float32, device, seed=1, requires_grad=True)
    a_t, a_prev = _schedule(layout, b, device)
    drawn = R.ddim_step_with_logprob(eps, x, a_t, a_prev, 1.0, None, make(shape, torch.float32, device, seed=2),
                                     "epsilon")[0]
    prev = drawn.detach().clone().requires_grad_()
    grad = {"contiguous": torch.tensor([0.5, -2.0, 1.5], device=device),
            "expanded": torch.tensor(0.7, device=device).expand(b),
            "strided": torch.tensor([0.5, 9.0, -2.0, 9.0, 1.5, 9.0], device=device)[::2]}[grad_layout]
    got = ops.ddim_step_with_logprob(eps, x, a_t, a_prev, 1.0, prev_sample=prev)
    exp = R.ddim_step_with_logprob(eps, x, a_t, a_prev, 1.0, prev, None, "epsilon")
    assert_close(got.log_prob, exp[1], torch.float32, "log-prob")
    assert_close(got.std, exp[3], torch.float32, "std")
    got_g = torch.autograd.grad(got.log_prob, [eps, x, prev], grad_outputs=grad)
    exp_g = torch.autograd.grad(exp[1], [eps, x, prev], grad_outputs=grad.to(exp[1].dtype), retain_graph=True)
    for name, g, e in zip(("model_output", "sample", "prev_sample"), got_g, exp_g):
        assert_close(g, e, torch.float32, f"grad of {name}")
    # the .sum() path itself, as a training loop calls it
    for t in (eps, x, prev):
        t.grad = None
    ops.ddim_step_with_logprob(eps, x, a_t, a_prev, 1.0, prev_sample=prev).log_prob.sum().backward()
    exp_sum = torch.autograd.grad(exp[1].sum(), [eps, x, prev])
    for t, e in zip((eps, x, prev), exp_sum):
        assert_close(t.grad, e, torch.float32, "grad of .sum()")


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rescoring_a_drawn_step_gives_the_same_log_prob(device, batch, dtype):
    """The rollout/training invariant: scoring the stored sample reproduces the rollout's log-prob
    exactly (the op scores the sample as rounded to its dtype), at any batch size."""
    shape = (batch, 4, 8, 8)
    eps, x = make(shape, dtype, device), make(shape, dtype, device, seed=1)
    a_t, a_prev = _alphas(batch, device, per_sample=True)
    drawn = ops.ddim_step_with_logprob(eps, x, a_t, a_prev, 1.0, generator=torch.Generator(device).manual_seed(0))
    scored = ops.ddim_step_with_logprob(eps, x, a_t, a_prev, 1.0, prev_sample=drawn.prev_sample)
    torch.testing.assert_close(scored.log_prob, drawn.log_prob, rtol=0, atol=1e-5)
    # scoring rows one at a time gives the same values: nothing depends on the batch composition
    rows = torch.cat([ops.ddim_step_with_logprob(eps[i:i + 1], x[i:i + 1], a_t[i], a_prev[i], 1.0,
                                                 prev_sample=drawn.prev_sample[i:i + 1]).log_prob for i in range(batch)])
    torch.testing.assert_close(rows, drawn.log_prob, rtol=0, atol=1e-5)


@requires_ext
def test_eta_zero_step_is_deterministic_with_zero_log_prob():
    x, eps = make((2, 6), torch.float32, "cpu"), make((2, 6), torch.float32, "cpu", seed=1)
    out = ops.ddim_step_with_logprob(eps, x, torch.tensor(0.3), torch.tensor(0.5), eta=0.0)
    torch.testing.assert_close(out.prev_sample, out.mean)
    assert torch.equal(out.log_prob, torch.zeros(2)) and torch.equal(out.std.flatten(), torch.zeros(2))


@requires_ext
def test_large_rows_span_many_chunks():
    # rows longer than one CPU/CUDA chunk exercise the partial-sum combination
    for device in DEVICES:
        x, mean = make((2, 70000), torch.float32, device), make((2, 70000), torch.float32, device, seed=1)
        std = torch.tensor([0.9, 1.1], device=device)
        assert_close(ops.gaussian_logprob(x, mean, std, "sum"), R.gaussian_logprob(x, mean, std, "sum"),
                     torch.float32)
