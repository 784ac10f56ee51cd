"""Accelerate setup (the per-sample seeds live in diffalign.seeding, re-exported here for the trainer loops).

Trap (measured with the dev torch, a CUDA build, on GPU-less machines): ``accelerate launch
--multi_gpu`` or torchrun start N processes that each run ALONE (DistributedType.NO) unless the
Accelerator is created with cpu=True, which then forms one MULTI_CPU gloo group. So when no
accelerator device is present we ask for the CPU backend ourselves; no flag or variable needed.
"""
from __future__ import annotations

import os

import torch

from diffalign.seeding import derive_seed, generator  # noqa: F401  (the trainer loops' names for them)


def accelerator_device_type() -> str:
    """The device type training will run on: "cuda", "xpu", "mps" or "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def has_accelerator_device() -> bool:
    return accelerator_device_type() != "cpu"


def _shared_precision_choice(mixed_precision: str, cpu: bool):
    """resolve_precision on the main process, the same choice on every rank: ``auto`` on a CPU rests on a
    timing probe, and ranks that measured differently must not train under different precisions."""
    from diffalign.trainer.precision import resolve_precision
    device = accelerator_device_type()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolve_precision(mixed_precision, device)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    state = PartialState(cpu=cpu)  # the process group Accelerator(cpu=cpu) joins below
    if state.num_processes <= 1:
        return resolve_precision(mixed_precision, device)
    payload = [resolve_precision(mixed_precision, device) if state.is_main_process else None]
    broadcast_object_list(payload, from_process=0)
    return payload[0]


def make_accelerator(mixed_precision: str = "auto", log_dir: str | None = None):
    """An Accelerator with ``mixed_precision`` resolved for this machine (diffalign.trainer.precision: "auto"
    measures; fp16 on a CPU becomes float32). The PrecisionChoice rides along as ``acc.diffalign_precision``."""
    from diffalign.trainer.precision import log_choice
    cpu = not has_accelerator_device()
    choice = _shared_precision_choice(mixed_precision, cpu)
    log_choice(choice)
    acc = _accelerator(cpu, choice.precision)
    acc.diffalign_precision = choice
    return acc


def _accelerator(cpu: bool, mixed_precision: str):
    from accelerate import Accelerator
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
