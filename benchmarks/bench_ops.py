"""Kernel benchmark of the fused ops against the eager reference and torch.compile(reference).

For each op, shape and dtype it times the forward and the forward+backward (``op(...).sum().backward()``,
the loss ops ``.backward()``, gradients reset between calls) of three providers: ``eager`` (the pure-
PyTorch reference, written as the public trainers write it), ``compile`` (torch.compile of that
reference, dynamic shapes) and ``diffalign`` (the compiled extension). In the same run it measures the
copy bandwidth and the bare-autograd floor ``(m*2).sum().backward()`` and prints each time over both.

Two timings per case: the median (and p20/p80) of ``triton.testing.do_bench`` on CUDA (a per-call
timer on CPU), and the wall time per call in a tight loop with one sync at the end.

    python benchmarks/bench_ops.py                    # CPU shapes, fp32
    python benchmarks/bench_ops.py --device cuda      # S/M/L/XL shapes in fp32 and bf16
    python benchmarks/bench_ops.py --json out.json --ops logprob,dpo --shapes S,M
    python benchmarks/bench_ops.py --masks none,full,positions,bool --runs 3   # masked rows, A/B

Masked rows (``--masks``, row key ``mask`` naming the form; 0/1 with about a quarter zeros):
``full`` a float mask of x's shape and dtype (read as it is, one more input stream); ``positions`` a bool
mask with one flag per position, x's shape with its last dim 1 ((16, 4, 128, 1) at M: the (B, N, 1) of a
token / atom / horizon mask), read in place as one weight per run of the last dim; ``bool`` a bool mask
of x's shape, read in place as bytes. With ``--runs K`` every case is timed K times, its mask forms
back to back in each round (interleaved A/B), and a row's p50 is the minimum over the rounds (all in
``runs_p50_us``).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch

import diffalign.ops as ops
from diffalign.ops import reference as R

CUDA_SHAPES = {"S": (16, 4, 64, 64), "M": (16, 4, 128, 128), "L": (16, 16, 128, 128), "XL": (32, 16, 4, 128, 128)}
# CPU "T" is tiny on purpose: its times are host-side dispatch (Python wrapper, op dispatch, autograd,
# allocations), the part that bounds the GPU's S and M shapes, measurable without a GPU.
CPU_SHAPES = {"T": (2, 4, 8, 8), "S": (16, 4, 32, 32), "M": (16, 4, 128, 128)}


# ----------------------------------------------------------------------------- the ops ----
def _inputs(shape, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda: torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    b = shape[0]
    acc = torch.float32
    return dict(
        x=mk(), mean=mk().requires_grad_(), ref=mk(), target=mk(), noise=mk(),
        std=(torch.rand(b, generator=g) + 0.5).to(device=device, dtype=acc),
        alpha_t=torch.linspace(0.3, 0.6, b).to(device=device, dtype=acc),
        alpha_prev=torch.linspace(0.5, 0.8, b).to(device=device, dtype=acc),
        sigma=torch.linspace(0.9, 0.4, b).to(device=device, dtype=acc),
        sigma_next=torch.linspace(0.85, 0.35, b).to(device=device, dtype=acc),  # made here, not in the timed call
        desirable=(torch.arange(b) % 2 == 0).to(device),
        mask=_masks(shape, dtype, device))


def _masks(shape, dtype, device):
    """The masked rows' masks by form (see the module doc), about a quarter zeros each."""
    g = torch.Generator(device="cpu").manual_seed(1)
    keep = torch.rand(shape, generator=g) > 0.25
    positions = torch.rand(tuple(shape[:-1]) + (1,), generator=g) > 0.25
    return dict(full=keep.to(device=device, dtype=dtype), bool=keep.to(device), positions=positions.to(device))


def _std4(std, like):
    return std.view((-1,) + (1,) * (like.ndim - 1))


