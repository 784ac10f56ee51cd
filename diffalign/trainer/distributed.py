"""Accelerate setup, and per-sample random seeds that do not depend on how work is split.

Trap (measured with the dev torch, a CUDA build, on GPU-less machines): ``accelerate launch
--multi_gpu`` or torchrun start N processes that each run ALONE (DistributedType.NO) unless the
Accelerator is created with cpu=True, which then forms one MULTI_CPU gloo group. So when no
accelerator device is present we ask for the CPU backend ourselves; no flag or variable needed.
"""
from __future__ import annotations

import hashlib

import torch


def has_accelerator_device() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def make_accelerator(mixed_precision: str = "no", log_dir: str | None = None):
    from accelerate import Accelerator
    cpu = not has_accelerator_device()
    if cpu and mixed_precision == "fp16":
        mixed_precision = "no"  # fp16 autocast is not supported on CPU; bf16 is
    try:
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
    # A second trainer in this process with another precision (the demo or a test suite runs several configs):
    # accelerate keeps the precision in its process-wide AcceleratorState and refuses a change. Reset that
    # state only; the process group (PartialState) stays. An earlier Accelerator then sees the new precision.
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any hashable parts (same on every process and every run)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
