"""``train.mixed_precision: auto``: pick the autocast precision that is fast on this machine.

Why: bf16 autocast on a CPU is only fast where the CPU multiplies bf16 in hardware. Measured, demo UNet
forward+backward at batch 16 on one thread:

* AVX2-only AMD EPYC (no avx512_bf16, no AMX): 1.2 s float32, 16.2 s bf16 (about 13x slower);
* AMD EPYC with avx512_bf16 but no AMX (Zen 4): 0.39 s float32, 0.30 s bf16 (about 1.3x faster);
* Xeon Sapphire Rapids and later (AMX tiles): bf16 faster still.

So ``auto`` chooses bf16 on a CPU with bf16 matrix instructions (amx_bf16 or avx512_bf16) when a short timing
probe confirms at least a 1.1x gain, and float32 ("no") otherwise; on CUDA it chooses bf16 where the GPU supports
it, else fp16. An explicit ``bf16`` is kept but warns, naming the measured cost, where bf16 is slower here.

``DIFFALIGN_PRECISION_PROBE=0`` turns the probe off (deterministic choice): ``auto`` on a CPU then picks bf16
only with AMX (amx_bf16), whose gain is large and safe to assume; avx512_bf16 alone needs the measurement.
``DIFFALIGN_AUTO_PRECISION=no`` (or ``bf16``) fixes what ``auto`` means on a CPU: the test suite's setting.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import platform
import sys
import time
import warnings
from typing import Optional

import torch

CPUINFO_PATH = "/proc/cpuinfo"
PRECISIONS = ("auto", "no", "fp16", "bf16")
# the /proc/cpuinfo flags that decide how fast reduced-precision matrix products run
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_fp16")
BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_SPEEDUP = 1.1  # auto picks bf16 on a CPU only when the probe measures at least this gain
PROBE_ENV = "DIFFALIGN_PRECISION_PROBE"
# "no" or "bf16": what ``auto`` resolves to on a CPU, whatever the machine (the test suite sets "no", so that its
# numbers are the same on every CPU; also for comparing runs across machines)
AUTO_ENV = "DIFFALIGN_AUTO_PRECISION"

logger = logging.getLogger("diffalign")


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    precision: str                  # "no" | "bf16" | "fp16": what accelerate gets
    requested: str                  # train.mixed_precision as configured
    reason: str                     # one sentence
    probe_speedup: Optional[float]  # float32 time / bf16 time of the probe network; None when not measured
    cpu_info: dict

    def record(self) -> dict:
        """Flat fields for metrics.jsonl."""
        return {"mixed_precision": self.precision, "mixed_precision_requested": self.requested,
                "mixed_precision_reason": self.reason, "bf16_probe_speedup": self.probe_speedup,
                "cpu_model": self.cpu_info.get("model")}


def _read_cpuinfo() -> tuple[Optional[str], list]:
    model, flags = None, set()
    try:
        with open(CPUINFO_PATH) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and model is None:
                    model = value.strip() or None
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # macOS, Windows, restricted containers
        pass
    return model, [f for f in SPEED_FLAGS if f in flags]


def cpu_info() -> dict:
    """CPU model, the bf16/fp16-relevant flags present, torch's CPU kernel level, torch threads, cores."""
    model, flags = _read_cpuinfo()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # very old torch
        capability = None
    return {"model": model or platform.processor() or platform.machine() or "unknown CPU",
            "flags": flags, "capability": capability, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def has_bf16_hardware(info: Optional[dict] = None) -> bool:
    """bf16 matrix instructions: AMX (amx_bf16) or AVX512-BF16 (measured 1.3x faster on a Zen 4 EPYC)."""
    info = cpu_info() if info is None else info
    return any(f in info.get("flags", ()) for f in BF16_MATRIX_FLAGS)


def probe_enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class _ProbeNet(torch.nn.Module):
    """A miniature of the demo UNet's work: 3x3 convs with group norm, then token-wise linear layers."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(4, width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(8, width)
        self.down = torch.nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.conv = torch.nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.ff1 = torch.nn.Linear(2 * width, 8 * width)
        self.ff2 = torch.nn.Linear(8 * width, 2 * width)

    def forward(self, x):
        h = torch.nn.functional.silu(self.norm(self.conv_in(x)))
        h = torch.nn.functional.silu(self.conv(torch.nn.functional.silu(self.down(h))))
        tokens = h.flatten(2).transpose(1, 2)                      # (B, HW, C)
        return tokens + self.ff2(torch.nn.functional.gelu(self.ff1(tokens)))


@functools.lru_cache(maxsize=None)
def probe_bf16_speedup(seconds_budget: float = 0.5) -> float:
    """float32 time / bf16-autocast time of a small conv+linear network's forward+backward on the CPU
    (> 1: bf16 is faster). Interleaved repetitions within about ``seconds_budget`` (at least 3 each, hard stop at
    4x the budget), minimum times. Measured once per process, on ONE thread: the ratio is a property of the
    core's instructions, and one thread is not thrown off by other busy processes (on 2 threads with the
    other core busy, single steps stalled 50x). Leaves the global RNG and the thread count as they were."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(0)
            net = _ProbeNet()
            x = torch.randn(8, 4, 16, 16)

            def step(bf16: bool) -> float:
                net.zero_grad(set_to_none=True)
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = net(x).float().square().mean()
                loss.backward()
                return time.perf_counter() - start

            start = time.perf_counter()
            step(False), step(True)  # warm-up: kernel selection, allocator
            best = {False: math.inf, True: math.inf}
            for rep in range(50):
                for bf16 in (False, True):
                    best[bf16] = min(best[bf16], step(bf16))
                elapsed = time.perf_counter() - start
                if (rep >= 2 and elapsed > seconds_budget) or elapsed > 4 * seconds_budget:
                    break
    finally:
        torch.set_num_threads(threads)
    return best[False] / best[True]


