"""Masked ops (keyword ``mask``): the reference against float64 formulas written here, the compiled ops
against the reference (values and gradients, CPU and, where present, CUDA), opcheck and gradcheck of the
masked schemas, padded batches against their unpadded samples, all-zero rows, and bad masks."""
import math

import pytest
import torch

import diffalign.ops as ops
from diffalign.ops import reference as R

from ops_testing import DEVICES, assert_close, make, requires_ext, std_of

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPE = (3, 4, 5)


def _mask(kind, shape, device, seed=3):
    """Masks of each accepted form for x of `shape` (B, N, F); row 1 is all zero in the "zero_row" kind."""
    g = torch.Generator().manual_seed(seed)
    b, n = shape[0], shape[1]
    if kind == "bool_full":
        m = torch.rand(shape, generator=g) > 0.4
    elif kind == "float_full":
        m = torch.rand(shape, generator=g, dtype=torch.float64) * 2.0
        m[m < 0.5] = 0.0
    elif kind == "bool_tokens":  # (B, N, 1): one flag per token of F features
        m = torch.rand((b, n, 1), generator=g) > 0.3
    elif kind == "float_short":  # (B, N): trailing dims count as 1
        m = torch.rand((b, n), generator=g, dtype=torch.float64) + 0.25
    elif kind == "per_row":  # (B,): a weight per sample
        m = torch.tensor([1.0, 0.5, 2.0][:b], dtype=torch.float64)
    elif kind == "zero_row":
        m = torch.rand(shape, generator=g) > 0.4
        m[1] = False
    else:
        raise ValueError(kind)
    return m.to(device)


MASKS = ["bool_full", "float_full", "bool_tokens", "float_short", "per_row", "zero_row"]


def _full(mask, like):
    """The mask as float64 of like's shape (trailing dims added, broadcast)."""
    return R.expand_mask(mask, like.double()).double()


def _weighted(values, m, reduction):
    """Independent float64 reduction, element by element: sum of m*l over m != 0, and / sum m for "mean"
    (0 for a row whose weights sum to 0)."""
    out = []
    for b in range(values.shape[0]):
        v, w = values[b].reshape(-1).tolist(), m[b].reshape(-1).tolist()
        total = math.fsum(wi * vi for wi, vi in zip(w, v) if wi != 0)
        weight = math.fsum(w)
        out.append(total if reduction == "sum" else (total / weight if weight > 0 else 0.0))
    return torch.tensor(out, dtype=torch.float64)


def _grads(out, inputs, seed=11):
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.device)
    return torch.autograd.grad((out.double() * w).sum(), [t for t in inputs if t.requires_grad])


# ----------------------------------------------------------------- reference vs float64 formulas ----
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_masked_logprob_and_kl_match_float64_formulas(kind, reduction):
    x, mean = make(SHAPE, torch.float64, "cpu"), make(SHAPE, torch.float64, "cpu", seed=1)
    std, ref_std = std_of("full", SHAPE, "cpu"), std_of("row", SHAPE, "cpu", seed=7)
    mask = _mask(kind, SHAPE, "cpu")
    m = _full(mask, x)
    lp = torch.distributions.Normal(mean, std).log_prob(x)
    torch.testing.assert_close(R.gaussian_logprob(x, mean, std, reduction, mask), _weighted(lp, m, reduction))
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(x, std),
                                           torch.distributions.Normal(mean, ref_std.view(-1, 1, 1)))
    torch.testing.assert_close(R.gaussian_kl(x, mean, std, ref_std, reduction, mask), _weighted(kl, m, reduction))


def test_reference_masked_losses_and_steps_match_float64_formulas():
    mp, rp, t = (make((4, 3, 5), torch.float64, "cpu", seed=s) for s in range(3))
    mask = _mask("float_full", (4, 3, 5), "cpu")
    m = mask.double()
    e = lambda p: (m * (p - t) ** 2).sum(dim=(1, 2)) / m.sum(dim=(1, 2))
    em, er = e(mp), e(rp)
    beta = 7.0
    inside = -0.5 * beta * ((em[:2] - em[2:]) - (er[:2] - er[2:]))
    expected = torch.tensor([-math.log(1 / (1 + math.exp(-float(v)))) for v in inside], dtype=torch.float64).mean()
    loss, margin = R.diffusion_dpo_loss(mp, rp, t, beta, "sigmoid", "mean", mask)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(margin, inside)
    des = torch.tensor([True, False, True, False])
    g = er - em
    z = max(0.0, float(g.mean()))
    per = [(1 - 1 / (1 + math.exp(-(1 if d else -1) * 3.0 * (float(gi) - z)))) for gi, d in zip(g, des)]
    loss, zz = R.diffusion_kto_loss(mp, rp, t, des, 3.0, 1.0, 1.0, None, mask)
    assert abs(float(loss) - sum(per) / 4) < 1e-12 and abs(float(zz) - z) < 1e-12
    # a scored step: only the log-prob is weighted; prev - mean ~ N(0, std^2)
    a_t, a_p = torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    prev, lp, mean, std = R.ddim_step_with_logprob(mp, rp, a_t, a_p, 1.0, t, None, "epsilon", mask)
    _, _, mean_unmasked, _ = R.ddim_step_with_logprob(mp, rp, a_t, a_p, 1.0, t, None, "epsilon")
    torch.testing.assert_close(mean, mean_unmasked)
    elem = torch.distributions.Normal(mean, std).log_prob(t)
    torch.testing.assert_close(lp, _weighted(elem, m, "mean"))


