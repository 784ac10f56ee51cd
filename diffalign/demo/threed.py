"""``diffalign demo threed``: text-to-3D on a CPU, plain SDS against DreamReward's DreamFL, measured on 16 views.

A small radiance field (the ``threed`` modality, :mod:`diffalign.modalities.threed`) is optimised at a low render
resolution against the shipped image demo model for one prompt of the shapes world ("a red circle" by default;
``--prompt``), twice from the same seed with the same steps: once with plain score distillation
(``diffalign/configs/demo_threed_sds.yaml``) and once with DreamFL, SDS plus ``reward_weight`` times the shapes
reward of every rendered view (``demo_threed_dreamfl.yaml``). Each result is then rendered from
:data:`EVAL_VIEWS` cameras evenly spaced all around it (one elevation, distance and field of view) and judged by
:func:`diffalign.eval.multiview.multiview_accuracy`: the fraction of views whose render satisfies the prompt
under the compositional reward, with its interval over views; the two methods are compared view by view
(:func:`diffalign.eval.multiview.paired_views`, McNemar).

Output (the image demo's report schema: ``modality``, ``algo``, ``seconds``, ``hardware``, ``before`` = SDS and
``after`` = DreamFL, each with ``accuracy`` and ``ci95`` over views): ``report.json``, ``report.md``,
``curves.png`` (loss and reward per epoch of both runs), ``turntable_<method>.png`` / ``.gif``, every evaluated view
as ``samples/<method>/NNN.png`` with ``samples/prompts.json`` (file -> prompt, method, azimuth, elevation, seed),
the meshes ``mesh_<method>.ply`` and the trained fields under ``train_<method>/``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

DEFAULT_THREED_ALGO = "dreamfl"          # the "after" method; "before" is always plain SDS
BASELINE = "sds"
# what the CLI's summary line calls the accuracy: the views are all around the trained object, not held out
ACCURACY_LABEL = "multi-view accuracy (views all around the object)"
CONFIG_PREFIX = "threed_"                # demo_threed_<method>.yaml among the demo configs
DEFAULT_PROMPT = "a red circle"
SAMPLES_PER_KIND = 16                    # evaluation views all around (diffalign.eval.multiview.MIN_VIEWS)
# the evaluation cameras: inside the training ranges of the shipped configs (elevation 0-30, distance 2.5-3,
# fov 40-50), one elevation so that the views differ by azimuth only
EVAL_CAMERA = {"elevation": 15.0, "distance": 2.75, "fov": 45.0}
QUICK_OVERRIDES = {"epochs": 1, "sampling.num_batches_per_epoch": 2, "train.batch_size": 1}
MESH_RESOLUTION = 48
QUICK_MESH_RESOLUTION = 16


def threed_algos() -> List[str]:
    """Methods with a shipped demo config (diffalign/configs/demo_threed_<method>.yaml)."""
    from diffalign.demo.run import available_algos
    return [a[len(CONFIG_PREFIX):] for a in available_algos("threed")]


def threed_config(method: str, prompt: str, output: str, seed: int, overrides: Optional[Dict[str, Any]] = None):
    """The shipped ``demo_threed_<method>.yaml`` with the run's prompt, seed, output folder and overrides."""
    import yaml

    from diffalign.config import load_config
    from diffalign.demo.run import demo_config_path
    with open(demo_config_path(CONFIG_PREFIX + method), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data.update(output_dir=output, seed=int(seed), prompts={"list": [prompt]})
    return load_config(data=data, overrides=[f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()])


def check_prompt(prompt: str) -> str:
    """An error message naming the allowed words if ``prompt`` is not a caption of the shapes world, else ''."""
    from diffalign.data.shapes import COLORS, COUNTS, RELATIONS, SHAPES, parse_caption
    try:
        parse_caption(prompt)
    except ValueError as exc:
        return (f"--prompt {prompt!r} is not a caption of the shapes world the demo model draws and the "
                f"compositional reward checks ({exc}); a caption is '<count> <colour> <shape>' (e.g. 'a red circle', "
                f"'two blue squares') or '<a colour shape> <relation> <a colour shape>', with count one of "
                f"{list(COUNTS.values())}, colour one of {list(COLORS)}, shape one of {list(SHAPES)} (plural after "
                f"two / three) and relation one of {list(RELATIONS)}")
    return ""


def check_algo(algo: str) -> str:
    """An error message if ``algo`` is not a method the demo can compare with plain SDS, else ''."""
    choices = [a for a in threed_algos() if a != BASELINE]
    if algo == BASELINE:
        return (f"--algo {algo!r} is the baseline the threed demo always runs (its 'before'); choose the method to "
                f"compare with it: {', '.join(choices)}")
    if algo not in choices:
        return f"unknown --algo {algo!r} for threed; choose one of: {', '.join(choices)}"
    return ""


def train_field(cfg, minutes: float):
    """Train with the generator loop; returns (the trained radiance field, the adapter, the per-epoch curve)."""
    from diffalign.trainer import make_trainer
    cfg.train.max_minutes = minutes
    trainer = make_trainer(cfg)
    history = trainer.train()
    curve = [{"seconds": float(m["elapsed_s"]), "epoch": int(m.get("epoch", i)),
              **{k: float(m[k]) for k in ("loss", "reward_mean", "sds_grad_norm") if k in m}}
             for i, m in enumerate(history)]
    for row, m in zip(curve, history):
        if "reward_mean" in row:
            row["reward"] = row["reward_mean"]
        if m.get("stopped_by_budget"):
            row["stopped_by_budget"] = True
    field = trainer.acc.unwrap_model(trainer.modules["generator"])
    return field, trainer.adapter, curve


@torch.no_grad()
def render_views(field, adapter, azimuths: Sequence[float], camera: Dict[str, float] = EVAL_CAMERA,
                 batch: int = 4) -> torch.Tensor:
    """uint8 (N, H, W, 3) renders of the field from ``azimuths`` (degrees) at the evaluation camera, as the prior
    and the reward see them (the adapter's render at the prior's resolution, on the config's background)."""
    from diffalign.modalities.threed.cameras import look_at
    n = len(azimuths)
    az = torch.tensor(list(azimuths), dtype=torch.float32)
    el, dist = torch.full((n,), camera["elevation"]), torch.full((n,), camera["distance"])
    cond = {"camera_to_world": look_at(az, el, dist), "fov": torch.full((n,), camera["fov"]),
            "background": _background(adapter.options.background, n)}
    was = field.training
    field.eval()
    try:
        images = torch.cat([adapter.render_images(field, {k: v[i:i + batch] for k, v in cond.items()}).cpu()
                            for i in range(0, n, batch)])
    finally:
        field.train(was)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def _background(background, n: int) -> torch.Tensor:
    # evaluation needs one fixed background: a "random" training background is judged on black, the demo world's
    colour = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "random": (0.0, 0.0, 0.0)}.get(background, background)
    return torch.tensor([list(colour)] * n, dtype=torch.float32)


