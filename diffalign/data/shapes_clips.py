"""Procedural clips of the coloured-shapes world (:mod:`diffalign.data.shapes`): moving and still shapes.

The video demo's tiny text-to-video model is trained on these clips and aligned against the temporal
compositional reward (:mod:`diffalign.rewards.video_compositional`), so everything here is deterministic from a
seed and needs no download. Frames are drawn with the image world's palette and masks (``shapes.draw``).

Captions come in two kinds (:func:`clip_kind`):

- ``moving``: ``"a red circle moving right"``, ``"two blue squares moving up"``: one object spec of count 1 or 2
  and a direction in :data:`DIRECTIONS`; every object moves with the same constant velocity, so objects that do
  not touch in the first frame never touch.
- ``still``:  ``"a green triangle"``, ``"two green triangles"``, ``"three yellow circles"``: an image caption
  (count 1-3); the objects do not move.

A clip is ``frames`` x 3 x ``size`` x ``size`` floats in [0, 1] (8 x 3 x 32 x 32 by default) on black. Moving
objects travel :data:`MIN_SPEED`-:data:`MAX_SPEED` px per frame at 32 px (scaled with ``size``), 10-14 px over 8
frames; x grows right and y grows down, so ``up`` means a decreasing y. Objects have "radius" 4.5-5.5 px (smaller
than the image world's 4-7, so a moving object has room to travel) and at least 2 px of black between bounding
boxes. :class:`Clip` carries the ground truth: each object's centre in each frame (``tracks``).

Held-out captions (``split="heldout"``) are 20 % of every kind but at least :data:`HELDOUT_MIN_PER_KIND`, picked
by a SHA-256 hash of the caption (not an RNG, so the set cannot drift between numpy versions) in hash order,
skipping any caption whose loss would leave a colour, shape, count or direction without a training caption of
its kind. The two splits are disjoint by construction.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from diffalign.data.shapes import COLORS, SHAPES, ObjectSpec, Placed, Scene, caption, draw, parse_caption

DIRECTIONS: Tuple[str, ...] = ("left", "right", "up", "down")
# unit step (dx, dy) of each direction, x right and y down
DIRECTION_VECTORS: Dict[str, Tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CLIP_KINDS: Tuple[str, ...] = ("moving", "still")
SPLITS: Tuple[str, ...] = ("train", "heldout")
MOVING_COUNTS: Tuple[int, ...] = (1, 2)
STILL_COUNTS: Tuple[int, ...] = (1, 2, 3)
HELDOUT_FRACTION = 0.2
HELDOUT_MIN_PER_KIND = 8
NUM_FRAMES = 8
MIN_SPEED, MAX_SPEED = 1.5, 2.0    # px per frame at 32 px
MIN_RADIUS, MAX_RADIUS = 4.5, 5.5  # px at 32 px (below ~4.5 the image detector takes some pixelated circles for squares)
GAP = 2.0                          # px of black between bounding boxes at 32 px


@dataclass(frozen=True)
class ClipScene:
    """What a clip shows: one object spec (colour, shape, count) and the direction all its objects move (None: still)."""
    obj: ObjectSpec
    direction: Optional[str] = None

    def __post_init__(self):
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"ClipScene.direction {self.direction!r} is not one of {list(DIRECTIONS)}")
        counts = MOVING_COUNTS if self.direction is not None else STILL_COUNTS
        if self.obj.count not in counts:
            raise ValueError(f"ClipScene: a {'moving' if self.direction else 'still'} clip has count in {list(counts)}, "
                             f"got {self.obj.count}")

    @property
    def kind(self) -> str:
        return "still" if self.direction is None else "moving"


@dataclass(frozen=True)
class Clip:
    """One rendered clip and its ground truth.

    frames: float tensor (F, 3, size, size) in [0, 1].
    tracks: float array (F, N, 2): object n's centre (x, y) in frame t, pixels (pixel centres at i + 0.5).
    velocity: (dx, dy) px per frame shared by every object ((0, 0) for a still clip).
    """
    caption: str
    scene: ClipScene
    frames: torch.Tensor
    tracks: np.ndarray
    velocity: Tuple[float, float]
    radii: Tuple[float, ...]


# ---------------------------------------------------------------- captions

def clip_caption(scene: ClipScene) -> str:
    """``"two blue squares moving up"`` / ``"a red circle"``."""
    text = caption(Scene((scene.obj,)))
    return text if scene.direction is None else f"{text} moving {scene.direction}"


def parse_clip_caption(text: str) -> ClipScene:
    """Inverse of :func:`clip_caption`; ValueError naming the caption and the bad word."""
    words = text.strip().rstrip(".").lower().split()
    direction = None
    if "moving" in words:
        i = words.index("moving")
        tail = words[i + 1:]
        if len(tail) != 1 or tail[0] not in DIRECTIONS:
            raise ValueError(f"clip caption {text!r}: 'moving' must be followed by one of {list(DIRECTIONS)}, "
                             f"got {' '.join(tail)!r}")
        direction, words = tail[0], words[:i]
    scene = parse_caption(" ".join(words))
    if scene.relation is not None:
        raise ValueError(f"clip caption {text!r}: clips have one object spec, not a relation")
    try:
        return ClipScene(scene.objects[0], direction)
    except ValueError as exc:
        raise ValueError(f"clip caption {text!r}: {exc}") from None


def clip_kind(scene_or_caption) -> str:
    """``"moving"`` or ``"still"``."""
    scene = parse_clip_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    return scene.kind


def _all_scenes() -> List[ClipScene]:
    scenes = [ClipScene(ObjectSpec(c, s, n), d) for d in DIRECTIONS for n in MOVING_COUNTS for c in COLORS
              for s in SHAPES]
    return scenes + [ClipScene(ObjectSpec(c, s, n)) for n in STILL_COUNTS for c in COLORS for s in SHAPES]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _coverage(scenes: Sequence[ClipScene]) -> Tuple[frozenset, ...]:
    return (frozenset(s.obj.color for s in scenes), frozenset(s.obj.shape for s in scenes),
            frozenset(s.obj.count for s in scenes), frozenset(s.direction for s in scenes))


def _build_splits() -> Dict[str, Tuple[str, ...]]:
    held = set()
    for kind in CLIP_KINDS:
        scenes = sorted((s for s in _all_scenes() if s.kind == kind),
                        key=lambda s: (_hash("diffalign-clips-heldout:" + clip_caption(s)), clip_caption(s)))
        want = max(HELDOUT_MIN_PER_KIND, round(HELDOUT_FRACTION * len(scenes)))
        kept = list(scenes)
        for s in scenes:  # in hash order, skipping a caption whose loss would leave an attribute untrained
            if len(kept) == len(scenes) - want:
                break
            rest = [k for k in kept if k != s]
            if _coverage(rest) == _coverage(scenes):
                kept = rest
                held.add(clip_caption(s))
    everything = [clip_caption(s) for s in _all_scenes()]
    return {"train": tuple(c for c in everything if c not in held), "heldout": tuple(c for c in everything if c in held)}


_SPLITS = _build_splits()
_SPLIT_OF = {c: split for split, caps in _SPLITS.items() for c in caps}


def _check_split(split: str):
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")


def clip_captions(split: Optional[str] = None, kind: Optional[str] = None) -> Tuple[str, ...]:
    """Every clip caption of ``split`` (or both) and ``kind`` (or both), in a fixed order."""
    if split is not None:
        _check_split(split)
    caps = _SPLITS["train"] + _SPLITS["heldout"] if split is None else _SPLITS[split]
    if kind is not None:
        if kind not in CLIP_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {list(CLIP_KINDS)}")
        caps = tuple(c for c in caps if clip_kind(c) == kind)
    return caps


def clip_split_of(scene_or_caption) -> str:
    """``"train"`` or ``"heldout"``."""
    scene = parse_clip_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    return _SPLIT_OF[clip_caption(scene)]


def balanced_clip_prompts(split: str = "heldout", per_kind: Optional[int] = None) -> List[str]:
    """``per_kind`` captions of each kind of ``split`` (moving, then still), each kind's in its fixed order, cycled;
    ``per_kind=None``: the size of the larger kind, so every caption occurs at least once. An evaluation set whose
    plain mean weighs the two kinds equally."""
    _check_split(split)
    groups = [clip_captions(split, k) for k in CLIP_KINDS]
    per_kind = max(len(g) for g in groups) if per_kind is None else per_kind
    if per_kind < 1:
        raise ValueError(f"balanced_clip_prompts: per_kind must be >= 1, got {per_kind}")
    return [g[i % len(g)] for g in groups for i in range(per_kind)]


def sample_clip_scene(rng: np.random.Generator, split: Optional[str] = None) -> ClipScene:
    """A random clip scene: kind uniform over moving / still, then uniform attributes (rejected until in ``split``)."""
    if split is not None:
        _check_split(split)
    while True:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if rng.integers(2) == 0:
            scene = ClipScene(ObjectSpec(color, shape, MOVING_COUNTS[int(rng.integers(len(MOVING_COUNTS)))]),
                              DIRECTIONS[int(rng.integers(len(DIRECTIONS)))])
        else:
            scene = ClipScene(ObjectSpec(color, shape, STILL_COUNTS[int(rng.integers(len(STILL_COUNTS)))]))
        if split is None or _SPLIT_OF[clip_caption(scene)] == split:
            return scene


# ---------------------------------------------------------------- rendering

def _box(cx: float, cy: float, r: float) -> Tuple[float, float, float, float]:
    return cx - r, cy - r, cx + r, cy + r


def _apart(a, b, gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def clip_layout(scene: ClipScene, frames: int = NUM_FRAMES, size: int = 32,
                rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, Tuple[float, float], Tuple[float, ...]]:
    """Random start positions, radii and one shared velocity such that every object stays inside the frame and no
    two objects' boxes come within ``GAP`` px. Returns (tracks (F, N, 2), velocity, radii)."""
    if size < 16:
        raise ValueError(f"render_clip: size must be >= 16 px, got {size}")
    if frames < 2:
        raise ValueError(f"render_clip: frames must be >= 2, got {frames}")
    rng = np.random.default_rng(0) if rng is None else rng
    scale = size / 32
    n = scene.obj.count
    for _ in range(400):
        speed = float(rng.uniform(MIN_SPEED, MAX_SPEED)) * scale if scene.direction else 0.0
        ux, uy = DIRECTION_VECTORS[scene.direction] if scene.direction else (0, 0)
        vx, vy = ux * speed, uy * speed
        travel_x, travel_y = vx * (frames - 1), vy * (frames - 1)
        starts, radii = [], []
        for _ in range(n):
            r = float(rng.uniform(MIN_RADIUS, MAX_RADIUS)) * scale
            lo_x, hi_x = r + 0.5 + max(0.0, -travel_x), size - r - 0.5 - max(0.0, travel_x)
            lo_y, hi_y = r + 0.5 + max(0.0, -travel_y), size - r - 0.5 - max(0.0, travel_y)
            cx, cy = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
            # a shared velocity keeps relative positions, so apart in frame 0 means apart in every frame
            if all(_apart(_box(cx, cy, r), _box(px, py, pr), GAP * scale) for (px, py), pr in zip(starts, radii)):
                starts.append((cx, cy))
                radii.append(r)
        if len(starts) == n:
            t = np.arange(frames, dtype=np.float64)[:, None]
            tracks = np.stack([np.concatenate([sx + vx * t, sy + vy * t], axis=1) for sx, sy in starts], axis=1)
            return tracks, (vx, vy), tuple(radii)
    raise RuntimeError(f"clip_layout: could not place {clip_caption(scene)!r} in {size}x{size} px")  # not at >= 16


