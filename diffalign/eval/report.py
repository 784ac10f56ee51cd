"""The human-readable side of ``diffalign eval samples``: an image grid, reward plots and report.md.

Everything here reads the report dictionary that ``diffalign.eval.samples`` writes as report.json,
so the markdown never shows a number the JSON does not hold.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from diffalign.rewards.prompts import prompt_key


def save_grid(images: torch.Tensor, path: str, per_row: int, min_side: int = 96) -> Optional[str]:
    """Images (N, 3, H, W) in [0, 1] as one PNG, ``per_row`` per row (one row per prompt). Small images
    are enlarged (nearest neighbour, whole multiples) to at least ``min_side`` so a 32-px sample is visible.
    Returns the path, or None when the samples are not RGB / grey images."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        return None
    from PIL import Image
    from torchvision.utils import make_grid
    x = images.detach().float().cpu().clamp(0, 1)
    scale = max(1, -(-min_side // max(x.shape[-2:])))  # ceil division
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    grid = make_grid(x, nrow=max(1, per_row), padding=2, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_rewards(report: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """One PNG per reward: a histogram of the per-sample scores and the per-prompt means (± std).
    Returns {reward name: file name relative to out_dir}."""
    import matplotlib
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt
    files = {}
    samples = report["samples"]
    for name, stats in report["rewards"].items():
        scores = [s["rewards"][name] for s in samples]
        prompts = list(stats["per_prompt"])
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        left.hist(scores, bins=min(30, max(5, len(scores) // 2)), color="#4c72b0")
        left.axvline(stats["mean"], color="k", linestyle="--", label=f"mean {stats['mean']:.4g}")
        left.set_xlabel(name)
        left.set_ylabel("samples")
        left.legend()
        means = [stats["per_prompt"][p]["mean"] for p in prompts]
        stds = [stats["per_prompt"][p]["std"] for p in prompts]
        # points with error bars, not bars from 0: rewards are often negative or differ in the third digit
        right.errorbar(means, range(len(prompts)), xerr=stds, fmt="o", color="#dd8452", ecolor="k", capsize=3)
        right.set_yticks(range(len(prompts)))
        right.set_yticklabels([p if len(p) <= 40 else p[:37] + "..." for p in prompts], fontsize=8)
        right.invert_yaxis()
        right.set_xlabel(f"{name}: mean ± std per prompt")
        fig.tight_layout()
        fname = f"reward_{_safe(name)}.png"
        fig.savefig(os.path.join(out_dir, fname), dpi=100)
        plt.close(fig)
        files[name] = fname
    return files


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(report: Dict[str, Any], out_dir: str, grid: Optional[str], plots: Dict[str, str]) -> str:
    """OUT/report.md: the summary table, per-prompt rewards, the grid and the plots. Returns its path."""
    lines: List[str] = ["# Sample evaluation", ""]
    model = report["model"]
    lines += [f"- model: `{model['config']}`" + (f", checkpoint `{model['checkpoint']}`" if model.get("checkpoint") else ""),
              f"- {len(report['prompts'])} prompts x {report['samples_per_prompt']} samples, seed {report['seed']} "
              f"(sample seeds in report.json)", ""]
    lines += ["| metric | value |", "|---|---|"]
    for name, stats in report["rewards"].items():
        lines.append(f"| reward `{_cell(name)}` | {_fmt(stats['mean'])} ± {_fmt(stats['std'])} |")
    if report.get("clip_score") is not None:
        lines.append(f"| CLIP score | {_fmt(report['clip_score']['mean'])} ± {_fmt(report['clip_score']['std'])} |")
    if report.get("fid") is not None:
        lines.append(f"| FID ({report['fid_samples']['real']} real / {report['fid_samples']['generated']} generated) | "
                     f"{_fmt(report['fid'])} |")
    if report.get("kid") is not None:
        lines.append(f"| KID | {_fmt(report['kid']['mean'])} ± {_fmt(report['kid']['std'])} |")
    if report.get("inception_score") is not None:
        lines.append(f"| Inception score | {_fmt(report['inception_score']['mean'])} ± "
                     f"{_fmt(report['inception_score']['std'])} |")
    for kind, div in (report.get("diversity") or {}).items():
        if div is not None:
            lines.append(f"| diversity ({kind}, {div['metric']}) | {_fmt(div['mean'])} |")
    if report.get("feature_network"):
        lines.append(f"| feature network | `{_cell(report['feature_network'])}` |")
    lines.append("")
    if report["rewards"]:
        names = list(report["rewards"])
        lines += ["## Rewards per prompt", "", "| prompt | " + " | ".join(f"`{_cell(n)}`" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for p in map(prompt_key, report["prompts"]):  # per_prompt is keyed like this (mapping items: sorted JSON)
            row = [f"{_fmt(report['rewards'][n]['per_prompt'][p]['mean'])} ± "
                   f"{_fmt(report['rewards'][n]['per_prompt'][p]['std'])}" for n in names]
            lines.append(f"| {_cell(p)} | " + " | ".join(row) + " |")
        lines.append("")
    if grid:
        lines += ["## Samples", "", "One row per prompt (in the order above), one column per seed.", "",
                  f"![samples]({os.path.basename(grid)})", ""]
    for name, fname in plots.items():
        lines += [f"## Reward `{name}`", "", f"![{name}]({fname})", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