def _describe_cpu(info: dict) -> str:
    return f"{info['model']}; flags {' '.join(info['flags']) or 'none found'}"


def _device_type(device) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


def resolve_precision(requested: str, device) -> PrecisionChoice:
    """The precision to train and sample with on ``device`` for ``train.mixed_precision = requested``."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.mixed_precision must be one of {PRECISIONS}, got {requested!r}")
    kind = _device_type(device)
    info = cpu_info()

    def choice(precision, reason, speedup=None):
        return PrecisionChoice(precision, requested, reason, speedup, info)

    if requested == "no":
        return choice("no", "float32 as configured.")
    if kind == "cuda":
        if requested == "auto":
            if torch.cuda.is_bf16_supported():
                return choice("bf16", "the GPU supports bf16.")
            return choice("fp16", "the GPU has no bf16 support, so fp16.")
        return choice(requested, f"{requested} as configured.")
    if kind != "cpu":  # mps, xpu: no measurement behind an automatic choice yet
        if requested == "auto":
            return choice("no", f"no automatic reduced precision on {kind}; float32.")
        return choice(requested, f"{requested} as configured.")

    # the CPU
    if requested == "fp16":
        return choice("no", "fp16 autocast is not supported on the CPU, so float32.")
    hardware = has_bf16_hardware(info)
    probing = probe_enabled()
    fixed = os.environ.get(AUTO_ENV, "").strip()
    if requested == "auto" and fixed:
        if fixed not in ("no", "bf16"):
            raise ValueError(f"environment variable {AUTO_ENV} must be 'no' or 'bf16', got {fixed!r}")
        return choice(fixed, f"fixed by {AUTO_ENV}={fixed}.")
    if requested == "auto":
        if not hardware:
            return choice("no", f"the CPU has no bf16 matrix units ({_describe_cpu(info)}), so float32.")
        if not probing:
            if "amx_bf16" in info["flags"]:
                return choice("bf16", f"the CPU has AMX bf16 units ({PROBE_ENV}=0: not measured).")
            return choice("no", f"avx512_bf16 without AMX and {PROBE_ENV}=0: bf16 gain not measured, so float32.")
        speedup = probe_bf16_speedup()
        if speedup >= MIN_SPEEDUP:
            return choice("bf16", f"bf16 autocast measured {speedup:.2f}x faster than float32 on this CPU.", speedup)
        return choice("no", f"bf16 autocast measured only {speedup:.2f}x the float32 speed on this CPU "
                            f"(needs {MIN_SPEEDUP}x), so float32.", speedup)

    # requested == "bf16" on the CPU: keep it, but say what it costs where it is slow
    speedup = probe_bf16_speedup() if probing else None
    where = (f"a CPU without bf16 matrix units ({_describe_cpu(info)})" if not hardware
             else f"this CPU ({_describe_cpu(info)})")
    if speedup is None and not hardware:
        warnings.warn(f"train.mixed_precision=bf16 on {where}: bf16 autocast is typically ~10x slower than float32 "
                      f"on such CPUs (not measured: {PROBE_ENV}=0); use 'auto' or 'no'", RuntimeWarning,
                      stacklevel=2)
        return choice("bf16", "bf16 as configured, on a CPU without bf16 matrix units (not measured).")
    if speedup is not None and speedup < 1.0:
        warnings.warn(f"train.mixed_precision=bf16 on {where}: bf16 autocast measured {1 / speedup:.1f}x slower "
                      f"than float32 here; use 'auto' or 'no'", RuntimeWarning, stacklevel=2)
        return choice("bf16", f"bf16 as configured, although measured {1 / speedup:.1f}x slower than float32 here.",
                      speedup)
    measured = f" (measured {speedup:.2f}x the float32 speed)" if speedup is not None else ""
    return choice("bf16", f"bf16 as configured{measured}.", speedup)


_logged: set = set()


def log_choice(choice: PrecisionChoice) -> None:
    """One line per distinct choice per process (main process only for the stderr copy)."""
    key = (choice.requested, choice.precision, choice.reason)
    if key in _logged:
        return
    _logged.add(key)
    line = (f"mixed precision: requested {choice.requested!r} -> {choice.precision!r}: {choice.reason} "
            f"[CPU: {choice.cpu_info.get('model')}]")
    logger.info(line)
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        print(f"diffalign: {line}", file=sys.stderr)