# -------------------------------------------------------------------- compiled vs reference ----
@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("layout", ["row", "full"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_masked_logprob_and_kl_match_reference(device, dtype, kind, layout, reduction):
    x = make(SHAPE, dtype, device, noncontig=True, requires_grad=True)
    mean = make(SHAPE, dtype, device, seed=1, requires_grad=True)
    std = std_of(layout, SHAPE, device).requires_grad_()
    ref_std = std_of("row", SHAPE, device, seed=8).requires_grad_()
    mask = _mask(kind, SHAPE, device)
    cases = ((ops.gaussian_logprob, R.gaussian_logprob, (x, mean, std), {}),
             (ops.gaussian_kl, R.gaussian_kl, (x, mean, std), dict(ref_std=None)),
             (ops.gaussian_kl, R.gaussian_kl, (x, mean, std, ref_std), {}))
    for fused, ref, args, kw in cases:
        out = fused(*args, **kw, reduction=reduction, mask=mask)
        expected = ref(*args, **kw, reduction=reduction, mask=mask)
        assert_close(out, expected, dtype, f"{fused.__name__} value")
        if kind == "zero_row" and reduction == "mean":
            assert float(out[1].detach()) == 0.0
        for g, ge in zip(_grads(out, args), _grads(expected, args)):
            assert torch.isfinite(g).all()
            assert_close(g, ge, dtype if g.dtype == dtype else torch.float32, f"{fused.__name__} grad")


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool_full", "float_short", "zero_row"])
def test_masked_dpo_and_kto_match_reference(device, dtype, kind):
    shape = (6, 4, 5)
    mp = make(shape, dtype, device, requires_grad=True)
    rp = (mp.detach().double() + 0.05 * make(shape, torch.float64, device, seed=3)).to(dtype)
    t = make(shape, dtype, device, seed=4)
    mask = _mask(kind, shape, device)
    for loss_type, reduction in (("sigmoid", "mean"), ("ipo", "none"), ("hinge", "mean")):
        beta = 50.0 if loss_type != "ipo" else 0.5
        got = ops.diffusion_dpo_loss(mp, rp, t, beta, loss_type, reduction, return_stats=True, mask=mask)
        exp_loss, exp_margin = R.diffusion_dpo_loss(mp, rp, t, beta, loss_type, reduction, mask)
        assert_close(got.loss, exp_loss, dtype, "dpo loss")
        assert_close(got.reward_margin, exp_margin, dtype, "dpo margin")
        assert_close(_grads(got.loss, [mp])[0], _grads(exp_loss, [mp])[0], dtype, "dpo grad")
    des = torch.tensor([True, False, True, True, False, False], device=device)
    for kl_ref in (None, torch.tensor(0.01, device=device)):
        got = ops.diffusion_kto_loss(mp, rp, t, des, 20.0, 1.0, 1.5, kl_ref, return_stats=True, mask=mask)
        exp_loss, exp_z = R.diffusion_kto_loss(mp, rp, t, des, 20.0, 1.0, 1.5, kl_ref, mask)
        assert_close(got.loss, exp_loss, dtype, "kto loss")
        assert_close(got.kl_ref, exp_z, dtype, "kto z")
        assert_close(_grads(got.loss, [mp])[0], _grads(exp_loss, [mp])[0], dtype, "kto grad")


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool_full", "float_full", "bool_tokens", "zero_row"])
def test_masked_steps_match_reference(device, dtype, kind):
    eps = make(SHAPE, dtype, device, requires_grad=True)
    x = make(SHAPE, dtype, device, seed=1, requires_grad=True)
    noise = make(SHAPE, dtype, device, seed=2)
    mask = _mask(kind, SHAPE, device)
    a_t = torch.linspace(0.2, 0.7, 3, dtype=torch.float64, device=device)
    a_p = a_t + 0.25
    sigma, sigma_next = torch.tensor([1.0, 0.6, 0.3], device=device), torch.tensor([0.9, 0.4, 0.0], device=device)
    steps = (
        (lambda **kw: ops.ddim_step_with_logprob(eps, x, a_t, a_p, 0.9, prediction_type="v_prediction", **kw),
         lambda prev, noise, mask: R.ddim_step_with_logprob(eps, x, a_t, a_p, 0.9, prev, noise, "v_prediction", mask)),
        (lambda **kw: ops.flow_sde_step_with_logprob(eps, x, sigma, sigma_next, **kw),
         lambda prev, noise, mask: R.flow_sde_step_with_logprob(eps, x, sigma, sigma_next, 0.7, prev, noise, mask)),
    )
    for fused, ref in steps:
        got, exp = fused(noise=noise, mask=mask), ref(None, noise, mask)
        unmasked = fused(noise=noise)
        for name, g, e in zip(got._fields, got, exp):
            assert_close(g, e, dtype, f"drawn {name}")
        # the mask weights the log-prob only
        assert torch.equal(got.prev_sample, unmasked.prev_sample) and torch.equal(got.mean, unmasked.mean)
        prev = exp[0].detach().clone().requires_grad_()
        got, exp = fused(prev_sample=prev, mask=mask), ref(prev, None, mask)
        assert_close(got.log_prob, exp[1], dtype, "scored log-prob")
        for g, e in zip(_grads(got.log_prob, [eps, x, prev]), _grads(exp[1], [eps, x, prev])):
            assert torch.isfinite(g).all()
            assert_close(g, e, dtype, "grad of the scored log-prob")
        # gradients through mean and the drawn sample are not masked
        got = fused(noise=noise, mask=mask)
        g1 = _grads(got.prev_sample.double().sum(dim=(1, 2)) + got.mean.double().pow(2).sum(dim=(1, 2)), [eps, x])
        g0 = _grads(unmasked.prev_sample.double().sum(dim=(1, 2)) + unmasked.mean.double().pow(2).sum(dim=(1, 2)),
                    [eps, x])
        for a, b in zip(g1, g0):
            assert torch.equal(a, b)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_masked_rows_longer_than_a_chunk(device):
    """Rows spanning several CPU/CUDA chunks: the mask's row sums are combined across chunks too."""
    x, mean = make((2, 70000), torch.float32, device), make((2, 70000), torch.float32, device, seed=1)
    mp = make((2, 70000), torch.float32, device, seed=2)
    mask = torch.arange(70000, device=device).expand(2, -1) < torch.tensor([[50000], [1234]], device=device)
    std = torch.tensor([0.9, 1.1], device=device)
    assert_close(ops.gaussian_logprob(x, mean, std, mask=mask), R.gaussian_logprob(x, mean, std, mask=mask),
                 torch.float32)
    assert_close(ops.diffusion_dpo_loss(mp, mean, x, 10.0, reduction="none", mask=mask),
                 R.diffusion_dpo_loss(mp, mean, x, 10.0, "sigmoid", "none", mask)[0], torch.float32)


# --------------------------------------------------------------------------------- registration ----
def _masked_op_samples(device="cpu"):
    shape = (3, 2, 4)
    x = make(shape, torch.float32, device, requires_grad=True)
    mean = make(shape, torch.float32, device, seed=1, requires_grad=True)
    s = (torch.rand(3, device=device) + 0.5).requires_grad_()
    s_full = (torch.rand(shape, device=device) + 0.5).requires_grad_()
    bmask = _mask("bool_full", shape, device)
    fmask = _mask("float_short", shape, device).float()
    pairs = make((4, 3), torch.float32, device, seed=2, requires_grad=True)
    pref, ptgt = make((4, 3), torch.float32, device, seed=3), make((4, 3), torch.float32, device, seed=4)
    pmask = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 1.0, 1.0]], device=device)
    des = torch.tensor([True, False, True, False], device=device)
    noise = make(shape, torch.float32, device, seed=5)
    prev = make(shape, torch.float32, device, seed=6, requires_grad=True)
    a_t = torch.tensor([0.3, 0.5, 0.7], device=device)
    d = torch.ops.diffalign
    return [
        (d.gaussian_logprob.default, (x, mean, s, 0, bmask)),
        (d.gaussian_logprob.default, (x, mean, s_full, 1, fmask)),
        (d.gaussian_kl.default, (x, mean, s, None, 0, fmask)),
        (d.gaussian_kl.default, (x, mean, s, s_full, 0, bmask)),
        (d.diffusion_dpo_loss.default, (pairs, pref, ptgt, 3.0, 0, 0, pmask)),
        (d.diffusion_kto_loss.default, (pairs, pref, ptgt, des, 3.0, 1.0, 1.0, None, pmask)),
        (d.gaussian_step.default, (x, mean, a_t, a_t * 0.5, 0.7, prev, None, 3, bmask)),
        (d.ddim_step_with_logprob.default, (x, mean, a_t, a_t + 0.2, 1.0, prev, None, 1, fmask)),
        (d.flow_sde_step_with_logprob.default, (x, mean, a_t, a_t * 0.5, 0.7, None, noise, bmask)),
    ]


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(9))
def test_opcheck_masked(device, case):
    op, args = _masked_op_samples(device)[case]
    torch.library.opcheck(op, args)


