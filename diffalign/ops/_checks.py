"""Argument checks of the reference backend, mirroring the compiled ops' checks (csrc/torch/
binding.h) so that both backends fail with the same ValueError naming the argument.

Shape, dtype and device checks read tensor metadata only and are always on. Checks of *values*
(std > 0, schedule values in range) need the data: on CPU that is cheap, on an accelerator it would
force a host sync on every call and break CUDA-graph capture, so there they run only after
``set_value_checks(True)`` (then also for the compiled ops, see accelerator_value_checks).
"""
from __future__ import annotations

import os

import torch

_VALUE_CHECKS_ON_ACCELERATOR = False


def _python_checks_default() -> bool:
    """On the GPU image's torch 2.11 (two lent H100/H200 runs), a ValueError raised inside the compiled
    ops' C++ crashed the process with a segmentation fault instead of reaching Python; torch 2.14 raises
    it normally. Cause not found (no device time was left to debug it), so before 2.14 the wrappers check
    their arguments in Python first, where a bad argument never reaches C++. DIFFALIGN_PYTHON_CHECKS=1
    or 0 forces either way."""
    forced = os.environ.get("DIFFALIGN_PYTHON_CHECKS")
    if forced not in (None, ""):
        return forced != "0"
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return (major, minor) < (2, 14)


# whether the wrappers of the compiled ops also check their arguments in Python (see above)
PYTHON_CHECKS = _python_checks_default()


def set_value_checks(enabled: bool) -> None:
    """Also check values (std > 0, finite alphas) of accelerator tensors; costs a host sync per call."""
    global _VALUE_CHECKS_ON_ACCELERATOR
    _VALUE_CHECKS_ON_ACCELERATOR = bool(enabled)


def value_checks_on_accelerator() -> bool:
    """Whether set_value_checks(True) is in force (the wrappers skip the check call otherwise)."""
    return _VALUE_CHECKS_ON_ACCELERATOR


