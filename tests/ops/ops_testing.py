import pytest
import torch

import diffalign.ops as ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

requires_ext = pytest.mark.skipif(not ops.extension_available(), reason=f"extension not built: {ops.unavailable_reason()}")

# tolerances of the fused op against the float64 reference, by input dtype
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
}


def make(shape, dtype, device, *, seed=0, noncontig=False, requires_grad=False, scale=1.0, offset=0.0):
    """Random tensor; with noncontig it is a transposed view of a larger buffer."""
    g = torch.Generator().manual_seed(seed)
    if noncontig and len(shape) >= 2:
        buf = torch.randn((shape[1], shape[0]) + tuple(shape[2:]), generator=g, dtype=torch.float64)
        t = (buf * scale + offset).transpose(0, 1)
    else:
        t = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    t = t.to(device=device, dtype=dtype)
    if noncontig and len(shape) >= 2:
        assert not t.is_contiguous()
    return t.requires_grad_(requires_grad)


def std_of(layout, shape, device, seed=5):
    g = torch.Generator().manual_seed(seed)
    full = {"scalar": (), "row": (shape[0],), "row_keepdim": (shape[0],) + (1,) * (len(shape) - 1), "full": shape}
    return (torch.rand(full[layout], generator=g, dtype=torch.float64) + 0.5).to(device)


def assert_close(actual, expected, dtype, what=""):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), msg=lambda m: f"{what}: {m}", **tol)