@requires_ext
def test_gradcheck_float64_with_masks():
    shape = (3, 2, 4)
    d = lambda seed, rg=True: make(shape, torch.float64, "cpu", seed=seed, requires_grad=rg)
    x, mean, prev = d(0), d(1), d(8)
    s_row = std_of("row", shape, "cpu").requires_grad_()
    s_full = std_of("full", shape, "cpu").requires_grad_()
    mask = _mask("float_full", shape, "cpu")
    zero_row = _mask("zero_row", shape, "cpu")
    pairs = make((4, 2, 3), torch.float64, "cpu", seed=4, requires_grad=True)
    pref, ptgt = make((4, 2, 3), torch.float64, "cpu", seed=5), make((4, 2, 3), torch.float64, "cpu", seed=6)
    pmask = _mask("bool_full", (4, 2, 3), "cpu")
    des = torch.tensor([True, False, False, True])
    a_t = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    cases = [
        (lambda a, b, s: ops.gaussian_logprob(a, b, s, mask=mask), (x, mean, s_row)),
        (lambda a, b, s: ops.gaussian_logprob(a, b, s, "sum", mask=zero_row), (x, mean, s_full)),
        (lambda a, b, s, s2: ops.gaussian_kl(a, b, s, s2, mask=mask), (x, mean, s_row, s_full)),
        (lambda a, b, s: ops.gaussian_kl(a, b, s, mask=zero_row), (x, mean, s_row)),
        (lambda m: ops.diffusion_dpo_loss(m, pref, ptgt, beta=2.0, mask=pmask), (pairs,)),
        (lambda m: ops.diffusion_kto_loss(m, pref, ptgt, des, beta=4.0, mask=pmask), (pairs,)),
        (lambda m, xx, p: ops.ddim_step_with_logprob(m, xx, a_t, a_t + 0.2, 0.7, prev_sample=p, mask=mask).log_prob,
         (mean, x, prev)),
        (lambda m, xx, p: ops.flow_sde_step_with_logprob(m, xx, torch.tensor(0.8, dtype=torch.float64),
                                                         torch.tensor(0.5, dtype=torch.float64), prev_sample=p,
                                                         mask=zero_row).log_prob, (mean, x, prev)),
    ]
    for i, (fn, inputs) in enumerate(cases):
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5), i


