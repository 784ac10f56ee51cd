"""Procedural image preferences with known ground truth (the tiny reward config and its tests).

Each image is a flat colour with a soft gradient and pixel noise, drawn from three properties in [0, 1]:

- ``brightness``: the grey level the image is built around;
- ``redness``: how far the red channel is raised above green and blue;
- ``smoothness``: 1 - the pixel-noise amplitude (smoother images are more JPEG-compressible).

``overall`` is their mean. A group's ranks per aspect sort its images by that property (higher is
preferred). ``levels`` > 0 rounds every property to that many levels first, so equal values, i.e.
explicit ties, occur. The set is written as PNGs and a ranked JSONL
(:mod:`diffalign.rewards.training.data`), so training reads it like any stored data.

:func:`write_synthetic_edits` writes ranked *edits* the same way (HIVE's reward-model data): an input
image, an instruction and several edits ranked by how close each edit's colour change is to the one
the instruction asks for (:func:`edit_quality`).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import torch

SYNTHETIC_ASPECTS = ("brightness", "redness", "smoothness", "overall")
PROMPTS = ("a photo", "a painting", "a sketch", "a render")


def synthetic_image(brightness: float, redness: float, smoothness: float, size: int,
                    g: torch.Generator) -> torch.Tensor:
    """(3, size, size) in [0, 1] with the given properties (plus random, property-free variation)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angle = torch.rand((), generator=g) * 6.2832
    gradient = 0.08 * (xx * torch.cos(angle) + yy * torch.sin(angle))
    base = 0.15 + 0.7 * brightness + gradient
    shift = torch.tensor([0.3, -0.15, -0.15]).view(3, 1, 1) * redness
    noise = torch.randn(3, size, size, generator=g) * 0.25 * (1.0 - smoothness)
    return (base + shift + noise).clamp(0, 1)


def _draw(group_size: int, levels: int, g: torch.Generator):
    props = torch.rand(group_size, 3, generator=g)
    if levels > 0:
        props = torch.round(props * (levels - 1)) / (levels - 1)
    values: Dict[str, List[float]] = {name: props[:, i].tolist() for i, name in enumerate(SYNTHETIC_ASPECTS[:3])}
    # rounded so that equal property sums tie exactly despite float addition order
    values["overall"] = [round(v, 6) for v in props.mean(dim=1).tolist()]
    return props, values


def _clear(values: Sequence[float], min_gap: float) -> bool:
    return all(a == b or abs(a - b) >= min_gap for i, a in enumerate(values) for b in values[i + 1:])


def _ranks(values: Sequence[float]) -> List[float]:
    """Competition ranks, 1 = highest value; equal values share a rank."""
    return [1.0 + sum(1 for w in values if w > v) for v in values]


