"""Registration-level checks of the compiled ops: gradcheck in float64, torch.library.opcheck,
torch.compile(fullgraph=True), compiled autograd, CUDA-graph capture, the reference fallback, and bad-input errors."""
import os
import subprocess
import sys

import pytest
import torch

import diffalign.ops as ops

from ops_testing import DEVICES, make, requires_ext, std_of


def _d(shape, seed, rg=True, device="cpu"):
    return make(shape, torch.float64, device, seed=seed, requires_grad=rg)


# Each case: (name, callable over float64 tensors, its differentiable inputs)
def _cases(device="cpu"):
    shape = (3, 2, 4)
    x, mean, ref, tgt = _d(shape, 0, device=device), _d(shape, 1, device=device), _d(shape, 2, False, device), \
        _d(shape, 3, False, device)
    s_row = std_of("row", shape, device).requires_grad_()
    s_full = std_of("full", shape, device).requires_grad_()
    s_scalar = std_of("scalar", shape, device).requires_grad_()
    pairs = _d((4, 2, 3), 4, device=device)
    pref, ptgt = _d((4, 2, 3), 5, False, device), _d((4, 2, 3), 6, False, device)
    des = torch.tensor([True, False, False, True], device=device)
    a_t = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64, device=device)
    a_p = a_t + 0.2
    noise = _d(shape, 7, False, device)
    prev = _d(shape, 8, device=device)
    sig, sig_n = torch.tensor(0.8, dtype=torch.float64, device=device), torch.tensor(0.5, dtype=torch.float64,
                                                                                   device=device)
    return [
        ("logprob_row", lambda a, b, s: ops.gaussian_logprob(a, b, s), (x, mean, s_row)),
        ("logprob_full_sum", lambda a, b, s: ops.gaussian_logprob(a, b, s, "sum"), (x, mean, s_full)),
        ("kl_scalar", lambda a, b, s: ops.gaussian_kl(a, b, s), (x, mean, s_scalar)),
        ("kl_two_std", lambda a, b, s, s2: ops.gaussian_kl(a, b, s, s2), (x, mean, s_row, s_full)),
        ("dpo_sigmoid", lambda m: ops.diffusion_dpo_loss(m, pref, ptgt, beta=2.0), (pairs,)),
        ("dpo_ipo_none", lambda m: ops.diffusion_dpo_loss(m, pref, ptgt, 0.5, "ipo", "none"), (pairs,)),
        ("kto", lambda m: ops.diffusion_kto_loss(m, pref, ptgt, des, beta=4.0), (pairs,)),
        ("ddim_draw", lambda m, xx: sum(t.sum() for t in ops.ddim_step_with_logprob(m, xx, a_t, a_p, noise=noise)[:3]),
         (mean, x)),
        ("ddim_score_v", lambda m, xx, p: ops.ddim_step_with_logprob(m, xx, a_t, a_p, 0.7, prev_sample=p,
                                                                     prediction_type="v_prediction").log_prob,
         (mean, x, prev)),
        ("flow_score", lambda m, xx, p: ops.flow_sde_step_with_logprob(m, xx, sig, sig_n, prev_sample=p).log_prob,
         (mean, x, prev)),
    ]


@requires_ext
@pytest.mark.parametrize("case", range(10))
def test_gradcheck_float64(case):
    name, fn, inputs = _cases()[case]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5), name


def _op_samples(device="cpu", dtype=torch.float32):
    """Direct torch.ops calls with their raw arguments, for opcheck."""
    shape = (3, 2, 4)
    x = make(shape, dtype, device, requires_grad=True)
    mean = make(shape, dtype, device, seed=1, requires_grad=True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    s = (torch.rand(3, dtype=acc, device=device) + 0.5).requires_grad_()
    s_full = (torch.rand(shape, dtype=acc, device=device) + 0.5).requires_grad_()
    pairs = make((4, 3), dtype, device, seed=2, requires_grad=True)
    pref, ptgt = make((4, 3), dtype, device, seed=3), make((4, 3), dtype, device, seed=4)
    des = torch.tensor([True, False, True, False], device=device)
    noise = make(shape, dtype, device, seed=5)
    prev = make(shape, dtype, device, seed=6, requires_grad=True)
    a_t = torch.tensor([0.3, 0.5, 0.7], dtype=acc, device=device)
    d = torch.ops.diffalign
    return [
        (d.gaussian_logprob.default, (x, mean, s, 0)),
        (d.gaussian_logprob.default, (x, mean, s_full, 1)),
        (d.gaussian_kl.default, (x, mean, s, None, 0)),
        (d.gaussian_kl.default, (x, mean, s, s_full, 1)),
        (d.diffusion_dpo_loss.default, (pairs, pref, ptgt, 3.0, 0, 0)),
        (d.diffusion_dpo_loss.default, (pairs, pref, ptgt, 3.0, 1, 1)),
        (d.diffusion_kto_loss.default, (pairs, pref, ptgt, des, 3.0, 1.0, 1.0, None)),
        (d.gaussian_step.default, (x, mean, a_t, a_t + 0.2, 1.0, None, noise, 0)),
        (d.gaussian_step.default, (x, mean, a_t, a_t * 0.5, 0.7, prev, None, 3)),
        (d.ddim_step_with_logprob.default, (x, mean, a_t, a_t + 0.2, 1.0, prev, None, 1)),
        (d.flow_sde_step_with_logprob.default, (x, mean, a_t, a_t * 0.5, 0.7, None, noise)),
    ]


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(11))
def test_opcheck(device, case):
    op, args = _op_samples(device)[case]
    torch.library.opcheck(op, args)