@requires_ext
def test_torch_compile_fullgraph_with_mask():
    x, mean = make(SHAPE, torch.float32, "cpu"), make(SHAPE, torch.float32, "cpu", seed=1, requires_grad=True)
    mask = _mask("bool_tokens", SHAPE, "cpu")
    fn = lambda a, b: ops.gaussian_logprob(a, b, torch.tensor(0.8), mask=mask)
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)(x, mean)
    torch.testing.assert_close(got, fn(x, mean))
    torch.testing.assert_close(torch.autograd.grad(got.sum(), mean)[0], torch.autograd.grad(fn(x, mean).sum(), mean)[0])


# --------------------------------------------------------------- padded batch vs unpadded samples ----
LENGTHS = [5, 2, 7, 3]


def _padded(lengths, features, dtype, device, seed, garbage):
    """(B, max L, F) rows whose positions past each true length hold garbage, and the (B, max L) mask."""
    b, lmax = len(lengths), max(lengths)
    t = make((b, lmax, features), torch.float64, device, seed=seed)
    mask = torch.arange(lmax, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    t = torch.where(mask[..., None], t, torch.full_like(t, garbage)).to(dtype)
    return t, mask


BACKENDS = ["compiled", "reference"]


def _backend(name, monkeypatch):
    if name == "compiled" and not ops.extension_available():
        pytest.skip("extension not built")
    if name == "reference":
        monkeypatch.setattr(ops, "_use_extension", lambda: False)


TIGHT = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_logprob_and_kl_equal_each_unpadded_sample(backend, device, dtype, monkeypatch):
    _backend(backend, monkeypatch)
    f = 3
    x, mask = _padded(LENGTHS, f, dtype, device, 0, garbage=1e30)
    mean, _ = _padded(LENGTHS, f, dtype, device, 1, garbage=-7.0)
    x.requires_grad_()
    mean.requires_grad_()
    std = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=dtype, device=device)
    for reduction in ("mean", "sum"):
        for fn in (lambda a, b, r, **kw: ops.gaussian_logprob(a, b, std[kw.pop("rows")], r, **kw),
                   lambda a, b, r, **kw: ops.gaussian_kl(a, b, std[kw.pop("rows")], None, r, **kw)):
            batch = fn(x, mean, reduction, rows=slice(None), mask=mask)
            gx, gm = torch.autograd.grad(batch.sum(), [x, mean])
            for i, n in enumerate(LENGTHS):
                xi, mi = x[i:i + 1, :n].detach().requires_grad_(), mean[i:i + 1, :n].detach().requires_grad_()
                alone = fn(xi, mi, reduction, rows=slice(i, i + 1))
                torch.testing.assert_close(batch[i:i + 1], alone, **TIGHT[dtype])
                gxi, gmi = torch.autograd.grad(alone.sum(), [xi, mi])
                torch.testing.assert_close(gx[i:i + 1, :n], gxi, **TIGHT[dtype])
                torch.testing.assert_close(gm[i:i + 1, :n], gmi, **TIGHT[dtype])
                assert torch.equal(gx[i, n:], torch.zeros_like(gx[i, n:]))  # padding gets no gradient


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_steps_equal_each_unpadded_sample(backend, device, dtype, monkeypatch):
    _backend(backend, monkeypatch)
    f = 3
    eps, mask = _padded(LENGTHS, f, dtype, device, 0, garbage=3e4)
    x, _ = _padded(LENGTHS, f, dtype, device, 1, garbage=-5e4)
    noise, _ = _padded(LENGTHS, f, dtype, device, 2, garbage=9.0)
    a_t = torch.tensor([0.3, 0.4, 0.5, 0.6], dtype=torch.float64, device=device)
    a_p = a_t + 0.2
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.3], device=device)
    sigma_next = sigma - 0.2
    steps = (lambda e, xx, rows, **kw: ops.ddim_step_with_logprob(e, xx, a_t[rows], a_p[rows], 1.0, **kw),
             lambda e, xx, rows, **kw: ops.flow_sde_step_with_logprob(e, xx, sigma[rows], sigma_next[rows], **kw))
    for step in steps:
        drawn = step(eps, x, slice(None), noise=noise, mask=mask)
        prev = drawn.prev_sample.detach().clone().requires_grad_()
        e = eps.detach().clone().requires_grad_()
        scored = step(e, x, slice(None), prev_sample=prev, mask=mask)
        ge, gp = torch.autograd.grad(scored.log_prob.sum(), [e, prev])
        for i, n in enumerate(LENGTHS):
            rows = slice(i, i + 1)
            alone = step(eps[rows, :n], x[rows, :n], rows, noise=noise[rows, :n])
            torch.testing.assert_close(drawn.log_prob[rows], alone.log_prob, **TIGHT[dtype])
            torch.testing.assert_close(drawn.prev_sample[rows, :n], alone.prev_sample, **TIGHT[dtype])
            pi = prev[rows, :n].detach().clone().requires_grad_()
            ei = eps[rows, :n].detach().clone().requires_grad_()
            scored_i = step(ei, x[rows, :n], rows, prev_sample=pi)
            torch.testing.assert_close(scored.log_prob[rows], scored_i.log_prob, **TIGHT[dtype])
            gei, gpi = torch.autograd.grad(scored_i.log_prob.sum(), [ei, pi])
            torch.testing.assert_close(ge[rows, :n], gei, **TIGHT[dtype])
            torch.testing.assert_close(gp[rows, :n], gpi, **TIGHT[dtype])
            assert torch.equal(gp[i, n:], torch.zeros_like(gp[i, n:]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_dpo_and_kto_equal_each_unpadded_sample(backend, device, dtype, monkeypatch):
    _backend(backend, monkeypatch)
    f = 3
    pair_lengths = [5, 2, 7]  # winner and loser of a pair share a length (one prompt), pairs differ
    lengths = pair_lengths + pair_lengths
    mp, mask = _padded(lengths, f, dtype, device, 0, garbage=1e20)
    rp, _ = _padded(lengths, f, dtype, device, 1, garbage=-3.0)
    tg, _ = _padded(lengths, f, dtype, device, 2, garbage=float("nan"))
    mp.requires_grad_()
    p = len(pair_lengths)
    batch = ops.diffusion_dpo_loss(mp, rp, tg, 30.0, reduction="none", mask=mask)
    (gmp,) = torch.autograd.grad(batch.sum(), [mp])
    for i, n in enumerate(pair_lengths):
        idx = [i, i + p]
        mpi = mp[idx, :n].detach().requires_grad_()
        alone = ops.diffusion_dpo_loss(mpi, rp[idx, :n], tg[idx, :n], 30.0, reduction="none")
        torch.testing.assert_close(batch[i:i + 1], alone, **TIGHT[dtype])
        (gi,) = torch.autograd.grad(alone.sum(), [mpi])
        torch.testing.assert_close(gmp[idx, :n], gi, **TIGHT[dtype])
    assert torch.isfinite(gmp).all()
    # KTO's loss is the mean of per-sample terms around a shared reference point z: fix z, compare each term
    des = torch.tensor([True, False, True, False, True, True], device=device)
    z = torch.tensor(0.05, dtype=dtype, device=device)
    batch = ops.diffusion_kto_loss(mp, rp, tg, des, 40.0, 1.0, 1.5, kl_ref=z, mask=mask)
    (gmp,) = torch.autograd.grad(batch, [mp])
    total = 0.0
    for i, n in enumerate(lengths):
        mpi = mp[i:i + 1, :n].detach().requires_grad_()
        alone = ops.diffusion_kto_loss(mpi, rp[i:i + 1, :n], tg[i:i + 1, :n], des[i:i + 1], 40.0, 1.0, 1.5, kl_ref=z)
        total = total + alone / len(lengths)
        (gi,) = torch.autograd.grad(alone / len(lengths), [mpi])
        torch.testing.assert_close(gmp[i:i + 1, :n], gi, **TIGHT[dtype])
    torch.testing.assert_close(batch, total, **TIGHT[dtype])


# ----------------------------------------------------------------------------------- bad masks ----
_x = torch.randn(2, 3, 4)
BAD = [
    (lambda: ops.gaussian_logprob(_x, _x, torch.tensor(1.0), mask=torch.ones(3, 3, 4)), "mask has shape"),
    (lambda: ops.gaussian_logprob(_x, _x, torch.tensor(1.0), mask=torch.ones(2, 2, 4)), "mask has shape"),
    (lambda: ops.gaussian_logprob(_x, _x, torch.tensor(1.0), mask=torch.ones(2, 3, 4, 1)), "mask has shape"),
    (lambda: ops.gaussian_logprob(_x, _x, torch.tensor(1.0), mask=torch.ones(2, 3, 4, dtype=torch.int64)),
     "mask must be a bool or floating-point"),
    (lambda: ops.gaussian_kl(_x, _x, torch.tensor(1.0), mask=torch.ones(1, 3)), "mask has shape"),
    (lambda: ops.diffusion_dpo_loss(_x, _x, _x, mask=torch.ones(4)), "mask has shape"),
    (lambda: ops.diffusion_kto_loss(_x, _x, _x, torch.ones(2, dtype=torch.bool), mask=torch.ones(2, 5)),
     "mask has shape"),
    (lambda: ops.ddim_step_with_logprob(_x, _x, torch.tensor(.5), torch.tensor(.6), mask=torch.ones(3)),
     "mask has shape"),
    (lambda: ops.flow_sde_step_with_logprob(_x, _x, torch.tensor(.5), torch.tensor(.4), mask=torch.ones(2, 4)),
     "mask has shape"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("backend", ["compiled", "reference", "compiled-python-checks"])
def test_bad_mask_raises_value_error(case, backend, monkeypatch):
    call, message = BAD[case]
    if backend.startswith("compiled") and not ops.extension_available():
        pytest.skip("extension not built")
    if backend == "reference":
        monkeypatch.setattr(ops, "_use_extension", lambda: False)
    if backend == "compiled-python-checks":
        class Unreachable:
            def __getattr__(self, name):
                raise AssertionError(f"bad input reached the compiled op {name}")
        monkeypatch.setattr(ops._checks, "PYTHON_CHECKS", True)
        monkeypatch.setattr(ops, "_OPS", Unreachable())
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("python_checks", [True, False])
def test_negative_mask_weights_are_rejected_where_values_are_checked(python_checks, monkeypatch):
    """Negative weights are found by the Python checks (the reference backend, or the compiled ops where
    _checks.PYTHON_CHECKS is on); the compiled ops alone do not read the mask's values (a pass per call)."""
    monkeypatch.setattr(ops._checks, "PYTHON_CHECKS", python_checks)
    if not python_checks:
        monkeypatch.setattr(ops, "_use_extension", lambda: False)  # the reference always checks in Python
    with pytest.raises(ValueError, match=r"mask must be >= 0"):
        ops.gaussian_logprob(_x, _x, torch.tensor(1.0), mask=torch.tensor([[1.0], [-0.5]]))


@requires_ext
def test_direct_op_calls_check_the_mask_in_cpp():
    d = torch.ops.diffalign
    with pytest.raises(ValueError, match="mask has shape"):
        d.gaussian_logprob(_x, _x, torch.ones(()), 0, torch.ones(3))
    with pytest.raises(ValueError, match="mask has shape"):
        d.diffusion_dpo_loss(_x.requires_grad_(False), _x, _x, 1.0, 0, 0, torch.ones(2, 4))


# ------------------------------------------------------- compact masks (read in place on the CPU) ----
# A (B, N, 1) mask over (B, N, F) is read as one weight per run of F elements, a bool mask of x's shape
# as bytes; both must give exactly what the same 0/1 weights of x's shape and dtype give (the CPU loops
# assign elements to the same partial sums), and match float64 formulas. Shapes: F a multiple of 16 (one
# weight per lane group), F >= 16 but not (run by run), F < 16 (expanded), rows longer than a chunk with
# runs crossing chunk boundaries (48 does not divide 16384).
COMPACT_SHAPES = [(3, 4, 32), (3, 4, 20), (3, 4, 5), (2, 400, 48)]


def _compact_forms(shape, device, seed=5):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(shape[:-1] + (1,), generator=g) > 0.3
    pos[1] = False  # an all-zero row
    full = torch.rand(shape, generator=g) > 0.4
    return {"positions_bool": (pos, pos.expand(shape)), "positions_float": (pos.double(), pos.expand(shape)),
            "per_row": (pos[:, 0, 0], pos[:, :1, :1].expand(shape)), "bool_full": (full, full)}


def _all_masked_outputs(shape, dtype, mask, device):
    """Every op's outputs and gradients under `mask` (fixed inputs), as one flat list."""
    x = make(shape, dtype, device, requires_grad=True)
    mean = make(shape, dtype, device, seed=1, requires_grad=True)
    tgt = make(shape, dtype, device, seed=2)
    std = (torch.rand(shape[0], generator=torch.Generator().manual_seed(3)) + 0.5).to(device).requires_grad_()
    a_t = torch.linspace(0.3, 0.6, shape[0], device=device)
    des = torch.arange(shape[0], device=device) % 2 == 0
    b2 = shape[0] - shape[0] % 2
    outs = []
    for red in ("mean", "sum"):
        for out in (ops.gaussian_logprob(x, mean, std, red, mask=mask), ops.gaussian_kl(x, mean, std, reduction=red, mask=mask)):
            outs += [out, *torch.autograd.grad(out.sum(), [x, mean, std])]
    loss = ops.diffusion_dpo_loss(x[:b2], mean[:b2].detach(), tgt[:b2], 10.0, reduction="none", mask=mask[:b2])
    outs += [loss, *torch.autograd.grad(loss.sum(), [x])]
    loss = ops.diffusion_kto_loss(x, mean.detach(), tgt, des, 3.0, mask=mask)
    outs += [loss, *torch.autograd.grad(loss, [x])]
    step = ops.ddim_step_with_logprob(x, mean, a_t, a_t + 0.2, 1.0, prev_sample=tgt, mask=mask)
    outs += [step.log_prob, step.mean, *torch.autograd.grad(step.log_prob.sum() + step.mean.sum(), [x, mean])]
    return [o.detach() for o in outs]


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", COMPACT_SHAPES)
def test_compact_masks_give_the_bits_of_the_full_float_mask(dtype, shape):
    for name, (compact, full) in _compact_forms(shape, "cpu").items():
        got = _all_masked_outputs(shape, dtype, compact, "cpu")
        want = _all_masked_outputs(shape, dtype, full.to(dtype).contiguous(), "cpu")
        for i, (g, w) in enumerate(zip(got, want)):
            if shape[-1] % 16 == 0:  # whole lane groups: the same partial sums
                assert torch.equal(g, w), f"{name} {shape} output {i}"
            else:  # run by run, or a row's last partial lane group: partial sums in another order
                assert_close(g, w, dtype, f"{name} {shape} output {i}")


@requires_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", COMPACT_SHAPES)
def test_compact_masks_match_float64_formulas(dtype, shape):
    x, mean = make(shape, dtype, "cpu"), make(shape, dtype, "cpu", seed=1)
    std = torch.rand(shape[0], generator=torch.Generator().manual_seed(3)) + 0.5
    lp = torch.distributions.Normal(mean.double(), std.double().view(-1, 1, 1)).log_prob(x.double())
    kl = (x.double() - mean.double()) ** 2 / (2 * std.double().view(-1, 1, 1) ** 2)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for name, (compact, full) in _compact_forms(shape, "cpu").items():
        m = full.double()
        for red in ("mean", "sum"):
            assert_close(ops.gaussian_logprob(x, mean, std, red, mask=compact), _weighted(lp, m, red).to(acc), dtype,
                         f"logprob {name} {red}")
            assert_close(ops.gaussian_kl(x, mean, std, reduction=red, mask=compact), _weighted(kl, m, red).to(acc),
                         dtype, f"kl {name} {red}")


@requires_ext
def test_gradcheck_float64_with_compact_masks():
    shape = (3, 2, 16)
    d = lambda seed: make(shape, torch.float64, "cpu", seed=seed, requires_grad=True)
    x, mean, prev = d(0), d(1), d(8)
    s_row = std_of("row", shape, "cpu").requires_grad_()
    tgt = make(shape, torch.float64, "cpu", seed=2)
    pos = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]], [[0.0], [0.0]]], dtype=torch.float64)
    a_t = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    for mask in (pos, pos > 0, torch.rand(shape, generator=torch.Generator().manual_seed(4)) > 0.5):
        for red in ("mean", "sum"):
            assert torch.autograd.gradcheck(lambda a, b, s: ops.gaussian_logprob(a, b, s, red, mask=mask),
                                            (x, mean, s_row))
            assert torch.autograd.gradcheck(lambda a, b, s: ops.gaussian_kl(a, b, s, reduction=red, mask=mask),
                                            (x, mean, s_row))
        assert torch.autograd.gradcheck(
            lambda a: ops.diffusion_kto_loss(a, mean.detach(), tgt, torch.tensor([True, False, True]), 3.0,
                                             kl_ref=torch.tensor(0.1, dtype=torch.float64), mask=mask),
            (x,))
        assert torch.autograd.gradcheck(
            lambda a, p: ops.ddim_step_with_logprob(a, mean.detach(), a_t, a_t + 0.2, 1.0, prev_sample=p,
                                                    mask=mask).log_prob, (x, prev))


