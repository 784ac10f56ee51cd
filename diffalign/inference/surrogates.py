"""A differentiable surrogate of the demo's compositional reward, for noise optimisation.

The compositional reward (``diffalign.rewards.compositional``) segments colours, labels connected
components and classifies shapes: none of that has a gradient. Noise optimisation needs one, so
``shapes_surrogate`` scores the same caption with soft, differentiable statistics of the image:

- soft colour masks: m_c(p) = exp(-||rgb(p) - palette_c||^2 / (2 tau^2)) per palette colour
  (tau = 0.15 in [0, 1] RGB units; the palette colours are > 0.5 apart, so masks barely overlap);
- colour and count: for each named object (colour c, shape s, count n) the colour's mass
  M_c = mean_p m_c(p) should match n x the shape's mean area fraction in the training renders
  (radius 4-7 px at 32 px); term -(log((M_c + eps) / (target + eps)))^2, eps = 0.005;
- no extra objects: -sum over colours the caption does not name of M_c / 0.09 (0.09 ~ one object);
- position: for a relation, the soft centroids (mask-weighted mean pixel position, in image units)
  of the two colours must differ by >= 0.25 along the relation's axis (the renderer's margin is
  size / 4): term log sigmoid((d - 0.25) / 0.1).

Shape is not modelled (a differentiable shape classifier on 32 px blobs is beyond a surrogate); the
demo reports the real compositional accuracy the surrogate reaches, so the gap is measured.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["shapes_surrogate", "INFERENCE_REWARDS"]

_TAU = 0.15
_EPS = 0.005
_ONE_OBJECT = 0.09
_MARGIN = 0.25


def _shape_area(shape: str) -> float:
    """Mean area fraction of one object in a 32 px render (radius uniform in [4, 7] px): circle
    pi r^2, square (2r)^2, triangle half of its (2r)^2 box; E[r^2] = 31 for r ~ U[4, 7]."""
    r2 = (7 ** 3 - 4 ** 3) / (3 * 3)  # E[r^2] for r uniform on [4, 7]
    area = {"circle": math.pi * r2, "square": 4 * r2, "triangle": 2 * r2}[shape]
    return area / 32 ** 2


def shapes_surrogate(images: torch.Tensor, prompts: Sequence[str], tau: float = _TAU) -> torch.Tensor:
    """Differentiable score (higher is better, 0 at best) of images (B, 3, H, W) in [0, 1] against
    shapes captions (:func:`diffalign.data.shapes.parse_caption`)."""
    from diffalign.data.shapes import COLORS, parse_caption
    from diffalign.rewards.compositional import relation_offset
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"shapes_surrogate wants RGB images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    x = images.float()
    B, _, H, W = x.shape
    names = list(COLORS)
    palette = torch.tensor([COLORS[c] for c in names], dtype=x.dtype, device=x.device) / 255.0  # (K, 3)
    d2 = ((x[:, None] - palette[None, :, :, None, None]) ** 2).sum(dim=2)  # (B, K, H, W)
    masks = torch.exp(-d2 / (2 * tau ** 2))
    mass = masks.mean(dim=(2, 3))  # (B, K)
    ys = (torch.arange(H, dtype=x.dtype, device=x.device) + 0.5) / H
    xs = (torch.arange(W, dtype=x.dtype, device=x.device) + 0.5) / W
    total = masks.sum(dim=(2, 3)) + 1e-6
    cx = (masks * xs[None, None, None, :]).sum(dim=(2, 3)) / total
    cy = (masks * ys[None, None, :, None]).sum(dim=(2, 3)) / total
    out = []
    for b, prompt in enumerate(prompts):
        scene = parse_caption(prompt)
        named = {}
        for o in scene.objects:
            named[o.color] = named.get(o.color, 0.0) + o.count * _shape_area(o.shape)
        score = x.new_zeros(())
        for c, target in named.items():
            k = names.index(c)
            score = score - torch.log((mass[b, k] + _EPS) / (target + _EPS)) ** 2
        for k, c in enumerate(names):
            if c not in named:
                score = score - mass[b, k] / _ONE_OBJECT
        if scene.relation is not None:
            ka, kb = names.index(scene.objects[0].color), names.index(scene.objects[1].color)
            d = relation_offset(scene.relation, cx[b, kb] - cx[b, ka], cy[b, kb] - cy[b, ka])
            score = score + F.logsigmoid((d - _MARGIN) / 0.1)
        out.append(score)
    return torch.stack(out)


shapes_surrogate.differentiable = True

# rewards this package adds to the registry's names (reachable from make_reward and the CLI)
INFERENCE_REWARDS = {"shapes_surrogate": shapes_surrogate}
