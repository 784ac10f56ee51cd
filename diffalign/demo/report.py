"""The demo's output folder: report.json, report.md, grid.png, reward_curve.png, samples/.

Generic over what made the "after" images (a trained algorithm or an inference-time method): the
report names it with whatever label keys it carries (``algo``, ``method``, ``budget``...).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

GRID_COLUMNS = 8
LABEL_KEYS = ("algo", "method", "budget")


def save_samples(output: str, prompts: Sequence[str], seeds: Sequence[int], before: torch.Tensor,
                 after: torch.Tensor, correct: Optional[Dict[str, Sequence[bool]]] = None) -> Dict[str, dict]:
    """samples/{before,after}/NNNN.png (uint8 (B, H, W, 3) as given) and samples/prompts.json (file -> prompt,
    seed, and with ``correct`` ({"before": [...], "after": [...]}) the reward's verdict on it)."""
    from PIL import Image
    index: Dict[str, dict] = {}
    for stage, images in (("before", before), ("after", after)):
        folder = os.path.join(output, "samples", stage)
        os.makedirs(folder, exist_ok=True)
        for i, (image, prompt, seed) in enumerate(zip(images.numpy(), prompts, seeds)):
            name = f"{stage}/{i:04d}.png"
            Image.fromarray(image).save(os.path.join(output, "samples", name))
            index[name] = {"prompt": prompt, "seed": int(seed)}
            if correct is not None:
                index[name]["correct"] = bool(correct[stage][i])
    with open(os.path.join(output, "samples", "prompts.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def _grid_indices(prompts: Sequence[str], n: int) -> List[int]:
    """The first sample of each of the first ``n`` distinct prompts."""
    seen, out = set(), []
    for i, p in enumerate(prompts):
        if p not in seen:
            seen.add(p)
            out.append(i)
        if len(out) == n:
            break
    return out


def _wrap(text: str, width: int = 16) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def save_grid(path: str, prompts: Sequence[str], before: torch.Tensor, after: torch.Tensor,
              before_scores: Sequence[float], after_scores: Sequence[float], title: str) -> None:
    """Before (top row) and after (bottom row) for up to GRID_COLUMNS prompts, prompt and reward on each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    idx = _grid_indices(prompts, GRID_COLUMNS)
    fig, axes = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 4.2), squeeze=False)
    for col, i in enumerate(idx):
        for row, (images, scores, name) in enumerate(((before, before_scores, "before"), (after, after_scores, "after"))):
            ax = axes[row][col]
            ax.imshow(images[i].numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(f"reward {scores[i]:.2f}", fontsize=7)
            if row == 0:
                ax.set_title(_wrap(prompts[i]), fontsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_curve(path: str, curve: Sequence[dict], before: float, after: float, title: str) -> None:
    """Mean reward per epoch/iteration against seconds, with the held-out before/after reward as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    pts = [(c["seconds"], c["reward"]) for c in curve if "reward" in c and "seconds" in c]
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker=".", label="training reward (mean per epoch)")
    ax.axhline(before, color="gray", linestyle="--", label=f"held-out reward before ({before:.3f})")
    ax.axhline(after, color="green", linestyle="--", label=f"held-out reward after ({after:.3f})")
    ax.set_xlabel("seconds")
    ax.set_ylabel("compositional reward")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(report: dict) -> str:
    label = ", ".join(f"{k} {report[k]}" for k in LABEL_KEYS if k in report)
    b, a = report["before"], report["after"]
    keys = [k for k in b if k not in ("n",)]
    lines = [f"# diffalign demo: {label}", "",
             f"Held-out compositional accuracy {_pct(b.get('accuracy'))} -> {_pct(a.get('accuracy'))} "
             f"({report['eval']['samples']} samples of {report['eval']['prompts']} held-out prompts, same seeds "
             f"before and after; after stage {report['seconds']['after_stage']:.0f} s).", "",
             "Each caption kind (single object, count, relation) has the same number of samples, so accuracy is the "
             "mean of the three kinds' accuracies, as GenEval's overall score is the mean of its tasks'; "
             "`accuracy_by_caption` weighs every held-out caption equally instead (relations are most of them).", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    paired = report.get("paired", {})
    if "all" in paired:
        p = paired["all"]
        lo, hi = p["ci95"]
        lines[4:4] = [f"Change {100 * p['delta']:+.1f} points, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]; "
                      f"{p['fixed']} samples fixed, {p['broken']} broken; McNemar exact p = {p['mcnemar_p']:.2g}. "
                      "Per kind: " + ", ".join(
                          f"{k} {100 * v['delta']:+.1f} [{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}] "
                          f"(p = {v['mcnemar_p']:.2g})" for k, v in paired.items() if k != "all") + ".", ""]
    for k in keys:
        fmt = (lambda v: f"{v:.3f}") if k == "reward" else _pct
        change = a.get(k, 0) - b[k] if k in a else None
        lines.append(f"| {k} | {fmt(b[k])} | {fmt(a.get(k))} | "
                     f"{'-' if change is None else ('%+.3f' % change if k == 'reward' else '%+.1f pts' % (100 * change))} |")
    lines += ["", "![before/after](grid.png)", "", "![reward curve](reward_curve.png)", "",
              "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()), ""]
    hw, prec = report.get("hardware"), report.get("precision")
    if hw and prec:
        lines += [f"Machine: {hw.get('model')} ({', '.join(hw.get('flags', [])) or 'no listed flags'}), "
                  f"{report.get('torch_threads')} torch threads; precision {prec['chosen']} "
                  f"(requested {prec['requested']}: {prec['reason']})", ""]
    lines += ["Every sample is in `samples/before` and `samples/after`; `samples/prompts.json` maps each file to "
              "its prompt, seed and verdict, so the images can be judged with any other detector."]
    if report.get("quick"):
        lines += ["", "**--quick run**: a few prompts and training steps; the numbers only check the pipeline."]
    return "\n".join(lines) + "\n"


def modality_markdown(report: dict, unit: str, units: str, what: str, kinds_note: str, picture: str,
                      files_note: str) -> str:
    """report.md of a video or editing demo run (the same sections; the modality supplies its words): ``unit`` what
    accuracy counts ("video", "edit"), ``units`` the samples ("clips", "edits"), ``what`` the held-out set, ``kinds_note`` how accuracy weighs the kinds, ``picture`` the
    before/after figure's markdown, ``files_note`` where the samples are."""
    b, a = report["before"], report["after"]
    p = report["paired"]["all"]
    lines = [f"# diffalign demo {report['modality']}: algo {report['algo']}", "",
             f"Held-out {unit} accuracy {_pct(b['accuracy'])} -> {_pct(a['accuracy'])} ({report['eval']['samples']} {units} "
             f"of {report['eval']['prompts']} {what}, same seeds before and after; alignment "
             f"{report['seconds']['after_stage']:.0f} s).", "",
             f"Change {100 * p['delta']:+.1f} points, 95% CI [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}]; "
             f"{p['fixed']} {units} fixed, {p['broken']} broken; McNemar exact p = {p['mcnemar_p']:.2g}. Per kind: "
             + ", ".join(f"{k} {100 * v['delta']:+.1f} (p = {v['mcnemar_p']:.2g})"
                         for k, v in report["paired"].items() if k != "all") + ".", "",
             kinds_note, "", "| metric | before | after | change |", "|---|---|---|---|"]
    for k in (k for k in b if k != "n"):
        if k == "reward":
            lines.append(f"| reward | {b[k]:.3f} | {a[k]:.3f} | {a[k] - b[k]:+.3f} |")
        else:
            lines.append(f"| {k} | {_pct(b[k])} | {_pct(a.get(k))} | {100 * (a.get(k, 0) - b[k]):+.1f} pts |")
    hw, prec = report["hardware"], report["precision"]
    lines += ["", picture, "", "![reward curve](reward_curve.png)", "",
              "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()), "",
              f"Machine: {hw.get('model')} ({', '.join(hw.get('flags', [])) or 'no listed flags'}), "
              f"{report['torch_threads']} torch threads; precision {prec['chosen']} (requested {prec['requested']}: "
              f"{prec['reason']})", "", files_note]
    if report.get("quick"):
        lines += ["", f"**--quick run**: a few {units} and training steps; the numbers only check the pipeline."]
    return "\n".join(lines) + "\n"


def write_outputs(output: str, report: dict, prompts: Sequence[str], seeds: Sequence[int], before: torch.Tensor,
                  after: torch.Tensor, before_correct: Optional[Sequence[bool]] = None,
                  after_correct: Optional[Sequence[bool]] = None) -> None:
    """Everything the demo writes, from the measured report and the uint8 images (and per-sample verdicts)."""
    from diffalign.rewards.compositional import compositional_reward
    correct = None if before_correct is None or after_correct is None else \
        {"before": before_correct, "after": after_correct}
    save_samples(output, prompts, seeds, before, after, correct)
    scores = {}
    for stage, images in (("before", before), ("after", after)):
        scores[stage] = compositional_reward(images.float().permute(0, 3, 1, 2) / 255, list(prompts)).tolist()
    label = ", ".join(f"{k} {report[k]}" for k in LABEL_KEYS if k in report)
    acc_b, acc_a = report["before"].get("accuracy", 0.0), report["after"].get("accuracy", 0.0)
    save_grid(os.path.join(output, "grid.png"), prompts, before, after, scores["before"], scores["after"],
              f"{label}: held-out accuracy {_pct(acc_b)} -> {_pct(acc_a)}")
    save_curve(os.path.join(output, "reward_curve.png"), report["curve"], float(np.mean(scores["before"])),
               float(np.mean(scores["after"])), f"{label}: compositional reward")
    report["files"] = {"grid": "grid.png", "reward_curve": "reward_curve.png", "samples": "samples",
                       "prompts": "samples/prompts.json", "markdown": "report.md"}
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(markdown(report))