@requires_ext
@pytest.mark.parametrize("case", range(4))
def test_opcheck_compact_masks(case):
    shape = (4, 3, 16)
    x = make(shape, torch.float32, "cpu", requires_grad=True)
    mean = make(shape, torch.float32, "cpu", seed=1, requires_grad=True)
    s = (torch.rand(4) + 0.5).requires_grad_()
    pos = torch.tensor([[True], [False], [True]]).expand(4, 3, 1).contiguous()
    full = _mask("bool_full", shape, "cpu")
    prev = make(shape, torch.float32, "cpu", seed=6, requires_grad=True)
    a_t = torch.tensor([0.3, 0.5, 0.7, 0.6])
    d = torch.ops.diffalign
    op, args = [(d.gaussian_logprob.default, (x, mean, s, 0, pos)),
                (d.gaussian_kl.default, (x, mean, s, None, 1, full)),
                (d.diffusion_dpo_loss.default, (x, mean, prev, 3.0, 0, 0, pos.float())),
                (d.gaussian_step.default, (x, mean, a_t, a_t * 0.5, 0.7, prev, None, 3, pos))][case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_samples_with_a_position_mask_equal_each_unpadded_sample(backend, dtype, monkeypatch):
    """(B, max L, F) with a (B, max L, 1) mask, F = 32: the per-position form the CPU reads in place."""
    _backend(backend, monkeypatch)
    f = 32
    x, mask = _padded(LENGTHS, f, dtype, "cpu", 0, garbage=1e30)
    mean, _ = _padded(LENGTHS, f, dtype, "cpu", 1, garbage=-7.0)
    tgt, _ = _padded(LENGTHS, f, dtype, "cpu", 2, garbage=-3.0)
    x.requires_grad_()
    mask = mask[..., None]
    std = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=dtype)
    a_t = torch.tensor([0.3, 0.4, 0.5, 0.6], dtype=dtype)
    fns = [lambda a, m, r, rows: ops.gaussian_logprob(a, mean[rows, :a.shape[1]], std[rows], r, mask=m),
           lambda a, m, r, rows: ops.gaussian_kl(a, mean[rows, :a.shape[1]], std[rows], None, r, mask=m),
           lambda a, m, r, rows: ops.ddim_step_with_logprob(a, mean[rows, :a.shape[1]], a_t[rows], a_t[rows] + 0.2,
                                                            1.0, prev_sample=tgt[rows, :a.shape[1]], mask=m).log_prob]
    for reduction in ("mean", "sum"):
        for k, fn in enumerate(fns):
            if k == 2 and reduction == "sum":
                continue
            batch = fn(x, mask, reduction, slice(None))
            (gx,) = torch.autograd.grad(batch.sum(), [x])
            for i, n in enumerate(LENGTHS):
                xi = x[i:i + 1, :n].detach().requires_grad_()
                alone = fn(xi, None, reduction, slice(i, i + 1))
                torch.testing.assert_close(batch[i:i + 1], alone, **TIGHT[dtype])
                (gxi,) = torch.autograd.grad(alone.sum(), [xi])
                torch.testing.assert_close(gx[i:i + 1, :n], gxi, **TIGHT[dtype])
                assert torch.equal(gx[i, n:], torch.zeros_like(gx[i, n:]))