@requires_ext
@pytest.mark.parametrize("case", range(10))
def test_torch_compile_fullgraph_without_graph_breaks(case):
    name, fn, inputs = _cases()[case]
    expected = fn(*inputs)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)
    got = compiled(*inputs)
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad(got.sum(), inputs)
    expected_grads = torch.autograd.grad(fn(*inputs).sum(), inputs)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


@requires_ext
@pytest.mark.parametrize("case", range(10))
def test_compiled_autograd_traces_the_backward_ops(case):
    """The backward under compiled autograd (torch._dynamo.config.compiled_autograd, as FSDP2 training
    uses it) gives eager's gradients: each op's autograd node supports being captured."""
    from torch._dynamo.utils import counters

    name, fn, inputs = _cases()[case]
    expected = torch.autograd.grad(fn(*inputs).sum(), inputs)

    def train():
        fn(*inputs).sum().backward()

    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(compiled_autograd=True):
        torch.compile(train, backend="aot_eager")()
    assert counters["compiled_autograd"]["captures"] >= 1, name
    for t, e in zip(inputs, expected):
        torch.testing.assert_close(t.grad, e)


@requires_ext
def test_torch_compile_inductor_with_dynamic_shapes():
    def step_loss(eps, x, a_t, a_p, prev, ref_mean):
        out = ops.ddim_step_with_logprob(eps, x, a_t, a_p, 1.0, prev_sample=prev)
        return (out.log_prob - 0.1 * ops.gaussian_kl(out.mean, ref_mean, out.std)).mean()

    torch._dynamo.reset()
    compiled = torch.compile(step_loss, fullgraph=True, dynamic=True)
    for b in (2, 5):
        eps = make((b, 3, 4), torch.float32, "cpu", requires_grad=True)
        args = (eps, make((b, 3, 4), torch.float32, "cpu", seed=1), torch.full((b,), 0.4), torch.full((b,), 0.6),
                make((b, 3, 4), torch.float32, "cpu", seed=2), make((b, 3, 4), torch.float32, "cpu", seed=3))
        got, expected = compiled(*args), step_loss(*args)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(torch.autograd.grad(got, eps)[0], torch.autograd.grad(expected, eps)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@requires_ext
def test_cuda_graph_capture_and_replay():
    assert ops.cuda_kernels_built()
    shape = (4, 4, 16, 16)
    eps, x = make(shape, torch.float32, "cuda"), make(shape, torch.float32, "cuda", seed=1)
    noise = make(shape, torch.float32, "cuda", seed=2)
    a_t, a_p = torch.full((4,), 0.4, device="cuda"), torch.full((4,), 0.6, device="cuda")
    mean = make(shape, torch.float32, "cuda", seed=3, requires_grad=True)
    std = torch.full((4,), 0.8, device="cuda")

    def body():
        out = ops.ddim_step_with_logprob(eps, x, a_t, a_p, 1.0, noise=noise)
        lp = ops.gaussian_logprob(out.prev_sample, mean, std)
        lp.sum().backward()
        return out.log_prob, lp

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm up the allocator and autograd outside the graph
            mean.grad = None
            body()
    torch.cuda.current_stream().wait_stream(s)
    mean.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        lp_step, lp = body()
    noise.copy_(make(shape, torch.float32, "cuda", seed=9))
    g.replay()
    torch.cuda.synchronize()
    expected = ops.reference.ddim_step_with_logprob(eps, x, a_t, a_p, 1.0, None, noise, "epsilon")
    torch.testing.assert_close(lp_step, expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp, ops.reference.gaussian_logprob(expected[0], mean, std), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_kernels_on_large_inputs(dtype):
    shape = (8, 4, 64, 64)
    x, mean = make(shape, dtype, "cpu"), make(shape, dtype, "cpu", seed=1)
    std = torch.rand(8) + 0.5
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(ops.gaussian_logprob(x.cuda(), mean.cuda(), std.cuda(), reduction).cpu(),
                                   ops.gaussian_logprob(x, mean, std, reduction), rtol=1e-4, atol=1e-4)
    loss_gpu = ops.diffusion_dpo_loss(x.cuda(), mean.cuda(), mean.cuda() * 0.5, beta=100.0)
    loss_cpu = ops.diffusion_dpo_loss(x, mean, mean * 0.5, beta=100.0)
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-4, atol=1e-4)


def test_fallback_warns_once_and_matches(tmp_path):
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import diffalign.ops as ops\n"
        "assert not ops.extension_available()\n"
        "assert sum('pure-PyTorch reference' in str(x.message) for x in w) == 1, [str(x.message) for x in w]\n"
        "x = torch.randn(3, 5); m = torch.randn(3, 5, requires_grad=True)\n"
        "lp = ops.gaussian_logprob(x, m, torch.tensor(0.5))\n"
        "exp = torch.distributions.Normal(m, 0.5).log_prob(x).mean(1)\n"
        "torch.testing.assert_close(lp, exp)\n"
        "lp.sum().backward(); assert m.grad is not None\n"
        "out = ops.ddim_step_with_logprob(x, x, torch.tensor(0.3), torch.tensor(0.5), noise=x)\n"
        "assert out.log_prob.shape == (3,)\n"
        "print('fallback-ok')\n")
    env = dict(os.environ, DIFFALIGN_DISABLE_EXTENSION="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fallback-ok" in res.stdout


def test_extension_is_in_use_when_built():
    # CI builds the extension; a silent fallback there would hide a broken build
    if os.environ.get("DIFFALIGN_EXPECT_EXTENSION") == "1":
        assert ops.extension_available(), ops.unavailable_reason()
    assert ops.extension_available() == (ops.unavailable_reason() is None)


# --------------------------------------------------------------------------- bad input ----
@pytest.mark.parametrize("call, message", [
    (lambda: ops.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 4), torch.tensor(1.0)), "mean has shape"),
    (lambda: ops.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 3), torch.ones(3)), "std has shape"),
    (lambda: ops.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([1.0, 0.0])), "std must be strictly positive"),
    (lambda: ops.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([1.0, float("nan")])), "std must be strictly positive"),
    (lambda: ops.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([[1.0], [0.0]])), "std must be strictly positive"),
    (lambda: ops.gaussian_logprob(torch.randn(2, 50), torch.randn(2, 50), torch.ones(2, 50).index_put_((torch.tensor(1), torch.tensor(7)), torch.tensor(0.0))),
     "std must be strictly positive"),  # 100 values: checked as a tensor, not as a list
    (lambda: ops.flow_sde_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([.5, float("nan")]), torch.tensor(.4)), "sigma must lie in"),
    (lambda: ops.gaussian_logprob(torch.randn(0, 3), torch.randn(0, 3), torch.tensor(1.0)), "empty batch"),
    (lambda: ops.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 3), torch.tensor(1.0), "max"), "reduction"),
    (lambda: ops.gaussian_kl(torch.randn(2, 3), torch.randn(2, 3), torch.tensor(1.0), torch.tensor(-1.0)), "ref_std must be strictly positive"),
    (lambda: ops.gaussian_kl(torch.randn(2, 3), torch.randn(3, 3), torch.tensor(1.0)), "ref_mean has shape"),
    (lambda: ops.diffusion_dpo_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)), "even number of rows"),
    (lambda: ops.diffusion_dpo_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 5)), "target has shape"),
    (lambda: ops.diffusion_dpo_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4), loss_type="x"), "loss_type"),
    (lambda: ops.diffusion_dpo_loss(torch.randn(2, 4), torch.randn(2, 4).double(), torch.randn(2, 4)), "ref_pred has dtype"),
    (lambda: ops.diffusion_kto_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4), torch.ones(2)), "desirable"),
    (lambda: ops.diffusion_kto_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4), torch.ones(2, dtype=torch.bool),
                                    kl_ref=torch.ones(2)), "kl_ref must be a one-element tensor"),
    (lambda: ops.ddim_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(.5), torch.tensor(1.5)), "alpha_prod_prev must lie in"),
    (lambda: ops.gaussian_kl(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64), torch.tensor(1.0)), "ref_mean has dtype"),
    (lambda: ops.ddim_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.ones(3), torch.ones(3)), "alpha_prod_t has shape"),
    (lambda: ops.ddim_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(1.5), torch.tensor(0.5)), "alpha_prod_t must lie in"),
    (lambda: ops.ddim_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(.5), torch.tensor(.6), prediction_type="x0"), "prediction_type"),
    (lambda: ops.ddim_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(.5), torch.tensor(.6),
                                        prev_sample=torch.randn(2, 4), noise=torch.randn(2, 4)), "not both"),
    (lambda: ops.flow_sde_step_with_logprob(torch.randn(2, 4), torch.randn(2, 5), torch.tensor(.5), torch.tensor(.4)), "model_output has shape"),
    (lambda: ops.flow_sde_step_with_logprob(torch.randn(2, 4), torch.randn(2, 4), torch.tensor(1.2), torch.tensor(.4)), "sigma must lie in"),
])
@pytest.mark.parametrize("backend", ["compiled", "reference", "compiled-python-checks"])
def test_bad_input_raises_value_error_naming_the_argument(call, message, backend, monkeypatch):
    if backend.startswith("compiled") and not ops.extension_available():
        pytest.skip("extension not built")
    if backend == "reference":  # the fallback's Python checks must say the same as the C++ ones
        monkeypatch.setattr(ops, "_use_extension", lambda: False)
    if backend == "compiled-python-checks":
        # where a C++ error is unsafe (_checks.PYTHON_CHECKS) the wrappers must stop every bad argument
        # before the compiled op is reached at all
        class Unreachable:
            def __getattr__(self, name):
                raise AssertionError(f"bad input reached the compiled op {name}")
        monkeypatch.setattr(ops._checks, "PYTHON_CHECKS", True)
        monkeypatch.setattr(ops, "_OPS", Unreachable())
    with pytest.raises(ValueError, match=message):
        call()


