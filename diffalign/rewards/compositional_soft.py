"""A differentiable relaxation of the shapes demo's compositional reward (:mod:`diffalign.rewards.compositional`).

The exact reward counts satisfied constraints after thresholds and connected components, so it has no
gradient and only the RL algorithms can use it. This module scores the *same constraint list* with smooth
stand-ins for the detector's tests, so direct reward fine-tuning (DRaFT, AlignProp, ReFL; survey section 4.1)
can backpropagate it through the sampling chain:

- colour membership: the detector's hue band, saturation and value tests become sigmoids. Hue is the angle
  in the opponent-colour plane (a = R - (G + B)/2, b = sqrt(3)/2 (G - B)), which is HSV's hue up to a
  small distortion, compared to each palette colour's angle by its cosine, so the test is smooth everywhere.
  Each pixel's soft mask m_c(p) in [0, 1] for colour c.
- ``color`` (an object of colour c): sigmoid((sum_p m_c - min_area) / 2), the detector's minimum blob size.
  The shape term also asks the mass to stay below ``MAX_OBJECT_AREA`` (see the code for why).
- ``shape``: moments of the colour's mass m_c, for an object of that colour. An upright triangle has its mass
  toward its base, so the vertical skewness E[dy^3] / E[dy^2]^1.5 is negative (-0.57 for the ideal one; 0 for a
  circle or square); a square differs from a circle in the 4-fold term of the radial moments,
  c4 = E[dx^4 - 6 dx^2 dy^2 + dy^4] / E[(dx^2 + dy^2)^2] (0 for a circle, -0.43 for an axis-aligned square).
  The thresholds between the classes are calibrated on rendered shapes (tests check renders of every shape).
- ``position``: the centroids of the two colours' masses (relation captions always name two different
  colours), offset along the relation's axis, through sigmoid((offset - margin) / 3 px) (wide, so a relation that is far off still has a gradient).
- ``count``: for "a" (exactly one), the colour's presence times the same size bound. For "two" / "three" there
  is no relaxation of the shape or the count (whole-mass moments of several blobs describe none of them, and
  counting blobs has no useful gradient): their exact values from the detector enter the mean as constants,
  so the soft reward stays on the exact reward's scale and only the colour term carries a gradient.

``colour_guide`` (keyword, default 0: off, the reward above unchanged): the colour tests are steep sigmoids, so
a view that shows none of a named colour (a grey or black render at the start of text-to-3D) gets ~no gradient
(1e-8..1e-6 per pixel, measured on the threed demo). With ``colour_guide`` = g > 0 each single object of colour c
adds g * (1 - present_c) * tanh(S_c / A) / (number of objects), where S_c is the image's chroma toward c,
the sum over pixels of tau * softplus(<(a, b), d_c> / tau) - tau * ln 2 (the opponent-plane component along the
palette direction d_c, 0 on greys and blacks, linear in RGB so its gradient never vanishes), A the minimum object
area x 4 and tau = 0.1 (S_c < 0 where the view leans away from c, e.g. toward its opponent hue; the
guide is then negative, so the reward lies in [-g, 1 + g]). It is largest where the colour is missing and fades as the colour's soft presence rises,
so its value cannot reorder images that the exact checks tell apart: with g <= 1/4 it stays below a present
colour's own term (1/3 or more of the mean) -- tests check the ordering on rendered scenes. A guide term rather
than wider sigmoids: a wider band also moves where the soft tests flip, and so disagrees with the exact checks.

Reward = mean over the caption's constraints, as the exact one. Moments of a colour's *whole* mass stand for
"the object of that colour", which is right when there is one blob per colour (single and relation captions).
A relation's position term is multiplied by both colours' presence, as the exact one fails without them; its
count term (each named colour drawn once) is both colours' presence times the one-object size bound.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch

from diffalign.data.shapes import COLORS, Scene, parse_caption
from diffalign.rewards.compositional import DetectorConfig, hue_tolerances, relation_offset, score_batch

__all__ = ["compositional_soft", "colour_chroma", "soft_color_masks", "shape_scores", "SHAPE_FEATURES"]

# calibrated on renders of diffalign.data.shapes (radii 3-7 px at 32 px): skewness of triangles -0.67 .. -0.53,
# of circles -0.05 .. 0.16, of squares 0; c4 of circles -0.15 .. 0.09 (small ones are pixelated), of squares
# -0.48 .. -0.41, of triangles -0.09 .. 0.09
SHAPE_FEATURES = {"triangle_skew": -0.28, "skew_width": 0.06, "square_c4": -0.28, "c4_width": 0.04}
_SOFT_WIDTH = {"cos": 0.02, "saturation": 0.05, "value": 0.05, "area": 2.0, "max_area": 16.0, "position": 3.0}
# pixels (at 32 px) of one object at most: the renderer's largest, a circle of radius 7, covers ~154 px
MAX_OBJECT_AREA = 220.0


def _opponent(rgb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r, g, b = rgb.unbind(-1)
    return r - (g + b) / 2, (math.sqrt(3) / 2) * (g - b)


def _palette_directions() -> Dict[str, Tuple[float, float]]:
    out = {}
    for name, rgb in COLORS.items():
        a, b = _opponent(torch.tensor(rgb, dtype=torch.float64) / 255.0)
        n = math.hypot(float(a), float(b))
        out[name] = (float(a) / n, float(b) / n)
    return out


_DIRECTIONS = _palette_directions()


def soft_color_masks(images: torch.Tensor, config: DetectorConfig = DetectorConfig()) -> Dict[str, torch.Tensor]:
    """Soft per-pixel membership (B, H, W) in [0, 1] of each palette colour for RGB images (B, 3, H, W) in [0, 1].

    The smooth counterpart of :func:`diffalign.rewards.compositional.color_labels`: hue within the colour's band
    (:func:`~diffalign.rewards.compositional.hue_tolerances`), saturation >= ``min_saturation`` and value >=
    ``min_value``, each a sigmoid.
    """
    x = images.permute(0, 2, 3, 1)
    v = x.amax(-1)
    s = (v - x.amin(-1)) / v.clamp_min(1e-6)
    a, b = _opponent(x)
    norm = torch.sqrt(a * a + b * b + 1e-8)
    gate = torch.sigmoid((s - config.min_saturation) / _SOFT_WIDTH["saturation"]) \
        * torch.sigmoid((v - config.min_value) / _SOFT_WIDTH["value"])
    tol = hue_tolerances(config)
    out = {}
    for name, (da, db) in _DIRECTIONS.items():
        cos = (a * da + b * db) / norm
        m = gate * torch.sigmoid((cos - math.cos(math.radians(tol[name]))) / _SOFT_WIDTH["cos"])
        # the detector keeps a blob's pixels at least value_fraction of its peak value: dim halos and stray
        # pixels would otherwise dominate the higher moments; the peak (a threshold) carries no gradient
        peak = (m * v).detach().amax((1, 2), keepdim=True)
        out[name] = m * torch.sigmoid((v - config.value_fraction * peak) / _SOFT_WIDTH["value"])
    return out


def _moments(mask: torch.Tensor):
    """Mass, centroid (x, y) in pixel units (centres at i + 0.5), vertical skewness and c4 of masks (B, H, W)."""
    B, H, W = mask.shape
    ys = (torch.arange(H, dtype=mask.dtype, device=mask.device) + 0.5).view(1, H, 1)
    xs = (torch.arange(W, dtype=mask.dtype, device=mask.device) + 0.5).view(1, 1, W)
    mass = mask.sum((1, 2))
    safe = mass.clamp_min(1e-3)
    cx = (mask * xs).sum((1, 2)) / safe
    cy = (mask * ys).sum((1, 2)) / safe
    dx, dy = xs - cx.view(B, 1, 1), ys - cy.view(B, 1, 1)

    def mean(f):
        return (mask * f).sum((1, 2)) / safe
    var_y = mean(dy ** 2)
    skew = mean(dy ** 3) / var_y.clamp_min(1e-3) ** 1.5
    r2 = dx ** 2 + dy ** 2
    c4 = mean(dx ** 4 - 6 * dx ** 2 * dy ** 2 + dy ** 4) / mean(r2 ** 2).clamp_min(1e-3)
    return mass, cx, cy, skew, c4


def shape_scores(skew: torch.Tensor, c4: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Soft class scores in [0, 1] (circle, square, triangle) from the vertical skewness and c4 (see module doc)."""
    f = SHAPE_FEATURES
    tri = torch.sigmoid((f["triangle_skew"] - skew) / f["skew_width"])
    sq = torch.sigmoid((f["square_c4"] - c4) / f["c4_width"])
    return {"triangle": tri, "square": (1 - tri) * sq, "circle": (1 - tri) * (1 - sq)}