# A segment mask whose runs hold whole lane groups goes group by group on the CPU: weight 1 and 0 through
# constant-weight code (the unmasked element work; only the element outputs), any other weight through
# the weighted code. Runs of 32 and 48 elements (2 and 3 lane groups; 48 crosses chunk boundaries).
SEGMENT_SHAPES = [(3, 4, 32), (2, 400, 48)]


def _segment_weights(shape, seed=7):
    """(B, N, 1) weights mixing 0, 1 and other values; row 1 all zero. Dyadic values: every sum of them is
    exact, so the order of the sums cannot change a bit."""
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.5, 3.0], dtype=torch.float64)
    w = choices[torch.randint(len(choices), shape[:-1] + (1,), generator=g)]
    w[1] = 0.0
    return w


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SEGMENT_SHAPES)
def test_segment_masks_with_weights_other_than_0_1_give_the_bits_of_the_full_mask(dtype, shape):
    w = _segment_weights(shape)
    got = _all_masked_outputs(shape, dtype, w, "cpu")
    want = _all_masked_outputs(shape, dtype, w.expand(shape).to(dtype).contiguous(), "cpu")
    for i, (g, e) in enumerate(zip(got, want)):
        assert torch.equal(g, e), f"{shape} output {i}"


def _poisoned_outputs(x, mean, tgt, std, mask):
    """Reduced outputs, and gradients of x (and mean, std) of every masked op; x, mean: leaf tensors."""
    x, mean, std = (t.detach().requires_grad_() for t in (x, mean, std))
    a_t = torch.linspace(0.3, 0.6, x.shape[0], dtype=x.dtype)
    des = torch.arange(x.shape[0]) % 2 == 0
    outs = []
    for red in ("mean", "sum"):
        for out in (ops.gaussian_logprob(x, mean, std, red, mask=mask), ops.gaussian_kl(x, mean, std, reduction=red, mask=mask)):
            outs += [out, *torch.autograd.grad(out.sum(), [x, mean, std])]
    b2 = x.shape[0] - x.shape[0] % 2
    loss = ops.diffusion_dpo_loss(x[:b2], mean[:b2].detach(), tgt[:b2], 10.0, reduction="none", mask=mask[:b2])
    outs += [loss, *torch.autograd.grad(loss.sum(), [x])]
    loss = ops.diffusion_kto_loss(x, mean.detach(), tgt, des, 3.0, mask=mask)
    outs += [loss, *torch.autograd.grad(loss, [x])]
    step = ops.ddim_step_with_logprob(x, mean, a_t, a_t + 0.2, 1.0, prev_sample=tgt, mask=mask)
    outs += [step.log_prob, *torch.autograd.grad(step.log_prob.sum(), [x, mean])]
    return [o.detach() for o in outs]


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_zero_runs_of_a_segment_mask_add_exactly_zero_whatever_they_hold(dtype):
    """NaN and +-inf in the runs of weight 0 (x, mean and target) change no sum and no gradient, and the
    gradients there are exactly 0."""
    shape = (3, 6, 32)
    w = _segment_weights(shape)
    x, mean, tgt = (make(shape, dtype, "cpu", seed=s) for s in (0, 1, 2))
    std = torch.rand(shape[0], generator=torch.Generator().manual_seed(3)).to(dtype) + 0.5
    zero = (w == 0).expand(shape)
    garbage = torch.tensor([math.nan, math.inf, -math.inf], dtype=dtype).repeat(zero.sum().item() // 3 + 1)
    bad = [t.clone() for t in (x, mean, tgt)]
    for t in bad:
        t[zero] = garbage[:zero.sum().item()]
    mask = w.to(dtype)
    clean, poisoned = _poisoned_outputs(x, mean, tgt, std, mask), _poisoned_outputs(*bad, std, mask)
    for i, (c, p) in enumerate(zip(clean, poisoned)):
        assert torch.equal(c, p), f"output {i}"
        if p.shape == shape:  # a gradient of x or mean
            assert torch.equal(p[zero], torch.zeros_like(p[zero])), f"output {i}"