# Each op: fwd(provider_fn, inputs) -> tensor to reduce; `full` reduces it and calls backward. Each lambda
# takes the mask as `m` (None for the unmasked rows).
# bytes: minimal HBM traffic of our algorithm for (forward, forward+backward), in units of N elements
# (the baseline's roofline counted 3N for logprob/kl and 4N for dpo fwd+bwd; ours re-reads the
# inputs in the backward: see README).
OPS = {
    "logprob": dict(
        ext=lambda i, m=None: ops.gaussian_logprob(i["x"], i["mean"], i["std"], mask=m),
        ref=lambda i, m=None: R.gaussian_logprob(i["x"], i["mean"], _std4(i["std"], i["x"]), mask=m),
        traffic=(2, 5)),
    "kl": dict(
        ext=lambda i, m=None: ops.gaussian_kl(i["mean"], i["ref"], i["std"], mask=m),
        ref=lambda i, m=None: R.gaussian_kl(i["mean"], i["ref"], _std4(i["std"], i["x"]), mask=m),
        traffic=(2, 5)),
    "dpo": dict(
        ext=lambda i, m=None: ops.diffusion_dpo_loss(i["mean"], i["ref"], i["target"], mask=m),
        ref=lambda i, m=None: R.diffusion_dpo_loss(i["mean"], i["ref"], i["target"], mask=m)[0],
        traffic=(3, 6)),
    "kto": dict(
        ext=lambda i, m=None: ops.diffusion_kto_loss(i["mean"], i["ref"], i["target"], i["desirable"], mask=m),
        ref=lambda i, m=None: R.diffusion_kto_loss(i["mean"], i["ref"], i["target"], i["desirable"], mask=m)[0],
        traffic=(3, 6)),
    # a training-time rescoring step: log-prob of a stored x_{t-1} given the model output (grad to it)
    "ddim_step": dict(
        ext=lambda i, m=None: ops.ddim_step_with_logprob(i["mean"], i["x"], i["alpha_t"], i["alpha_prev"], 1.0,
                                                         prev_sample=i["target"], mask=m).log_prob,
        ref=lambda i, m=None: R.ddim_step_with_logprob(i["mean"], i["x"], i["alpha_t"], i["alpha_prev"], 1.0,
                                                       i["target"], None, "epsilon", m)[1],
        traffic=(4, 8)),
    "flow_step": dict(
        ext=lambda i, m=None: ops.flow_sde_step_with_logprob(i["mean"], i["x"], i["sigma"], i["sigma_next"],
                                                             prev_sample=i["target"], mask=m).log_prob,
        ref=lambda i, m=None: R.flow_sde_step_with_logprob(i["mean"], i["x"], i["sigma"], i["sigma_next"], 0.7,
                                                           i["target"], None, m)[1],
        traffic=(4, 8)),
}
MASKS = ("none", "full", "positions", "bool")  # --masks: unmasked rows, and masked rows by form (module doc)


def _mask_bytes(name, esz):
    """Bytes per element of x that a mask form adds to each pass's traffic."""
    return {"none": 0.0, "full": float(esz), "bool": 1.0, "positions": 0.0}[name]


# --------------------------------------------------------------------------- timing ----
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_quantiles(fn, device, grad_to_none, warmup_ms=25, rep_ms=100):
    """(p20, p50, p80) in microseconds."""
    if device == "cuda":
        import triton.testing as tt
        q = tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.2, 0.5, 0.8])
        return tuple(v * 1e3 for v in q)
    samples, t_end = [], time.perf_counter() + rep_ms / 1e3
    for _ in range(3):
        fn()
    while time.perf_counter() < t_end or len(samples) < 5:
        for t in grad_to_none or []:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    qs = statistics.quantiles(samples, n=10)
    return qs[1], statistics.median(samples), qs[7]


def wall_per_call(fn, device, grad_to_none, n=200):
    for _ in range(min(10, n)):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        for t in grad_to_none or []:
            t.grad = None
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / n * 1e6


def copy_bandwidth(device):
    n = (1 << 30) if device == "cuda" else (1 << 26)
    a = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    b = torch.empty_like(a)
    _, t, _ = time_quantiles(lambda: b.copy_(a), device, None)
    return 2 * n / (t * 1e-6)  # bytes/s, read + write