def draw_clip(scene: ClipScene, tracks: np.ndarray, radii: Sequence[float], size: int = 32) -> torch.Tensor:
    """The objects at ``tracks`` (F, N, 2) drawn on black: float (F, 3, size, size) in [0, 1]."""
    o = scene.obj
    frames = [draw([Placed(o.color, o.shape, float(x), float(y), float(r), (0, 0, size, size))
                    for (x, y), r in zip(tracks[t], radii)], size) for t in range(tracks.shape[0])]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255.0)


def render_clip(scene_or_caption, frames: int = NUM_FRAMES, size: int = 32,
                rng: Optional[np.random.Generator] = None) -> Clip:
    """A random clip of ``scene_or_caption`` (a :class:`ClipScene` or caption); ``rng=None`` means ``default_rng(0)``."""
    scene = parse_clip_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    tracks, velocity, radii = clip_layout(scene, frames, size, rng)
    return Clip(clip_caption(scene), scene, draw_clip(scene, tracks, radii, size), tracks, velocity, radii)


class ShapesClipsDataset(torch.utils.data.Dataset):
    """``n`` (clip, caption) pairs of ``split``; item ``i`` depends only on (seed, i), not on access order.

    Items are float tensors (F, 3, size, size) in [0, 1]; :meth:`clip` gives the whole :class:`Clip`.
    """

    def __init__(self, n: int, seed: int = 0, frames: int = NUM_FRAMES, size: int = 32, split: str = "train"):
        _check_split(split)
        if n < 1:
            raise ValueError(f"ShapesClipsDataset: n must be >= 1, got {n}")
        self.n, self.seed, self.frames, self.size, self.split = n, seed, frames, size, split

    def __len__(self) -> int:
        return self.n

    def clip(self, i: int) -> Clip:
        if not -self.n <= i < self.n:
            raise IndexError(f"ShapesClipsDataset index {i} out of range for length {self.n}")
        rng = np.random.default_rng([self.seed, i % self.n])
        return render_clip(sample_clip_scene(rng, self.split), self.frames, self.size, rng)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, str]:
        c = self.clip(i)
        return c.frames, c.caption
