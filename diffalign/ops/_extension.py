"""Loads the compiled ops (``diffalign._C``) once, or explains, once, why the reference is used."""
from __future__ import annotations

import os
import warnings

_REASON: str | None = None


def _load() -> bool:
    global _REASON
    if os.environ.get("DIFFALIGN_DISABLE_EXTENSION", "0") not in ("", "0"):
        _REASON = "DIFFALIGN_DISABLE_EXTENSION is set"
    else:
        try:
            from diffalign import _C  # noqa: F401  (registers torch.ops.diffalign.*)
        except ImportError as exc:  # not built, or built against another torch
            _REASON = f"diffalign._C could not be imported ({exc})"
    if _REASON is not None:
        warnings.warn(
            f"diffalign: compiled ops unavailable, using the pure-PyTorch reference ({_REASON}). "
            "Results are the same; speed is not. Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning, stacklevel=3)
        return False
    from diffalign.ops import _fake  # noqa: F401  (fake impls for torch.compile)
    return True


AVAILABLE = _load()


def extension_available() -> bool:
    """True when the fused C++/CUDA ops are in use, False when the reference fallback is."""
    return AVAILABLE


def unavailable_reason() -> str | None:
    return _REASON


def cuda_kernels_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    if not AVAILABLE:
        return False
    from diffalign import _C
    return bool(_C.cuda_built())