def _provider_fn(spec, provider, compiled, op_name, dtype_name, mask_name):
    if provider == "diffalign":
        return spec["ext"]
    if provider == "eager":
        return spec["ref"]
    key = (op_name, dtype_name, mask_name)
    if key not in compiled:
        compiled[key] = torch.compile(spec["ref"], dynamic=True)
    return compiled[key]


def _cpu_name():
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _make_fn(fwd, inputs, mode, mask=None):
    if mode == "forward":
        def run():
            with torch.no_grad():
                fwd(inputs, mask)
        return run

    def run():
        out = fwd(inputs, mask)
        (out if out.ndim == 0 else out.sum()).backward()
    return run


# ----------------------------------------------------------------------------- main ----
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--shapes", default=None, help="comma-separated subset of the device's shapes")
    p.add_argument("--dtypes", default=None, help="float32,bfloat16 (default: both on CUDA, float32 on CPU)")
    p.add_argument("--providers", default="eager,compile,diffalign")
    p.add_argument("--modes", default="forward,full")
    p.add_argument("--masks", default="none", help="comma-separated subset of " + ",".join(MASKS) +
                   " (full / positions / bool: every op also with that mask, see the module doc)")
    p.add_argument("--runs", type=int, default=1, help="rounds per case, the mask forms back to back in each;"
                   " p50 = the minimum over rounds")
    p.add_argument("--rep-ms", type=float, default=100.0, help="timing window per case for the quantiles")
    p.add_argument("--wall-calls", type=int, default=200, help="calls per tight-loop wall-time measurement")
    p.add_argument("--json", default=None, help="write the rows and machine facts to this file")
    args = p.parse_args(argv)

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if not ops.extension_available():
        print(f"WARNING: extension not available ({ops.unavailable_reason()}); 'diffalign' times the reference")
    shapes_all = CUDA_SHAPES if dev == "cuda" else CPU_SHAPES
    shape_names = args.shapes.split(",") if args.shapes else list(shapes_all)
    dtypes = (args.dtypes.split(",") if args.dtypes else (["float32", "bfloat16"] if dev == "cuda" else ["float32"]))
    providers = args.providers.split(",")
    modes = args.modes.split(",")
    op_names = args.ops.split(",")
    masks = args.masks.split(",")
    for name in masks:
        if name not in MASKS:
            sys.exit(f"--masks: unknown mask {name!r}; choose from {', '.join(MASKS)}")
    for name in op_names:
        if name not in OPS:
            sys.exit(f"--ops: unknown op {name!r}; choose from {', '.join(OPS)}")
    for name in shape_names:
        if name not in shapes_all:
            sys.exit(f"--shapes: unknown shape {name!r} for {dev}; choose from {', '.join(shapes_all)}")

    device_name = torch.cuda.get_device_name(0) if dev == "cuda" else _cpu_name()
    bw = copy_bandwidth(dev)
    print(f"device: {device_name} | torch {torch.__version__} | extension: {ops.extension_available()} "
          f"(cuda kernels: {ops.cuda_kernels_built()}) | copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    meta = dict(device=device_name, device_type=dev, torch=torch.__version__, copy_GBps=bw / 1e9,
                extension=ops.extension_available(), threads=torch.get_num_threads())
    rows = []
    compiled = {}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        esz = torch.tensor([], dtype=dtype).element_size()
        for shape_name in shape_names:
            shape = shapes_all[shape_name]
            n = math.prod(shape)
            inputs = _inputs(shape, dtype, dev)
            m = inputs["mean"]
            floor_q = time_quantiles(lambda: (m * 2).sum().backward(), dev, [m], rep_ms=args.rep_ms)
            floor_wall = wall_per_call(lambda: (m * 2).sum().backward(), dev, [m], args.wall_calls)
            meta.setdefault("autograd_floor_us", {})[f"{shape_name}/{dtype_name}"] = floor_q[1]
            for op_name in op_names:
                spec = OPS[op_name]
                for mode in modes:
                    for provider in providers:
                        # the mask forms of one case run back to back in each round (interleaved A/B)
                        timed = {name: [] for name in masks}
                        for _ in range(max(1, args.runs)):
                            for mask_name in masks:
                                mask = None if mask_name == "none" else inputs["mask"][mask_name]
                                fn = _make_fn(_provider_fn(spec, provider, compiled, op_name, dtype_name, mask_name),
                                              inputs, mode, mask)
                                try:
                                    q = time_quantiles(fn, dev, [m], rep_ms=args.rep_ms)
                                    wall = wall_per_call(fn, dev, [m], args.wall_calls)
                                except Exception as exc:  # report, keep going: one failing provider is a finding
                                    print(f"  {op_name} {provider} {mode} {shape_name} {dtype_name} "
                                          f"mask={mask_name}: FAILED {exc}", flush=True)
                                    continue
                                timed[mask_name].append((q, wall))
                        for mask_name in masks:
                            if not timed[mask_name]:
                                continue
                            q, wall = min(timed[mask_name], key=lambda t: t[0][1])
                            # traffic of the unmasked algorithm plus what the mask form adds per pass
                            passes = 1 if mode == "forward" else 2
                            traffic = spec["traffic"][0 if mode == "forward" else 1] * esz + \
                                passes * _mask_bytes(mask_name, esz)
                            roof_us = traffic * n / bw * 1e6
                            row = dict(kernel=op_name, provider=provider, mode=mode, mask=mask_name,
                                       shape=shape_name, x=n, dtype=dtype_name, p20_us=q[0], p50_us=q[1],
                                       p80_us=q[2], wall_us=wall, roofline_us=roof_us, floor_us=floor_q[1],
                                       floor_wall_us=floor_wall, device=device_name,
                                       runs_p50_us=[t[0][1] for t in timed[mask_name]])
                            rows.append(row)
                            print(f"  {op_name:10}{provider:10}{mode:8}{mask_name:10}{shape_name:4}{dtype_name:9} "
                                  f"p50 {q[1]:9.1f} us  "
                                  f"wall {wall:9.1f} us  x roof {q[1] / roof_us:6.2f}  x floor {q[1] / floor_q[1]:5.2f}",
                                  flush=True)
            del inputs
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta, rows=rows), f, indent=1)
        print(f"wrote {args.json}")
    return rows


