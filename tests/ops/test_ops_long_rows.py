"""The fused ops on rows long enough for the kernels' full-chunk paths (4096 elements a block on CUDA,
8192 for the 16-bit log-prob, KL and loss passes; 16384 a task on CPU), including the CUDA 16-byte pack
path and its fall-backs: a row length that is not a multiple of the pack, and data that is not 16-byte
aligned. Compared with the float64 reference."""
import pytest
import torch

import diffalign.ops as ops
from diffalign.ops import reference as R
from ops_testing import DEVICES, assert_close, make, requires_ext

pytestmark = requires_ext

# (shape, misaligned): two full CUDA chunks plus a tail of 8 (float32 / float64, then 16-bit); exact
# chunks; a row length that is not a multiple of any pack size (scalar path); and a view starting one
# element into its buffer (unaligned; one full 16-bit chunk, two of float32)
CASES = [((3, 2 * 4096 + 8), False), ((2, 2 * 8192 + 8), False), ((2, 4, 64, 64), False), ((2, 3, 4099), False),
         ((2, 8, 32, 32), True)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _input(shape, dtype, device, seed, misaligned, requires_grad=False, scale=1.0):
    if not misaligned:
        return make(shape, dtype, device, seed=seed, requires_grad=requires_grad, scale=scale)
    n = torch.Size(shape).numel()
    buf = make((n + 1,), dtype, device, seed=seed, scale=scale)
    t = buf[1:].view(shape)  # contiguous, but its data pointer is one element past the allocation's start
    assert t.is_contiguous() and t.data_ptr() % 16 != 0
    return t.detach().requires_grad_(requires_grad)


def assert_matches_reference(fn_ext, fn_ref, inputs, dtype, what, grad_rtol=None):
    """Values and gradients (of a weighted sum) of the op against the reference on float64 copies.

    grad_rtol: a looser relative tolerance for values and gradients where the op's float32 accumulation is
    amplified by cancellation (the DPO/KTO coefficients depend on differences of per-row errors)."""
    out = fn_ext(*inputs)
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    expected = fn_ref(*ref_inputs)
    if grad_rtol is None or dtype == torch.float64:
        assert_close(out, expected, dtype, what)
    else:
        torch.testing.assert_close(out.double().cpu(), expected.double().cpu(), rtol=grad_rtol, atol=grad_rtol,
                                   msg=lambda m: f"{what}: {m}")
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64, device=out.device).view(out.shape)
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    got = torch.autograd.grad((out.double() * w).sum(), [inputs[i] for i in wanted])
    exp = torch.autograd.grad((expected * w).sum(), [ref_inputs[i] for i in wanted])
    for i, g, e in zip(wanted, got, exp):
        assert g.dtype == inputs[i].dtype and g.shape == inputs[i].shape
        # gradients are per element ~1/D: compare relative to their scale
        scale = e.abs().max().clamp_min(1e-30)
        if grad_rtol is None or dtype == torch.float64:
            assert_close(g.double() / scale, e / scale, dtype, f"{what}: grad of input {i}")
        else:
            torch.testing.assert_close(g.double().cpu() / scale.cpu(), e.cpu() / scale.cpu(), rtol=grad_rtol,
                                       atol=grad_rtol, msg=lambda m: f"{what}: grad of input {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,misaligned", CASES)
