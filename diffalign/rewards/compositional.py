"""A GenEval-style compositional reward for the coloured-shapes demo (:mod:`diffalign.data.shapes`).

GenEval (survey section 5.2.2, fine-grained evaluation) judges a picture against its prompt by
detecting the objects and checking each stated attribute. Here the pictures are flat coloured shapes
on black, so an exact detector needs no weights:

1. Colour segmentation in HSV (:func:`color_labels`, :func:`segment`). A pixel belongs to palette
   colour ``c`` when its hue is within ``hue_tolerance`` of ``c``'s hue (capped at
   ``hue_gap_fraction`` of the gap to the nearest other palette hue, so the bands never overlap and
   orange, cyan or purple belong to none), its saturation is at least ``min_saturation`` (greys and
   whites are background) and its value at least ``min_value``. Blurring a shape into the black
   background scales R, G and B together, which keeps hue and saturation, so blurred edges keep
   their colour. Each such blob then keeps only the pixels at least ``value_fraction`` of its own
   peak brightness (the peak of a 3x3 mean, so one noisy pixel does not set it): about the
   half-maximum contour of a blurred edge, which is where the sharp edge was, however bright or dim
   the model drew the shape; a blob whose peak is below ``min_peak`` is dark noise and dropped.
2. Connected components per colour (8-connected, :func:`label_components`: vectorised numpy over the
   whole batch, so the reward needs no scipy). Components smaller than ``min_area`` pixels or thinner
   than ``min_thickness`` pixels on average (area / longer bounding-box side; at 32 px, and both scale
   with the image) are noise and dropped, e.g. specks or the thin line of a third hue that appears
   where two different colours blur into each other.
3. A shape classifier on each component (:func:`classify_shape`): an upright triangle has ~3/4 of its
   pixels in the lower half of its bounding box (a circle or square 1/2), which survives blur, noise
   and a lost apex; the rest are circle or square by which ideal template drawn in the same bounding
   box (inscribed ellipse or full box) overlaps the blob better (IoU; the extent alone, square 1 vs
   circle pi/4, fails on small pixelated circles, which fill ~0.9 of their box). A component much
   longer than wide (``max_aspect``), top-heavy, or overlapping both templates poorly is ``"unknown"``.

Touching shapes: two *different* colours are separated by the colour segmentation. Two touching
shapes of the *same* colour are one connected component, so they count as ONE object (as a GenEval
detector would see one blob); that blob is usually elongated, so it is classified ``"unknown"`` and
matches no shape. The renderer never draws touching objects, so this only concerns generated images.

Scoring a caption (:func:`score`), with ``n`` the stated count:

- ``single`` / ``count`` captions (``"a red circle"``, ``"two blue squares"``): three constraints,
  ``color`` (an object of that colour exists), ``shape`` (an object of that colour and shape exists),
  ``count`` (exactly ``n`` objects of that colour and shape; "a" means exactly one);
- ``relation`` captions (``"a red circle left of a blue square"``): ``color`` and ``shape`` for each
  of the two objects (4 constraints) and ``position``: the largest detection of the first object and
  the largest other detection of the second have centroids offset along the relation's axis by more
  than ``position_margin`` px (2 px at 32 px; x grows right, y grows down, so "above" means a smaller
  y). Taking the largest (not any pair) means extra copies drawn on both sides cannot satisfy a
  relation. Where an object's colour is present but not its shape, position uses the colour's
  detections, so a wrong shape is charged to ``shape`` and not again to ``position``. Then one ``count``
  constraint: each of the two colours is drawn exactly once ("a red circle ... a blue square" names one
  object of each). Without it, RL on the demo learned to hedge: 96% of its relation images drew three to
  six objects, so that some object of each colour had the right shape (held-out accuracy barely moved
  while the reward rose). Objects of other colours are not penalised.

The reward of an image is the fraction of its constraints satisfied, in [0, 1]. Per-attribute
accuracies over a batch (:func:`accuracies`): for each attribute, the fraction of the images whose
caption has that attribute in which all its constraints hold; ``accuracy`` (GenEval's headline) is the
fraction of images with ALL constraints satisfied; ``reward`` is the mean fraction of constraints.

:func:`compositional_reward` is the batched reward ``(images, prompts) -> Tensor[B]`` (registered as
``"compositional"``). It is not differentiable (thresholds and counting): use it with online RL
(DDPO, DPOK, GRPO, RWR) or to label pairs for the offline methods, not with ReFL / DRaFT / AlignProp.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from diffalign.data.shapes import COLORS, KINDS, RELATIONS, SHAPES, Scene, caption, caption_kind, parse_caption
from diffalign.rewards.checks import Check, CheckedSample
from diffalign.rewards.checks import accuracies as checked_accuracies

ATTRIBUTES: Tuple[str, ...] = ("color", "shape", "count", "position")


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of :func:`detect`. Pixel sizes are for a 32 px image and scale with the image side."""
    hue_tolerance: float = 25.0      # degrees around a palette hue
    hue_gap_fraction: float = 0.3    # ... but at most this fraction of the gap to the nearest other palette hue
    min_saturation: float = 0.4      # HSV saturation in [0, 1]
    min_value: float = 0.25          # HSV value below which a pixel is background
    min_peak: float = 0.35           # a blob whose peak (largest 3x3 mean) value is below this is dark noise
    value_fraction: float = 0.55     # a blob keeps its pixels whose value is at least this fraction of its peak
    min_area: float = 10.0           # pixels
    min_thickness: float = 2.5       # pixels, a blob's mean thickness: area / longer bounding-box side
    triangle_asymmetry: float = 0.2  # (lower - upper half pixels) / area at or above which a blob is a triangle
    min_iou: float = 0.6             # a blob overlapping the circle and square templates less than this is "unknown"
    max_aspect: float = 1.6          # longer/shorter bbox side above which a blob is "unknown"
    position_margin: float = 2.0     # pixels a relation's centroid offset must exceed

    def __post_init__(self):
        for name in ("hue_tolerance", "min_area", "min_thickness", "max_aspect", "position_margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"DetectorConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("hue_gap_fraction", "min_saturation", "min_value", "min_peak", "value_fraction",
                     "triangle_asymmetry", "min_iou"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"DetectorConfig.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Detection:
    """One object found: colour, shape (or ``"unknown"``), centroid (x right, y down, pixel centres at i + 0.5),
    area in pixels and bounding box (x0, y0, x1, y1), x1 / y1 exclusive."""
    color: str
    shape: str
    centre: Tuple[float, float]
    area: int
    bbox: Tuple[int, int, int, int]


@dataclass(frozen=True)
class ScoreResult(CheckedSample):
    """One image's checks (attributes in ATTRIBUTES) and the detections they were made on."""
    detections: Tuple[Detection, ...] = field(repr=False, default=())

    def as_dict(self) -> dict:
        return {**super().as_dict(), "detections": [asdict(d) for d in self.detections]}


# ---------------------------------------------------------------- detection

def _hue_sat_val(rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV of float RGB (..., 3) in [0, 1]: hue in degrees [0, 360), saturation and value in [0, 1]."""
    r, g, b = (np.asarray(rgb[..., i], np.float32) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    c = v - np.minimum(np.minimum(r, g), b)
    safe = np.where(c > 0, c, np.float32(1))
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = (h * np.float32(60)) % np.float32(360)
    s = c / np.where(v > 0, v, np.float32(1))
    return h, s, v


_PALETTE_NAMES = tuple(COLORS)
_PALETTE_HSV = [tuple(float(x) for x in _hue_sat_val(np.asarray(rgb, np.float64) / 255.0)) for rgb in COLORS.values()]
_HUE_BINS = 720  # the hue lookup's resolution: 0.5 degree


def _hue_dist(a, b):
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def hue_tolerances(config: DetectorConfig = DetectorConfig()) -> Dict[str, float]:
    """Each palette colour's hue half-width in degrees (see the module doc)."""
    out = {}
    for i, name in enumerate(_PALETTE_NAMES):
        gap = min(float(_hue_dist(_PALETTE_HSV[i][0], _PALETTE_HSV[j][0])) for j in range(len(_PALETTE_NAMES)) if j != i)
        out[name] = min(config.hue_tolerance, config.hue_gap_fraction * gap)
    return out


@functools.lru_cache(maxsize=16)
def _hue_lookup(config: DetectorConfig) -> np.ndarray:
    """Palette index (-1 none) for each hue bin."""
    centres = (np.arange(_HUE_BINS) + 0.5) * (360.0 / _HUE_BINS)
    lut = np.full(_HUE_BINS, -1, np.int8)
    tol = hue_tolerances(config)
    for i, name in enumerate(_PALETTE_NAMES):
        lut[_hue_dist(centres, _PALETTE_HSV[i][0]) <= tol[name]] = i
    return lut


def color_labels(images: np.ndarray, config: DetectorConfig = DetectorConfig(),
                 return_value: bool = False):
    """Per-pixel palette index (int8, -1 = background) of float RGB images (B, H, W, 3) in [0, 1].

    A pixel is colour ``c`` when its hue is in ``c``'s band, its saturation at least ``min_saturation`` and
    its value at least ``min_value`` (the blob-relative ``value_fraction`` test is :func:`segment`'s).
    With ``return_value`` also returns the HSV value (B, H, W).
    """
    h, s, v = _hue_sat_val(images)
    lut = _hue_lookup(config)
    idx = lut[np.minimum((h * (_HUE_BINS / 360.0)).astype(np.int32), _HUE_BINS - 1)]
    keep = (idx >= 0) & (s >= config.min_saturation) & (v >= config.min_value)
    out = np.where(keep, idx, np.int8(-1)).astype(np.int8)
    return (out, v) if return_value else out


def segment(images: np.ndarray, config: DetectorConfig = DetectorConfig()) -> np.ndarray:
    """Palette index per pixel after the blob-relative brightness test (int8 (B, H, W), -1 = background).

    Coarse colour blobs (:func:`color_labels`) whose peak brightness (the largest 3x3 mean of the HSV value) is
    below ``min_peak`` are dropped; the others keep the pixels at least ``value_fraction`` of that peak: about
    the half-maximum contour of a blurred shape, which is where its sharp edge was, whatever the shape's overall
    brightness. Different colours never share a blob, so each keeps its own threshold.
    """
    coarse, v = color_labels(images, config, return_value=True)
    comps, k = label_components(coarse)
    if k == 0:
        return coarse
    fg = comps >= 0
    # the peak of the 3x3 mean of the value: a blob's flat interior, not one noisy pixel
    pad = np.pad(v, ((0, 0), (1, 1), (1, 1)))
    hgt, wid = v.shape[1:]
    v_mean = sum(pad[:, dy:dy + hgt, dx:dx + wid] for dy in range(3) for dx in range(3)) / np.float32(9)
    peak = np.zeros(k, np.float32)
    np.maximum.at(peak, comps[fg], v_mean[fg])
    pk = np.append(peak, np.float32(np.inf))[comps]  # background (component -1) reads +inf
    keep = fg & (pk >= config.min_peak) & (v >= config.value_fraction * pk)
    return np.where(keep, coarse, np.int8(-1)).astype(np.int8)


@functools.lru_cache(maxsize=4096)
def _circle_area(hgt: int, wid: int) -> int:
    """Pixels of the ideal circle (the ellipse inscribed in an hgt x wid box, pixel-centre sampling)."""
    y, x = np.mgrid[0:hgt, 0:wid] + 0.5
    return int((((x - wid / 2) / (wid / 2)) ** 2 + ((y - hgt / 2) / (hgt / 2)) ** 2 <= 1.0).sum())


def _classify(area, hgt, wid, upper, in_circle, circle_area, config: DetectorConfig) -> np.ndarray:
    """Vectorised shape decision (see :func:`classify_shape`): index into ``_SHAPE_OUT`` per component."""
    asym = (area - 2 * upper) / area
    iou_circle = in_circle / (area + circle_area - in_circle)
    iou_square = area / (hgt * wid)  # every pixel lies in its own bounding box
    out = np.where(iou_circle >= iou_square, 0, 1)  # circle, square
    out = np.where(np.maximum(iou_circle, iou_square) < config.min_iou, 3, out)
    out = np.where(asym >= config.triangle_asymmetry, 2, out)
    out = np.where(asym <= -config.triangle_asymmetry, 3, out)
    return np.where(np.maximum(hgt, wid) > config.max_aspect * np.minimum(hgt, wid), 3, out)


_SHAPE_OUT = ("circle", "square", "triangle", "unknown")


def _features(ys, xs, comp, k):
    """Per-component area, bbox, centroid, upper-half weight and pixels inside the inscribed ellipse.

    ``ys, xs`` are the pixel coordinates of the foreground pixels and ``comp`` their component in [0, k).
    """
    area = np.bincount(comp, minlength=k).astype(np.float64)
    order = np.argsort(comp, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(comp[order]) != 0])
    y0 = np.minimum.reduceat(ys[order], starts)
    y1 = np.maximum.reduceat(ys[order], starts) + 1
    x0 = np.minimum.reduceat(xs[order], starts)
    x1 = np.maximum.reduceat(xs[order], starts) + 1
    hgt, wid = (y1 - y0).astype(np.float64), (x1 - x0).astype(np.float64)
    cx = np.bincount(comp, weights=xs + 0.5, minlength=k) / area
    cy = np.bincount(comp, weights=ys + 0.5, minlength=k) / area
    yr = ys - y0[comp]  # row within the component's box
    half = (y1 - y0)[comp] // 2
    w_upper = np.where(yr < half, 1.0, np.where((yr == half) & ((y1 - y0)[comp] % 2 == 1), 0.5, 0.0))
    upper = np.bincount(comp, weights=w_upper, minlength=k)
    ex = ((xs - x0[comp] + 0.5 - wid[comp] / 2) / (wid[comp] / 2)) ** 2
    ey = ((yr + 0.5 - hgt[comp] / 2) / (hgt[comp] / 2)) ** 2
    in_circle = np.bincount(comp, weights=(ex + ey <= 1.0).astype(np.float64), minlength=k)
    circle_area = np.array([_circle_area(int(h), int(w)) for h, w in zip(y1 - y0, x1 - x0)], np.float64)
    return area, (x0, y0, x1, y1), (cx, cy), upper, in_circle, circle_area


def classify_shape(mask: np.ndarray, config: DetectorConfig = DetectorConfig()) -> str:
    """``"circle"``, ``"square"``, ``"triangle"`` or ``"unknown"`` for one blob (a boolean mask; only its pixels count).

    An upright triangle has about 3/4 of its pixels in the lower half of its box (a circle or square 1/2), which
    survives blur, noise and a lost apex; so a blob whose vertical asymmetry (lower - upper) / area is at least
    ``triangle_asymmetry`` is a triangle, and one as strongly top-heavy is ``"unknown"``. Otherwise the ideal
    circle (inscribed ellipse) or square (the full box) drawn in the blob's bounding box that overlaps it better
    (IoU) wins, if that IoU reaches ``min_iou``. A blob much longer than wide (``max_aspect``) is ``"unknown"``.
    """
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if ys.size == 0:
        return "unknown"
    comp = np.zeros(ys.size, np.int64)
    area, (x0, y0, x1, y1), _, upper, in_circle, circle_area = _features(ys, xs, comp, 1)
    return _SHAPE_OUT[int(_classify(area, (y1 - y0).astype(float), (x1 - x0).astype(float), upper, in_circle,
                                    circle_area, config)[0])]


def label_components(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """8-connected components of equal non-negative values in each image of ``labels`` (B, H, W) (-1 = background).

    Returns (components, k): int64 (B, H, W) with -1 for background and 0..k-1 for the components, numbered by
    their first pixel in raster order over the whole batch, and k. Components never cross images.
    Pure numpy, over the foreground pixels only: every edge between two equal neighbours hooks the larger of
    its two roots under the smaller, then pointer jumping flattens the trees; rounds repeat until every edge
    joins equal roots (a few rounds: each one at least halves the number of roots along any chain of edges).
    """
    b, hgt, wid = labels.shape
    fidx = np.flatnonzero(labels.ravel() >= 0)
    out = np.full(labels.size, -1, np.int64)
    if fidx.size == 0:
        return out.reshape(b, hgt, wid), 0
    compact = np.full(labels.size, -1, np.int64)
    compact[fidx] = np.arange(fidx.size)
    compact = compact.reshape(b, hgt, wid)
    src, dst = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour pair once; never across images
        y1, x0, x1 = hgt - dy, max(0, -dx), wid - max(0, dx)
        here, there = compact[:, :y1, x0:x1], compact[:, dy:, x0 + dx:x1 + dx]
        ok = (here >= 0) & (labels[:, :y1, x0:x1] == labels[:, dy:, x0 + dx:x1 + dx])
        src.append(here[ok])
        dst.append(there[ok])
    ea, eb = np.concatenate(src), np.concatenate(dst)
    root = np.arange(fidx.size)
    while True:
        ra, rb = root[ea], root[eb]
        differ = ra != rb
        if not differ.any():
            break
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(root, np.maximum(ra, rb), np.minimum(ra, rb))  # hook roots: the smaller index wins
        while True:  # pointer jumping until every pixel points at a root
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped
    roots, out[fidx] = np.unique(root, return_inverse=True)  # a root is its component's first pixel: raster order
    return out.reshape(b, hgt, wid), int(roots.size)


def _to_numpy_hwc(images) -> np.ndarray:
    """Float (B, H, W, 3) in [0, 1] from whatever ``as_pixels`` accepts or a single (H, W, 3) uint8 array."""
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if isinstance(images, np.ndarray) and images.dtype != np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return np.clip(images.astype(np.float32), 0.0, 1.0)
    from diffalign.rewards.base import as_pixels
    px = as_pixels(images)
    if isinstance(px, list):
        raise ValueError(f"compositional reward: images of different sizes {sorted({tuple(p.shape[-2:]) for p in px})}; "
                         f"score them one by one")
    return px.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def detect_batch(images, config: DetectorConfig = DetectorConfig()) -> List[List[Detection]]:
    """The objects in each image: images as a float tensor (B, 3, H, W) in [0, 1], a uint8 array (B, H, W, 3),
    a float array (B, H, W, 3) in [0, 1] or a list of PIL images. Each image's detections run left to right."""
    arr = _to_numpy_hwc(images)
    n, hgt, wid = arr.shape[:3]
    found: List[List[Detection]] = [[] for _ in range(n)]
    colors = segment(arr, config)
    comps, k = label_components(colors)
    if k == 0:
        return found
    bi, ys, xs = np.nonzero(comps >= 0)
    comp = comps[bi, ys, xs]
    area, (x0, y0, x1, y1), (cx, cy), upper, in_circle, circle_area = _features(ys, xs, comp, k)
    hb, wb = (y1 - y0).astype(np.float64), (x1 - x0).astype(np.float64)
    scale = min(hgt, wid) / 32.0
    keep = (area >= config.min_area * scale * scale) & (area / np.maximum(hb, wb) >= config.min_thickness * scale)
    shape = _classify(area, hb, wb, upper, in_circle, circle_area, config)
    first = np.unique(comp, return_index=True)[1]  # a pixel of each component: its image and colour
    for j in np.flatnonzero(keep):
        p = first[j]
        found[bi[p]].append(Detection(_PALETTE_NAMES[colors[bi[p], ys[p], xs[p]]], _SHAPE_OUT[shape[j]],
                                      (float(cx[j]), float(cy[j])), int(area[j]),
                                      (int(x0[j]), int(y0[j]), int(x1[j]), int(y1[j]))))
    return [sorted(d, key=lambda e: (e.centre[0], e.centre[1], e.color)) for d in found]


def _one(image) -> np.ndarray:
    return _to_numpy_hwc([image] if hasattr(image, "convert") else image)


def detect(image, config: DetectorConfig = DetectorConfig()) -> List[Detection]:
    """The objects in one image: uint8 (H, W, 3), float tensor (3, H, W) in [0, 1], or a PIL image."""
    arr = _one(image)
    if arr.shape[0] != 1:
        raise ValueError(f"detect takes one image, got a batch of {arr.shape[0]}; use detect_batch")
    return detect_batch(arr, config)[0]


# ---------------------------------------------------------------- scoring

_parse = functools.lru_cache(maxsize=4096)(parse_caption)  # rollout batches repeat their prompts


def relation_offset(rel: str, dx, dy):
    """How far the relation "A rel B" holds, given B's centroid minus A's (dx right, dy down), in pixels;
    it holds beyond ``position_margin``. Works on floats and tensors (the soft reward uses it too)."""
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[rel]


def _relation_holds(rel: str, a: Detection, b: Detection, margin: float) -> bool:
    return relation_offset(rel, b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]) > margin


def score_detections(scene_or_caption: Union[Scene, str], detections: Sequence[Detection], image_size: int = 32,
                     config: DetectorConfig = DetectorConfig()) -> ScoreResult:
    """Check every constraint of the caption against ``detections`` (see the module doc)."""
    scene = _parse(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    dets = tuple(detections)
    cons: List[Check] = []
    if scene.relation is None:
        o = scene.objects[0]
        plural = "s" if o.count > 1 else ""
        of_color = [d for d in dets if d.color == o.color]
        matching = [d for d in of_color if d.shape == o.shape]
        cons += [Check("color", f"a {o.color} object", bool(of_color)),
                 Check("shape", f"a {o.color} {o.shape}", bool(matching)),
                 Check("count", f"exactly {o.count} {o.color} {o.shape}{plural}", len(matching) == o.count)]
    else:
        candidates = []
        for o in scene.objects:
            of_color = [d for d in dets if d.color == o.color]
            matching = [d for d in of_color if d.shape == o.shape]
            cons += [Check("color", f"a {o.color} object", bool(of_color)),
                     Check("shape", f"a {o.color} {o.shape}", bool(matching))]
            candidates.append(matching or of_color)
        margin = config.position_margin * image_size / 32.0
        a_name, b_name = (f"{o.color} {o.shape}" for o in scene.objects)
        # the largest candidate of each object, so drawing extra copies on both sides cannot satisfy a relation
        a = max(candidates[0], key=lambda d: d.area, default=None)
        b = max((d for d in candidates[1] if d is not a), key=lambda d: d.area, default=None)
        ok = a is not None and b is not None and _relation_holds(scene.relation, a, b, margin)
        cons.append(Check("position", f"the {a_name} {scene.relation} the {b_name}", ok))
        named = {c: sum(o.color == c for o in scene.objects) for c in dict.fromkeys(o.color for o in scene.objects)}
        once = all(sum(d.color == c for d in dets) == n for c, n in named.items())
        colors = " and ".join(f"{n} {c} object{'s' if n > 1 else ''}" for c, n in named.items())
        cons.append(Check("count", f"exactly {colors}", once))
    return ScoreResult(caption(scene), caption_kind(scene), tuple(cons), dets)


def score(scene_or_caption: Union[Scene, str], image, config: DetectorConfig = DetectorConfig()) -> ScoreResult:
    """Detect the objects of one image and check the caption's constraints (see the module doc)."""
    arr = _one(image)
    if arr.shape[0] != 1:
        raise ValueError(f"score takes one image, got a batch of {arr.shape[0]}; use score_batch")
    return score_detections(scene_or_caption, detect_batch(arr, config)[0], min(arr.shape[1:3]), config)


def score_batch(images, prompts: Sequence[Union[str, Scene]], config: DetectorConfig = DetectorConfig()) -> List[ScoreResult]:
    """:func:`score` for every (image, prompt) pair of a batch, with one segmentation call for the batch."""
    arr = _to_numpy_hwc(images)
    if len(prompts) != arr.shape[0]:
        raise ValueError(f"compositional reward: {arr.shape[0]} images but {len(prompts)} prompts")
    dets = detect_batch(arr, config)
    side = min(arr.shape[1:3])
    return [score_detections(p, d, side, config) for p, d in zip(prompts, dets)]


def accuracies(results: Sequence[ScoreResult]) -> Dict[str, float]:
    """Batch accuracies (:func:`diffalign.rewards.checks.accuracies`): ``accuracy`` (all constraints of an image hold;
    GenEval's score), ``reward`` (mean fraction of constraints), per attribute (images whose caption states it and
    where it holds), and ``accuracy/<kind>``."""
    return checked_accuracies(results, ATTRIBUTES, KINDS)


def stated_objects(scene_or_caption: Union[Scene, str]) -> int:
    """How many objects the caption asks for: its count, or 2 for a relation."""
    scene = _parse(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    return sum(o.count for o in scene.objects)


def compositional_reward(images, prompts: Sequence[str], config: Optional[DetectorConfig] = None,
                         extra_object_penalty: float = 0.0) -> torch.Tensor:
    """Fraction of each caption's constraints the image satisfies: float32 Tensor[B] in [0, 1].

    ``extra_object_penalty`` p (a training-time shaping, default off): the fraction is multiplied by
    ``(1 - p) ** extra`` with ``extra`` the objects detected beyond the caption's :func:`stated_objects`.
    The plain fraction pays for hedging (drawing four or five objects so that some object has each named
    colour earns the colour and shape constraints and loses only the count one); RL on the demo learned
    exactly that. The penalty makes every extra object cost, whatever its colour. (Measured with the demo's RWR
    before it had its distillation term, p = 0.5 drove the model to blank images: configs/demo_rwr.yaml.)

    Not differentiable (colour thresholds, connected components and counting have no gradient).
    """
    if not 0.0 <= extra_object_penalty <= 1.0:
        raise ValueError(f"compositional_reward: extra_object_penalty must be in [0, 1], got {extra_object_penalty}")
    results = score_batch(images, prompts, config or DetectorConfig())
    rewards = [r.reward * (1.0 - extra_object_penalty) ** max(0, len(r.detections) - stated_objects(r.caption))
               for r in results]
    out = torch.tensor(rewards, dtype=torch.float32)
    return out.to(images.device) if isinstance(images, torch.Tensor) else out


def compositional_report(images, prompts: Sequence[str], config: Optional[DetectorConfig] = None) -> dict:
    """``{"accuracies": accuracies(...), "results": [per-image ScoreResult.as_dict()]}`` for reports."""
    results = score_batch(images, prompts, config or DetectorConfig())
    return {"accuracies": accuracies(results), "results": [r.as_dict() for r in results]}