def print_table(rows):
    """One line per (op, mode, shape, dtype): each provider's median, and ours over floor/roofline."""
    by_key = {}
    for r in rows:
        key = (r["kernel"], r["mode"], r.get("mask", "none"), r["shape"], r["dtype"])
        by_key.setdefault(key, {})[r["provider"]] = r
    print()
    print(f"{'op':10}{'mode':8}{'mask':10}{'shape':6}{'dtype':9}{'eager':>9}{'compile':>9}{'ours':>9}{'ours wall':>10}"
          f"{'floor':>8}{'roof':>8}{'x floor':>8}{'x roof':>8}{'vs eager':>9}{'vs comp':>8}")
    for (op, mode, mask, shape, dtype), prov in by_key.items():
        get = lambda k: prov[k]["p50_us"] if k in prov else float("nan")
        ours = prov.get("diffalign")
        anyrow = next(iter(prov.values()))
        print(f"{op:10}{mode:8}{mask:10}{shape:6}{dtype:9}{get('eager'):9.1f}{get('compile'):9.1f}{get('diffalign'):9.1f}"
              f"{(ours['wall_us'] if ours else float('nan')):10.1f}{anyrow['floor_us']:8.1f}{anyrow['roofline_us']:8.1f}"
              f"{get('diffalign') / anyrow['floor_us']:8.2f}{get('diffalign') / anyrow['roofline_us']:8.2f}"
              f"{get('eager') / get('diffalign'):9.2f}{get('compile') / get('diffalign'):8.2f}")


if __name__ == "__main__":
    main()