def _want_value_check(t: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    device = t.device.type
    if device != "cpu" and (not _VALUE_CHECKS_ON_ACCELERATOR or device == "meta"):
        return False
    return not isinstance(t, torch._subclasses.FakeTensor)


# Up to this many values, a CPU tensor's values are checked as a Python list: one tolist() costs less
# than the two or three tensor comparisons and the all() of the tensor path (schedule values and
# per-sample stds are (B,), and these checks run on every sampling step).
_LIST_CHECK_MAX = 64


def _all_values(t: torch.Tensor, ok) -> bool:
    """Whether ok(v) holds for every value of t; ok takes floats or tensors (NaN fails comparisons)."""
    if t.device.type == "cpu" and t.numel() <= _LIST_CHECK_MAX:
        values = t.reshape(-1).tolist() if t.dim() > 1 else t.tolist()
        return all(map(ok, values if t.dim() else [values]))
    return bool(ok(t).all())


def _positive(v):
    return v > 0


def _in_unit_interval(v, closed_low: bool, closed_high: bool):
    """Membership of the unit interval, for a float or elementwise for a tensor."""
    return ((v >= 0) if closed_low else (v > 0)) & ((v <= 1) if closed_high else (v < 1))


def check_tensor(name: str, t, *, batch_dim: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if batch_dim:
        if t.ndim == 0:
            raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
        if t.shape[0] == 0:
            raise ValueError(f"{name} has an empty batch (shape {tuple(t.shape)})")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, *, same_dtype: bool = True) -> None:
    check_tensor(name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")
    if same_dtype and t.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_std(name: str, std, like: torch.Tensor, like_name: str) -> None:
    """std may be 0-d, (B,), (B,1,..,1) or the full shape of ``like``."""
    if not isinstance(std, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(std).__name__}")
    if not std.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {std.dtype}")
    if std.device != like.device:
        raise ValueError(f"{name} is on {std.device} but {like_name} is on {like.device}")
    b = like.shape[0]
    shape = tuple(std.shape)
    per_row = (b,) + (1,) * (like.ndim - 1)
    if not (std.ndim == 0 or shape == (b,) or shape == per_row or shape == tuple(like.shape)):
        raise ValueError(
            f"{name} has shape {shape}; expected a 0-d tensor, ({b},), {per_row} or {tuple(like.shape)} "
            f"to broadcast against {like_name}")
    if _want_value_check(std) and not _all_values(std, _positive):
        raise ValueError(f"{name} must be strictly positive (min {float(std.min()):.3g})")


def check_mask(mask, like: torch.Tensor, like_name: str) -> None:
    """A per-element weight (bool or float >= 0) of ``like``'s shape or broadcastable to it with the same
    batch size; trailing dims it lacks count as 1 (as for a (B,) std). Negative weights are found where
    values are checked (CPU tensors; accelerator tensors after set_value_checks(True))."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    shape, full = tuple(mask.shape), tuple(like.shape)
    ok = 1 <= mask.ndim <= like.ndim and shape[0] == full[0] and all(
        s in (f, 1) for s, f in zip(shape[1:], full[1:]))
    if not ok:
        raise ValueError(f"mask has shape {shape}; expected {like_name}'s shape {full} or one broadcastable to it "
                         f"with the same batch size {full[0]}")
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise ValueError(f"mask must be a bool or floating-point tensor, got dtype {mask.dtype}")
    if mask.device != like.device:
        raise ValueError(f"mask is on {mask.device} but {like_name} is on {like.device}")
    if mask.dtype != torch.bool and _want_value_check(mask) and not _all_values(mask, lambda v: v >= 0):
        raise ValueError(f"mask must be >= 0 (min {float(mask.min()):.3g})")


def check_reduction(reduction: str, allowed=("mean", "sum")) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")


def check_pairs(name: str, t: torch.Tensor) -> None:
    if t.shape[0] % 2:
        raise ValueError(f"{name} must hold [winners; losers] with an even number of rows, got {t.shape[0]}")


def check_per_sample(name: str, a, like: torch.Tensor, like_name: str) -> None:
    """A per-sample schedule value: 0-d or (B,)."""
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (0-d or ({like.shape[0]},)), got {type(a).__name__}")
    if not a.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {a.dtype}")
    if not (a.ndim == 0 or tuple(a.shape) == (like.shape[0],)):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected 0-d or ({like.shape[0]},) for {like_name}")
    if a.device != like.device:
        raise ValueError(f"{name} is on {a.device} but {like_name} is on {like.device}")


def check_in_unit_interval(name: str, a: torch.Tensor, *, closed_low: bool, closed_high: bool) -> None:
    if not _want_value_check(a):
        return
    if not _all_values(a, lambda v: _in_unit_interval(v, closed_low, closed_high)):
        lo, hi = "[" if closed_low else "(", "]" if closed_high else ")"
        raise ValueError(f"{name} must lie in {lo}0, 1{hi}; got min {float(a.min()):.4g}, max {float(a.max()):.4g}")


_UNIT_INTERVALS = {  # name -> (closed_low, closed_high)
    "alpha_prod_t": (False, False), "alpha_prod_prev": (False, True),
    "sigma": (True, True), "sigma_next": (True, False),
}


def check_schedule(name0: str, p0, name1: str, p1, sample: torch.Tensor) -> None:
    for name, value in ((name0, p0), (name1, p1)):
        check_per_sample(name, value, sample, "sample")
        low, high = _UNIT_INTERVALS[name]
        check_in_unit_interval(name, value, closed_low=low, closed_high=high)


def check_desirable(desirable, model_pred: torch.Tensor) -> None:
    if not isinstance(desirable, torch.Tensor) or desirable.dtype != torch.bool or \
            tuple(desirable.shape) != (model_pred.shape[0],):
        shape = tuple(desirable.shape) if isinstance(desirable, torch.Tensor) else type(desirable).__name__
        raise ValueError(f"desirable must be a bool tensor of shape ({model_pred.shape[0]},), got {shape}")
    if desirable.device != model_pred.device:
        raise ValueError(f"desirable is on {desirable.device} but model_pred is on {model_pred.device}")


def check_kl_ref(kl_ref, model_pred: torch.Tensor) -> None:
    if kl_ref is not None and (not isinstance(kl_ref, torch.Tensor) or kl_ref.numel() != 1):
        raise ValueError("kl_ref must be a one-element tensor (the reference point z)")


def accelerator_value_checks(**tensors) -> None:
    """Value checks of accelerator tensors for the compiled ops, only after set_value_checks(True)
    (the compiled ops check CPU tensors themselves)."""
    if not _VALUE_CHECKS_ON_ACCELERATOR:
        return
    for name, t in tensors.items():
        if t is None or t.device.type == "cpu":
            continue
        if name in _UNIT_INTERVALS:
            low, high = _UNIT_INTERVALS[name]
            check_in_unit_interval(name, t, closed_low=low, closed_high=high)
        elif _want_value_check(t) and not _all_values(t, _positive):
            raise ValueError(f"{name} must be strictly positive (min {float(t.min()):.3g})")