def test_python_checks_default_follows_torch_version_and_env(monkeypatch):
    monkeypatch.delenv("DIFFALIGN_PYTHON_CHECKS", raising=False)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    assert ops._checks._python_checks_default()
    monkeypatch.setattr(torch, "__version__", "2.14.1")
    assert not ops._checks._python_checks_default()
    monkeypatch.setenv("DIFFALIGN_PYTHON_CHECKS", "1")
    assert ops._checks._python_checks_default()
    monkeypatch.setenv("DIFFALIGN_PYTHON_CHECKS", "0")
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    assert not ops._checks._python_checks_default()


@requires_ext
def test_direct_op_calls_check_arguments_in_cpp(tmp_path):
    """torch.ops calls that skip the Python wrappers still get ValueErrors naming the argument, raised
    before an autograd node exists. Run in a subprocess so a crash fails this test, not the session."""
    code = (
        "import torch, diffalign.ops\n"
        "d = torch.ops.diffalign\n"
        "cases = [\n"
        "  ('even number of rows', lambda: d.diffusion_dpo_loss(torch.randn(3, 2, requires_grad=True), torch.randn(3, 2), torch.randn(3, 2), 1.0, 0, 0)),\n"
        "  ('mean has shape', lambda: d.gaussian_logprob(torch.randn(3, 2), torch.randn(3, 3, requires_grad=True), torch.ones(()), 0)),\n"
        "  ('ref_std has shape', lambda: d.gaussian_kl(torch.randn(3, 2), torch.randn(3, 2), torch.ones(()), torch.ones(2), 0)),\n"
        "  ('desirable must be', lambda: d.diffusion_kto_loss(torch.randn(2, 2), torch.randn(2, 2), torch.randn(2, 2), torch.ones(2), 1.0, 1.0, 1.0, None)),\n"
        "  ('exactly one of prev_sample', lambda: d.ddim_step_with_logprob(torch.randn(2, 2), torch.randn(2, 2), torch.tensor(.5), torch.tensor(.6), 1.0, None, None, 0)),\n"
        "  ('sigma has shape', lambda: d.flow_sde_step_with_logprob(torch.randn(2, 2), torch.randn(2, 2), torch.ones(3), torch.ones(3), 0.7, None, torch.randn(2, 2))),\n"
        # value checks read float32/float64 data in place and convert other dtypes and strided views
        "  ('std must be strictly positive', lambda: d.gaussian_logprob(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([1.0, 0.0], dtype=torch.float16), 0)),\n"
        "  ('std must be strictly positive', lambda: d.gaussian_logprob(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([[1.0, 5.0], [-1.0, 5.0]])[:, 0], 0)),\n"
        "  ('alpha_prod_t must lie in', lambda: d.ddim_step_with_logprob(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([.5, 1.5], dtype=torch.float64), torch.tensor(.6), 1.0, None, torch.randn(2, 2), 0)),\n"
        "]\n"
        "for msg, call in cases:\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as e:\n"
        "        assert msg in str(e), (msg, str(e))\n"
        "    else:\n"
        "        raise AssertionError('no error for ' + msg)\n"
        "print('cpp-checks-ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and "cpp-checks-ok" in res.stdout, (res.returncode, res.stdout, res.stderr[-3000:])
