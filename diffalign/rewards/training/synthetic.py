"""Procedural image preferences with known ground truth (the tiny reward config and its tests).

Each image is a flat colour with a soft gradient and pixel noise, drawn from three properties in [0, 1]:

- ``brightness``: the grey level the image is built around;
- ``redness``: how far the red channel is raised above green and blue;
- ``smoothness``: 1 - the pixel-noise amplitude (smoother images are more JPEG-compressible).

``overall`` is their mean. A group's ranks per aspect sort its images by that property (higher is
preferred). ``levels`` > 0 rounds every property to that many levels first, so equal values, i.e.
explicit ties, occur. The set is written as PNGs and a ranked JSONL
(:mod:`diffalign.rewards.training.data`), so training reads it like any stored data.
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