def write_synthetic_comparisons(out_dir: str, num_groups: int = 256, group_size: int = 2,
                                aspects: Sequence[str] = ("overall",), image_size: int = 32, seed: int = 0,
                                levels: int = 0, min_gap: float = 0.0) -> str:
    """Write ``num_groups`` groups of ``group_size`` PNGs and ``comparisons.jsonl`` to out_dir; return its path.

    ``min_gap`` > 0 redraws a group until, for every labelled aspect, any two of its images differ by at
    least that much or are tied exactly (clear preferences, as the AI-feedback threshold keeps).
    """
    unknown = [a for a in aspects if a not in SYNTHETIC_ASPECTS]
    if unknown:
        raise ValueError(f"synthetic aspects must be among {SYNTHETIC_ASPECTS}, got {unknown}")
    if group_size < 2 or num_groups < 1:
        raise ValueError(f"need num_groups >= 1 and group_size >= 2, got {num_groups} and {group_size}")
    from PIL import Image
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    g = torch.Generator().manual_seed(int(seed))
    path = os.path.join(out_dir, "comparisons.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for gi in range(num_groups):
            for _ in range(10000):
                props, values = _draw(group_size, levels, g)
                if min_gap <= 0 or all(_clear(values[a], min_gap) for a in aspects):
                    break
            else:
                raise ValueError(f"min_gap {min_gap} is too large for groups of {group_size}")
            names = []
            for k in range(group_size):
                img = synthetic_image(*props[k].tolist(), size=image_size, g=g)
                name = f"images/{gi:05d}_{k}.png"
                arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(arr).save(os.path.join(out_dir, name))
                names.append(name)
            ranks = {a: _ranks(values[a]) for a in aspects}
            row = {"prompt": PROMPTS[gi % len(PROMPTS)], "images": names,
                   "ranks": ranks if len(aspects) > 1 or aspects[0] != "overall" else ranks["overall"]}
            f.write(json.dumps(row) + "\n")
    return path


# ---- ranked edits (HIVE's reward-model data: one input, several edits of it ranked) -------------------------
# instruction -> the colour change it asks for, per channel (a step of EDIT_STEP along it is the ideal edit)
EDIT_INSTRUCTIONS = {"make it redder": (1.0, 0.0, 0.0), "make it greener": (0.0, 1.0, 0.0),
                     "make it bluer": (0.0, 0.0, 1.0), "make it darker": (-1.0, -1.0, -1.0)}
EDIT_STEP = 0.3


def edit_quality(change: torch.Tensor, instruction: str, step: float = EDIT_STEP) -> torch.Tensor:
    """-|| change - step * direction ||: an edit is as good as its colour change is close to the asked one.

    Ranks then depend on the input AND the edit: the same edited colour is ideal for one input and wrong
    for another, so a model that sees only the edit cannot rank a group."""
    direction = torch.tensor(EDIT_INSTRUCTIONS[instruction], dtype=change.dtype)
    return -(change - step * direction).norm(dim=-1)


def _colour_image(colour: torch.Tensor, pattern: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return (colour.view(3, 1, 1) + pattern + noise).clamp(0, 1)


def write_synthetic_edits(out_dir: str, num_groups: int = 256, group_size: int = 3, image_size: int = 32,
                          seed: int = 0, spread: float = 0.2, min_gap: float = 0.15) -> str:
    """Write ``num_groups`` ranked-edit groups to out_dir (an input PNG, ``group_size`` edited PNGs and a
    ranked JSONL row with ``"input"``); return the JSONL path.

    The input is a random colour in [0.25, 0.75]^3 with a soft gradient and pixel noise; each edit changes
    its colour by t * direction + n, t uniform in [0, 2 * EDIT_STEP] (under- to overshooting the asked
    step) and n uniform in [-spread, spread]^3 (the colour kept in [0, 1]). Ranks follow
    :func:`edit_quality` of the change made (redrawn until any two edits differ in quality by >= min_gap).
    Every edit moves the way the instruction says, so "more of it is better", all an edit-only model could
    learn, ranks overshoots wrongly: telling them apart needs the input.
    """
    if group_size < 2 or num_groups < 1:
        raise ValueError(f"need num_groups >= 1 and group_size >= 2, got {num_groups} and {group_size}")
    from PIL import Image
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    g = torch.Generator().manual_seed(int(seed))
    names_of = list(EDIT_INSTRUCTIONS)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, image_size), torch.linspace(-1, 1, image_size), indexing="ij")

    def save(img: torch.Tensor, name: str) -> str:
        arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(os.path.join(out_dir, name))
        return name

    path = os.path.join(out_dir, "edits.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for gi in range(num_groups):
            instruction = names_of[gi % len(names_of)]
            direction = torch.tensor(EDIT_INSTRUCTIONS[instruction])
            colour = 0.25 + 0.5 * torch.rand(3, generator=g)
            angle = torch.rand((), generator=g) * 6.2832
            pattern = 0.08 * (xx * torch.cos(angle) + yy * torch.sin(angle))
            noise = 0.03 * torch.randn(3, image_size, image_size, generator=g)
            for _ in range(10000):
                t = 2 * EDIT_STEP * torch.rand(group_size, 1, generator=g)
                changes = t * direction + (2 * torch.rand(group_size, 3, generator=g) - 1) * spread
                changes = (colour + changes).clamp(0, 1) - colour   # the change the edit can make
                quality = edit_quality(changes, instruction)
                if _clear(quality.tolist(), min_gap):
                    break
            else:
                raise ValueError(f"min_gap {min_gap} is too large for groups of {group_size}")
            name_in = save(_colour_image(colour, pattern, noise), f"images/{gi:05d}_input.png")
            edits = [save(_colour_image(colour + changes[k], pattern, noise), f"images/{gi:05d}_{k}.png")
                     for k in range(group_size)]
            row = {"prompt": instruction, "input": name_in, "images": edits, "ranks": _ranks(quality.tolist())}
            f.write(json.dumps(row) + "\n")
    return path