def save_views(output: str, method: str, views: torch.Tensor, azimuths: Sequence[float], prompt: str, seed: int,
               correct: Sequence[bool]) -> Dict[str, dict]:
    """``samples/<method>/NNN.png`` and their index entries (file -> prompt, method, azimuth, elevation, seed)."""
    from PIL import Image
    folder = os.path.join(output, "samples", method)
    os.makedirs(folder, exist_ok=True)
    index = {}
    for i, (img, az) in enumerate(zip(views, azimuths)):
        name = f"{method}/{i:03d}.png"
        Image.fromarray(img.numpy()).save(os.path.join(output, "samples", name))
        index[name] = {"prompt": prompt, "method": method, "azimuth": float(az),
                       "elevation": EVAL_CAMERA["elevation"], "seed": int(seed), "correct": bool(correct[i])}
    return index


def save_turntable(output: str, method: str, views: torch.Tensor, duration_ms: int = 120) -> Dict[str, str]:
    """``turntable_<method>.png`` (the views in a row of 8) and ``turntable_<method>.gif`` (looping)."""
    from PIL import Image
    n, h, w, _ = views.shape
    cols = min(n, 8)
    rows = -(-n // cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), 255, np.uint8)
    for i, img in enumerate(views.numpy()):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = img
    scale = max(1, 256 // max(h, w))
    png, gif = f"turntable_{method}.png", f"turntable_{method}.gif"
    Image.fromarray(grid).resize((grid.shape[1] * scale // 2, grid.shape[0] * scale // 2), Image.NEAREST).save(
        os.path.join(output, png))
    frames = [Image.fromarray(v).resize((w * scale, h * scale), Image.NEAREST) for v in views.numpy()]
    frames[0].save(os.path.join(output, gif), save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return {"png": png, "gif": gif}


def save_mesh(output: str, method: str, field, resolution: int) -> Optional[str]:
    """``mesh_<method>.ply`` by the threed modality's exporter (marching cubes on the density); None, with the
    reason printed, when the field holds no surface at the exporter's level (e.g. an untrained --quick field)."""
    from diffalign.modalities.threed.export import export_mesh
    name = f"mesh_{method}.ply"
    try:
        export_mesh(field, os.path.join(output, name), resolution=resolution)
    except ValueError as exc:
        print(f"demo threed: no mesh for {method}: {exc}")
        return None
    return name


def save_curves(path: str, curves: Dict[str, List[dict]], title: str) -> None:
    """Loss and reward per epoch of each method against seconds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method, curve in curves.items():
        for ax, key in zip(axes, ("loss", "reward")):
            pts = [(c["seconds"], c[key]) for c in curve if key in c]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=method)
    axes[0].set_ylabel("SDS loss (per epoch)")
    axes[1].set_ylabel("reward of the rendered views (DreamFL)")
    for ax in axes:
        ax.set_xlabel("seconds")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def threed_markdown(report: dict) -> str:
    """report.md of a threed demo run."""
    from diffalign.demo.report import _pct
    b, a, p = report["before"], report["after"], report["paired"]["all"]
    hw, ev = report["hardware"], report["eval"]
    lines = [f"# diffalign demo threed: {BASELINE} -> {report['algo']}", "",
             f"Prompt {report['prompt']!r}: multi-view accuracy (the fraction of {ev['views']} views evenly spaced "
             f"all around, elevation {ev['camera']['elevation']:g} degrees, whose render satisfies the prompt under "
             f"the compositional reward) {_pct(b['accuracy'])} with plain SDS (95% CI over views "
             f"[{_pct(b['ci95'][0])}, {_pct(b['ci95'][1])}]) -> {_pct(a['accuracy'])} with {report['algo']} "
             f"([{_pct(a['ci95'][0])}, {_pct(a['ci95'][1])}]); same seed ({report['seed']}) and steps.", "",
             f"Change {100 * p['delta']:+.1f} points, 95% CI [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}]; "
             f"{p['fixed']} views fixed, {p['broken']} broken; McNemar exact p = {p['mcnemar_p']:.2g}.", "",
             "| method | accuracy | 95% CI | mean reward | epochs | train s |", "|---|---|---|---|---|---|"]
    for stage, method in (("before", BASELINE), ("after", report["algo"])):
        m, info = report[stage], report["runs"][method]
        lines.append(f"| {method} | {_pct(m['accuracy'])} | [{_pct(m['ci95'][0])}, {_pct(m['ci95'][1])}] | "
                     f"{m['reward']:.3f} | {info['epochs']} | {info['train_seconds']:.0f} |")
    lines += ["", f"Per view ({BASELINE} / {report['algo']}): "
              + " ".join(f"{int(az)}:{'+' if x else '-'}{'+' if y else '-'}"
                         for az, x, y in zip(ev["azimuths"], b["correct"], a["correct"])), ""]
    for method in (BASELINE, report["algo"]):
        lines += [f"![{method} turntable](turntable_{method}.png)", ""]
    lines += ["![loss and reward](curves.png)", "",
              "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()), "",
              f"Machine: {hw.get('model')} ({', '.join(hw.get('flags', [])) or 'no listed flags'}), "
              f"{report['torch_threads']} torch threads; precision float32", "",
              "Every evaluated view is in `samples/<method>/`; `samples/prompts.json` maps each to its prompt, method, "
              "azimuth, elevation and seed. Meshes: " + ", ".join(v for v in report["files"]["meshes"].values() if v)
              + "."]
    if report.get("quick"):
        lines += ["", "**--quick run**: a few training steps; the numbers only check the pipeline."]
    return "\n".join(lines) + "\n"


def run_threed_demo(output: str, algo: str = DEFAULT_THREED_ALGO, quick: bool = False, minutes: float = 10.0,
                    samples_per_kind: int = SAMPLES_PER_KIND, seed: int = 0,
                    overrides: Optional[Dict[str, Any]] = None, prompt: str = DEFAULT_PROMPT) -> dict:
    """SDS, then ``algo`` (DreamFL), each trained within ``minutes`` / 2 and evaluated on ``samples_per_kind``
    views all around; report in ``output``; returns the report."""
    from diffalign.eval.multiview import evaluation_azimuths, multiview_accuracy, paired_views
    from diffalign.trainer.precision import cpu_info
    error = check_algo(algo) or check_prompt(prompt)
    if error:
        raise ValueError(error)
    azimuths = evaluation_azimuths(samples_per_kind)
    extra = dict(QUICK_OVERRIDES if quick else {}, **(overrides or {}))
    t_total = time.perf_counter()
    os.makedirs(output, exist_ok=True)
    seconds: Dict[str, float] = {}
    results: Dict[str, dict] = {}
    index: Dict[str, dict] = {}
    files: Dict[str, Any] = {"turntables": {}, "meshes": {}}
    curves: Dict[str, List[dict]] = {}
    for method in (BASELINE, algo):
        t = time.perf_counter()
        cfg = threed_config(method, prompt, os.path.join(output, f"train_{method}"), seed, extra)
        field, adapter, curve = train_field(cfg, minutes / 2)
        seconds[f"train_{method}"] = time.perf_counter() - t
        t = time.perf_counter()
        views = render_views(field, adapter, azimuths)
        acc = multiview_accuracy(views.numpy(), prompt, azimuths=azimuths)
        seconds[f"eval_{method}"] = time.perf_counter() - t
        index.update(save_views(output, method, views, azimuths, prompt, seed, acc["correct"]))
        files["turntables"][method] = save_turntable(output, method, views)
        files["meshes"][method] = save_mesh(output, method, field, QUICK_MESH_RESOLUTION if quick else MESH_RESOLUTION)
        curves[method] = curve
        results[method] = {"accuracy": acc, "epochs": len(curve), "train_seconds": seconds[f"train_{method}"],
                           "config": os.path.join(output, f"train_{method}", "config.yaml"),
                           "stopped_by_budget": bool(curve and curve[-1].get("stopped_by_budget"))}
    seconds["total"] = time.perf_counter() - t_total
    with open(os.path.join(output, "samples", "prompts.json"), "w") as f:
        json.dump(index, f, indent=1)
    before, after = results[BASELINE]["accuracy"], results[algo]["accuracy"]
    save_curves(os.path.join(output, "curves.png"), curves, f"{prompt!r}: {BASELINE} vs {algo}, seed {seed}")
    files.update(curves="curves.png", samples="samples", prompts="samples/prompts.json", markdown="report.md")
    report = {
        "modality": "threed",
        "algo": algo,
        "baseline": BASELINE,
        "prompt": prompt,
        "seed": seed,
        "before": before,
        "after": after,
        "delta": {"accuracy": after["accuracy"] - before["accuracy"], "reward": after["reward"] - before["reward"]},
        "paired": {"all": paired_views(before["correct"], after["correct"])},
        "seconds": seconds,
        "curve": curves[algo],
        "curves": curves,
        "runs": {m: {k: v for k, v in r.items() if k != "accuracy"} for m, r in results.items()},
        "eval": {"views": len(azimuths), "azimuths": azimuths, "camera": EVAL_CAMERA, "reward": "compositional"},
        "overrides": extra,
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "hardware": cpu_info(),
        "precision": {"requested": "no", "chosen": "float32", "reason": "the threed demo configs train in float32"},
        "files": files,
    }
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(threed_markdown(report))
    return report