_GUIDE_TAU = 0.1          # softness of the chroma's positive part (RGB units)
_GUIDE_AREA_FACTOR = 4.0  # the guide saturates at about this many minimum object areas of chroma
MAX_COLOUR_GUIDE = 0.25   # above this the guide could outweigh a present colour's own term (module doc)


def colour_chroma(images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per image (B,), each palette colour's chroma S_c: sum over pixels of the soft positive part of the
    opponent-plane component along the colour's direction, 0 for greys and blacks (see the module doc)."""
    a, b = _opponent(images.permute(0, 2, 3, 1))
    out = {}
    for name, (da, db) in _DIRECTIONS.items():
        proj = a * da + b * db
        out[name] = (_GUIDE_TAU * torch.nn.functional.softplus(proj / _GUIDE_TAU)
                     - _GUIDE_TAU * math.log(2.0)).sum((1, 2))
    return out


def compositional_soft(images: torch.Tensor, prompts: Sequence[str], config: DetectorConfig = DetectorConfig(),
                       colour_guide: float = 0.0) -> torch.Tensor:
    """Differentiable compositional reward: float Tensor[B] in [0, 1] with the images' gradient (see module doc;
    ``colour_guide`` = g > 0, at most 0.25, adds the missing-colour guide term: then in [-g, 1 + g])."""
    if not 0 <= colour_guide <= MAX_COLOUR_GUIDE:
        raise ValueError(f"compositional_soft: colour_guide must be in [0, {MAX_COLOUR_GUIDE}] (above, the guide "
                         f"can outweigh a present colour's own term), got {colour_guide!r}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"compositional_soft wants RGB images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"compositional_soft: {images.shape[0]} images but {len(prompts)} prompts")
    scenes: List[Scene] = [parse_caption(p) for p in prompts]
    x = images.float().clamp(0, 1)
    side = min(x.shape[2:])
    masks = soft_color_masks(x, config)
    stats = {name: _moments(m) for name, m in masks.items()}
    min_area = config.min_area * (side / 32.0) ** 2
    max_area = MAX_OBJECT_AREA * (side / 32.0) ** 2
    margin = config.position_margin * side / 32.0
    chroma = colour_chroma(x) if colour_guide > 0 else None
    guide_area = _GUIDE_AREA_FACTOR * min_area
    exact = None
    if any(s.objects[0].count > 1 for s in scenes):  # count captions: the detector's exact shape and count
        exact = score_batch(x.detach().permute(0, 2, 3, 1).cpu().numpy(), prompts, config)
    rewards = []
    for i, scene in enumerate(scenes):
        terms, present, single = [], [], []
        for o in scene.objects:
            mass, _, _, skew, c4 = (t[i] for t in stats[o.color])
            present.append(torch.sigmoid((mass - min_area) / _SOFT_WIDTH["area"]))
            terms.append(present[-1])
            if o.count > 1:  # several blobs of one colour: whole-mass moments describe none of them
                terms += [x.new_tensor(float(c.ok)) for c in exact[i].constraints if c.attribute in ("shape", "count")]
                continue
            # a colour mass larger than the largest object is not that object (the detector sees merged or
            # frame-filling blobs as "unknown"); without this bound, flooding the image with a colour raised
            # every soft term at once (seen in a DRaFT run)
            sized = torch.sigmoid((max_area - mass) / _SOFT_WIDTH["max_area"])
            single.append(present[-1] * sized)  # about one object's worth of this colour
            terms.append(single[-1] * shape_scores(skew, c4)[o.shape])
        if scene.relation is None and scene.objects[0].count == 1:
            terms.append(single[0])  # "a": exactly one object of that colour and shape
        elif scene.relation is not None:
            (a, b) = scene.objects
            _, cxa, cya, _, _ = (t[i] for t in stats[a.color])
            _, cxb, cyb, _, _ = (t[i] for t in stats[b.color])
            off = relation_offset(scene.relation, cxb - cxa, cyb - cya)
            terms.append(present[0] * present[1] * torch.sigmoid((off - margin) / _SOFT_WIDTH["position"]))
            terms.append(single[0] * single[1])  # each named colour drawn once
        reward = torch.stack(terms).mean()
        if chroma is not None:  # missing colours: a pull toward their hue with a gradient everywhere
            pulls = [(1 - p) * torch.tanh(chroma[o.color][i] / guide_area)
                     for o, p in zip(scene.objects, present)]
            reward = reward + colour_guide * torch.stack(pulls).mean()
        rewards.append(reward)
    return torch.stack(rewards)