def test_logprob_and_kl_long_rows(device, dtype, shape, misaligned):
    x = _input(shape, dtype, device, 0, misaligned)
    mean = _input(shape, dtype, device, 1, misaligned, requires_grad=True)
    std = (torch.rand(shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5)
    std = std.to(device).requires_grad_()
    per_row = lambda s, like: s.view((-1,) + (1,) * (like.ndim - 1))  # noqa: E731
    assert_matches_reference(
        lambda a, b, s: ops.gaussian_logprob(a, b, s),
        lambda a, b, s: R.gaussian_logprob(a, b, per_row(s, a), "mean"), [x, mean, std], dtype, "logprob")
    assert_matches_reference(
        lambda a, b, s: ops.gaussian_kl(b, a, s),
        lambda a, b, s: R.gaussian_kl(b, a, per_row(s, a), None, "mean"), [x, mean, std], dtype, "kl")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,misaligned", CASES)
def test_losses_long_rows(device, dtype, shape, misaligned):
    if shape[0] % 2:
        shape = (shape[0] + 1,) + tuple(shape[1:])
    model = _input(shape, dtype, device, 3, misaligned, requires_grad=True)
    ref = _input(shape, dtype, device, 4, misaligned)
    target = _input(shape, dtype, device, 5, misaligned)
    beta = 50.0
    # h is a difference of per-row mean errors of ~2 each; over 8000+ elements float32 sums carry ~1e-6
    # relative error, which the difference amplifies ~100x
    grad_rtol = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}.get(dtype)
    assert_matches_reference(
        lambda m, r, t: ops.diffusion_dpo_loss(m, r, t, beta=beta),
        lambda m, r, t: R.diffusion_dpo_loss(m, r, t, beta, "sigmoid", "mean")[0],
        [model, ref, target], dtype, "dpo", grad_rtol)
    desirable = (torch.arange(shape[0]) % 2 == 0).to(device)
    assert_matches_reference(
        lambda m, r, t: ops.diffusion_kto_loss(m, r, t, desirable, beta=beta),
        lambda m, r, t: R.diffusion_kto_loss(m, r, t, desirable, beta, 1.0, 1.0, None)[0],
        [model, ref, target], dtype, "kto", grad_rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,misaligned", CASES)
def test_steps_long_rows(device, dtype, shape, misaligned):
    model = _input(shape, dtype, device, 6, misaligned, requires_grad=True)
    sample = _input(shape, dtype, device, 7, misaligned, requires_grad=True)
    prev = _input(shape, dtype, device, 8, misaligned, requires_grad=True)
    noise = _input(shape, dtype, device, 9, misaligned)
    b = shape[0]
    a_t = torch.linspace(0.3, 0.6, b, dtype=torch.float64).to(device)
    a_p = torch.linspace(0.5, 0.8, b, dtype=torch.float64).to(device)
    # scoring a given prev_sample: log-prob and mean, gradients to model output, sample and prev_sample
    assert_matches_reference(
        lambda m, s, p: ops.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, prev_sample=p).log_prob,
        lambda m, s, p: R.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, p, None, "epsilon")[1],
        [model, sample, prev], dtype, "ddim log_prob")
    assert_matches_reference(
        lambda m, s: ops.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, noise=noise).mean,
        lambda m, s: R.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, None, noise.double(), "epsilon")[2],
        [model, sample], dtype, "ddim mean")
    # drawing: prev_sample = mean + std * noise, stored in the sample's dtype
    out = ops.ddim_step_with_logprob(model, sample, a_t, a_p, 1.0, noise=noise)
    exp = R.ddim_step_with_logprob(model.detach().double(), sample.detach().double(), a_t, a_p, 1.0, None,
                                   noise.double(), "epsilon")
    assert_close(out.prev_sample, exp[0], dtype, "ddim prev_sample")
    sigma = torch.linspace(0.9, 0.4, b, dtype=torch.float64).to(device)
    assert_matches_reference(
        lambda m, s, p: ops.flow_sde_step_with_logprob(m, s, sigma, sigma - 0.05, prev_sample=p).log_prob,
        lambda m, s, p: R.flow_sde_step_with_logprob(m, s, sigma, sigma - 0.05, 0.7, p, None)[1],
        [model, sample, prev], dtype, "flow log_prob")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_results_do_not_depend_on_thread_count(dtype):
    """The CPU kernels sum each row in fixed chunks and fixed lanes, then combine in a fixed order: one
    thread and two give bit-identical values and gradients (rows long enough for several tasks)."""
    shape = (4, 3 * 16384 + 37)
    x = _input(shape, dtype, "cpu", 10, False)
    mean = _input(shape, dtype, "cpu", 11, False, requires_grad=True)
    std = torch.linspace(0.5, 1.5, shape[0], dtype=torch.float64).requires_grad_()
    target = _input(shape, dtype, "cpu", 12, False)

    def run():
        outs = [ops.gaussian_logprob(x, mean, std), ops.gaussian_kl(mean, x, std),
                ops.diffusion_dpo_loss(mean, x, target, beta=50.0)]
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [mean, std])
        return [o.detach() for o in outs] + list(grads)

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("wanted", [(True, False), (False, True), (True, True)])
def test_gradients_for_each_subset_of_inputs(device, dtype, wanted):
    """Each op's backward writes only the gradients asked for (a nullable output each); the CPU backend
    compiles one loop per combination of present outputs (and of present incoming gradients for the
    steps). Every combination must match the float64 reference, on rows of several chunks plus a tail."""
    shape = (2, 16384 + 40)
    a = _input(shape, dtype, device, 20, False, requires_grad=wanted[0])
    b = _input(shape, dtype, device, 21, False, requires_grad=wanted[1])
    std = torch.tensor([0.7, 1.3], dtype=torch.float64, device=device)
    per_row = std.view(2, 1)
    assert_matches_reference(lambda x, m: ops.gaussian_logprob(x, m, std),
                             lambda x, m: R.gaussian_logprob(x, m, per_row, "mean"), [a, b], dtype, "logprob")
    assert_matches_reference(lambda x, m: ops.gaussian_kl(x, m, std),
                             lambda x, m: R.gaussian_kl(x, m, per_row, None, "mean"), [a, b], dtype, "kl")
    a_t = torch.tensor([0.4, 0.5], dtype=torch.float64, device=device)
    a_p = torch.tensor([0.6, 0.7], dtype=torch.float64, device=device)
    prev = _input(shape, dtype, device, 22, False, requires_grad=wanted[0])
    # scoring: gradients of the log-prob (and of the mean when wanted[1]) to model output, sample, prev
    assert_matches_reference(
        lambda m, s, p: (lambda o: o.log_prob + (o.mean.double().mean(dim=1) if wanted[1] else 0))(
            ops.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, prev_sample=p)),
        lambda m, s, p: (lambda o: o[1] + (o[2].mean(dim=1) if wanted[1] else 0))(
            R.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, p, None, "epsilon")),
        [a, b, prev], dtype, "ddim scoring")
    # drawing: gradients through prev_sample and / or the mean to model output and sample
    noise = _input(shape, dtype, device, 23, False)
    assert_matches_reference(
        lambda m, s: (lambda o: (o.prev_sample.double().mean(dim=1) if wanted[0] else 0)
                      + (o.mean.double().mean(dim=1) if wanted[1] else 0))(
            ops.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, noise=noise)),
        lambda m, s: (lambda o: (o[0].mean(dim=1) if wanted[0] else 0) + (o[2].mean(dim=1) if wanted[1] else 0))(
            R.ddim_step_with_logprob(m, s, a_t, a_p, 1.0, None, noise.double(), "epsilon")),
        [a, b], dtype, "ddim drawing")
