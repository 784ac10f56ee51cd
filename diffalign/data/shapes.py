"""Procedural coloured-shapes scenes, their captions, and the train / held-out prompt split.

The demo's tiny text-to-image model is trained on these images and aligned against the
compositional reward (:mod:`diffalign.rewards.compositional`), so everything here is deterministic
from a seed and needs no download.

Captions come in three kinds (:func:`caption_kind`):

- ``single``:   ``"a red circle"``                              (one object, count 1)
- ``count``:    ``"two blue squares"``, ``"three green triangles"`` (one object spec, count 2 or 3)
- ``relation``: ``"a green triangle left of a yellow circle"``  (two objects of count 1 and of
  different colours, so the reward can tell them apart by colour)

Images (:func:`render`) are ``size`` x ``size`` RGB uint8 (32 by default) on a black background:
flat palette colours with hard edges, shapes of "radius" 4-7 px at 32 px (scaled with ``size``),
upright triangles, and at least ``2 * size / 32`` px of black between any two objects' bounding
boxes, so no two objects touch. A relation holds between bounding-box centres by at least
``size / 4`` px along its axis, and that axis dominates (``|dx| > |dy|`` for left/right).

Held-out prompts (:func:`prompts` with ``split="heldout"``) are a fixed set of captions, 20 % of every
caption kind but at least :data:`HELDOUT_MIN_PER_KIND` pictures of each (8 of the 12 single-object
captions, 8 of the 24 count captions, 20 % of the relation pictures), chosen by a SHA-256 hash of the caption (not by an RNG, so the set cannot
drift between numpy versions), in hash order but skipping any picture whose loss would leave a colour,
shape or count without a training caption of its kind. A relation and its mirror (``A left of B`` /
``B right of A``) describe the same picture, so they are held out together; the training split never
contains a held-out picture under another wording. Every colour, shape and count still occurs in training,
in every kind.

Additions to the shared API: :data:`VOCAB` (every caption word, for an offline tokenizer),
:func:`caption_kind`, :func:`all_captions`, :func:`split_of`, :func:`noisy_caption`, :func:`balanced_prompts` (the demo's
evaluation set: each caption kind equally often), :func:`layout` / :func:`draw` (the
two halves of :func:`render`; ``layout`` returns the placed objects, i.e. the ground truth a detector
is tested against) and ``sample_scene(rng, split=None)``. ``render(scene, size, rng=None)`` uses
``numpy.random.default_rng(0)`` when no generator is given, so it is deterministic either way.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

# Palette: hues ~0 / 124 / 229 / 57 degrees, full saturation, bright, so a hue test separates them
# even on blurry generated images, and orange / cyan / purple fall between them.
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (235, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 80, 255),
    "yellow": (240, 230, 20),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
COUNTS: Dict[int, str] = {1: "a", 2: "two", 3: "three"}
RELATIONS: Tuple[str, ...] = ("left of", "right of", "above", "below")
KINDS: Tuple[str, ...] = ("single", "count", "relation")
SPLITS: Tuple[str, ...] = ("train", "heldout")
HELDOUT_FRACTION = 0.2
# at least this many held-out pictures of every kind: with 20% alone the single-object kind held out 2 captions,
# and a third of the demo's headline (the kinds weigh equally) rested on them
HELDOUT_MIN_PER_KIND = 8

_MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_PLURAL = {s: s + "s" for s in SHAPES}
VOCAB: Tuple[str, ...] = tuple(sorted(set(COUNTS.values()) | set(COLORS) | set(SHAPES) | set(_PLURAL.values())
                                      | {w for r in RELATIONS for w in r.split()}))


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    count: int = 1

    def __post_init__(self):
        if self.color not in COLORS:
            raise ValueError(f"ObjectSpec.color {self.color!r} is not one of {list(COLORS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"ObjectSpec.shape {self.shape!r} is not one of {list(SHAPES)}")
        if self.count not in COUNTS:
            raise ValueError(f"ObjectSpec.count {self.count!r} is not one of {list(COUNTS)}")


@dataclass(frozen=True)
class Scene:
    """One object spec (count 1-3), or two count-1 objects and the relation of the first to the second."""
    objects: Tuple[ObjectSpec, ...]
    relation: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.relation is None:
            if len(self.objects) != 1:
                raise ValueError(f"Scene without a relation has exactly 1 object spec, got {len(self.objects)}")
        else:
            if self.relation not in RELATIONS:
                raise ValueError(f"Scene.relation {self.relation!r} is not one of {list(RELATIONS)}")
            if len(self.objects) != 2 or any(o.count != 1 for o in self.objects):
                raise ValueError(f"Scene with relation {self.relation!r} has exactly 2 objects of count 1, "
                                 f"got {self.objects}")


@dataclass(frozen=True)
class Placed:
    """One drawn object: its centre (x right, y down, pixels), its 'radius' and a pixel box (x0, y0, x1, y1), x1/y1
    exclusive, that contains every drawn pixel (it may be 1 px wider than them where the outline grazes a pixel centre)."""
    color: str
    shape: str
    cx: float
    cy: float
    r: float
    bbox: Tuple[int, int, int, int]


# ---------------------------------------------------------------- captions

def _object_phrase(o: ObjectSpec) -> str:
    return f"{COUNTS[o.count]} {o.color} {_PLURAL[o.shape] if o.count > 1 else o.shape}"


def caption(scene: Scene) -> str:
    """The scene's caption, e.g. ``"two blue squares"`` or ``"a red circle above a green square"``."""
    if scene.relation is None:
        return _object_phrase(scene.objects[0])
    a, b = scene.objects
    return f"{_object_phrase(a)} {scene.relation} {_object_phrase(b)}"


def _parse_object(words: List[str], text: str) -> Tuple[ObjectSpec, List[str]]:
    if len(words) < 3:
        raise ValueError(f"caption {text!r}: expected '<count> <colour> <shape>', got {' '.join(words)!r}")
    count_word, color, shape = words[:3]
    counts = {w: n for n, w in COUNTS.items()}
    if count_word not in counts:
        raise ValueError(f"caption {text!r}: bad word {count_word!r}; a count is one of {list(counts)}")
    if color not in COLORS:
        raise ValueError(f"caption {text!r}: bad word {color!r}; a colour is one of {list(COLORS)}")
    n = counts[count_word]
    names = {(_PLURAL[s] if n > 1 else s): s for s in SHAPES}
    if shape not in names:
        raise ValueError(f"caption {text!r}: bad word {shape!r}; after {count_word!r} a shape is one of {list(names)}")
    return ObjectSpec(color, names[shape], n), words[3:]


def parse_caption(text: str) -> Scene:
    """Inverse of :func:`caption` (case and surrounding spaces / a final '.' are ignored); ValueError names the bad word."""
    words = text.strip().rstrip(".").lower().split()
    first, rest = _parse_object(words, text)
    if not rest:
        return Scene((first,))
    for rel in RELATIONS:
        rw = rel.split()
        if rest[:len(rw)] == rw:
            if first.count != 1:
                raise ValueError(f"caption {text!r}: a relation needs single objects, got count {first.count}")
            second, tail = _parse_object(rest[len(rw):], text)
            if tail:
                raise ValueError(f"caption {text!r}: bad word {tail[0]!r}; nothing may follow the second object")
            if second.count != 1:
                raise ValueError(f"caption {text!r}: a relation needs single objects, got count {second.count}")
            return Scene((first, second), rel)
    raise ValueError(f"caption {text!r}: bad word {rest[0]!r}; a relation is one of {list(RELATIONS)}")


def caption_kind(scene_or_caption) -> str:
    """``"single"``, ``"count"`` or ``"relation"``."""
    scene = parse_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    if scene.relation is not None:
        return "relation"
    return "single" if scene.objects[0].count == 1 else "count"


def _all_scenes() -> List[Scene]:
    scenes = [Scene((ObjectSpec(c, s, n),)) for n in COUNTS for c in COLORS for s in SHAPES]
    for rel in RELATIONS:
        for c1 in COLORS:
            for s1 in SHAPES:
                for c2 in COLORS:
                    if c2 == c1:
                        continue
                    for s2 in SHAPES:
                        scenes.append(Scene((ObjectSpec(c1, s1), ObjectSpec(c2, s2)), rel))
    return scenes


def _picture_key(scene: Scene) -> str:
    """The same string for a relation caption and its mirror wording (they show the same picture)."""
    if scene.relation in ("right of", "below"):
        a, b = scene.objects
        scene = Scene((b, a), _MIRROR[scene.relation])
    return caption(scene)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _coverage(keys: Sequence[str]) -> Tuple[frozenset, frozenset, frozenset]:
    """The colours, shapes and counts the captions ``keys`` (of one kind) name."""
    objects = [o for k in keys for o in parse_caption(k).objects]
    return (frozenset(o.color for o in objects), frozenset(o.shape for o in objects),
            frozenset(o.count for o in objects))


def _build_splits() -> Dict[str, Tuple[str, ...]]:
    by_kind: Dict[str, Dict[str, List[str]]] = {k: {} for k in KINDS}
    for scene in _all_scenes():
        by_kind[caption_kind(scene)].setdefault(_picture_key(scene), []).append(caption(scene))
    held: set = set()
    for kind, groups in by_kind.items():
        keys = sorted(groups, key=lambda k: (_hash("diffalign-heldout:" + k), k))
        want = max(HELDOUT_MIN_PER_KIND, round(HELDOUT_FRACTION * len(keys)))
        kept = list(keys)
        for key in keys:  # in hash order, skipping a picture whose loss would leave an attribute untrained
            if len(kept) == len(keys) - want:
                break
            rest = [k for k in kept if k != key]
            if _coverage(rest) == _coverage(keys):
                kept = rest
                held.update(groups[key])
    everything = [caption(s) for s in _all_scenes()]
    return {"train": tuple(c for c in everything if c not in held), "heldout": tuple(c for c in everything if c in held)}


_SPLITS = _build_splits()
_SPLIT_OF = {c: split for split, caps in _SPLITS.items() for c in caps}


def all_captions(split: Optional[str] = None) -> Tuple[str, ...]:
    """Every caption of ``split`` (or of both), in a fixed order."""
    if split is None:
        return _SPLITS["train"] + _SPLITS["heldout"]
    _check_split(split)
    return _SPLITS[split]


def split_of(scene_or_caption) -> str:
    """``"train"`` or ``"heldout"``."""
    text = caption(scene_or_caption) if isinstance(scene_or_caption, Scene) else caption(parse_caption(scene_or_caption))
    return _SPLIT_OF[text]


def noisy_caption(scene: Scene, rng: np.random.Generator, color_noise: float) -> str:
    """``scene``'s caption with each object's colour word replaced, with probability ``color_noise``, by another
    palette colour (one the scene's other object does not have): web-like alt text that is often wrong.

    The demo model is pre-trained on such captions (scripts/train_demo_model.py ``--caption-noise``), so that it
    follows its prompt's colours only about as often as its captions were right, an error alignment can fix.
    No held-out caption is ever trained: the replacement colour is drawn among those that keep the caption in the
    training split (so every kind is about equally noisy, although most single-object captions are held out), and
    an object with no such colour keeps its own. Draws from ``rng`` for every object whatever the outcome, so later
    draws do not depend on it.
    """
    if not 0.0 <= color_noise <= 1.0:
        raise ValueError(f"noisy_caption: color_noise must be in [0, 1], got {color_noise}")
    objects = list(scene.objects)
    for k, o in enumerate(scene.objects):
        flip, pick = rng.random(), rng.random()
        if flip < color_noise:
            others = [c for c in COLORS if c != o.color and all(p.color != c for j, p in enumerate(objects) if j != k)]
            trained = [c for c in others if split_of(Scene(tuple(objects[:k]) + (ObjectSpec(c, o.shape, o.count),)
                                                           + tuple(objects[k + 1:]), scene.relation)) == "train"]
            if trained:
                objects[k] = ObjectSpec(trained[int(pick * len(trained))], o.shape, o.count)
    noisy = Scene(tuple(objects), scene.relation)
    return caption(noisy) if split_of(noisy) == "train" else caption(scene)


def _check_split(split: str):
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")


def prompts(split: str = "heldout", n: Optional[int] = None, seed: int = 0) -> List[str]:
    """Captions of ``split``: all of them in a fixed order if ``n`` is None, else ``n`` drawn with ``seed``.

    Drawn prompts are balanced over the caption kinds: each kind's captions are shuffled and the kinds
    taken in turn (a kind that runs out is skipped); past the split's size the whole order repeats.
    """
    _check_split(split)
    caps = _SPLITS[split]
    if n is None:
        return list(caps)
    if n < 0:
        raise ValueError(f"prompts: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    queues = []
    for kind in KINDS:
        group = [c for c in caps if caption_kind(c) == kind]
        queues.append([group[i] for i in rng.permutation(len(group))])
    order: List[str] = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return [order[i % len(order)] for i in range(n)]


def balanced_prompts(split: str = "heldout", per_kind: Optional[int] = 96,
                     kinds: Sequence[str] = KINDS) -> List[str]:
    """``per_kind`` captions of each of ``kinds`` of ``split`` (in KINDS order: single, count, relation): each
    kind's captions in their fixed order, cycled until there are ``per_kind``. ``per_kind=None``: the size of the
    largest of those kinds, so that every caption occurs at least once.

    The evaluation set of ``diffalign demo``. Its plain mean accuracy weights the three kinds equally, as
    GenEval's overall score is the mean of its task scores. Listing every held-out caption once instead would
    make the score a relation score: relations are 86 of the 93 held-out captions only because two objects
    have more combinations than one. The demo's training prompts are ``balanced_prompts("train", None)`` for
    the same reason: drawn uniformly from the plain caption list, 92 % of the rollouts would be relations.
    """
    _check_split(split)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"balanced_prompts: kinds must be distinct caption kinds of {list(KINDS)}, got {list(kinds)}")
    chosen = [k for k in KINDS if k in kinds]
    if per_kind is None:
        per_kind = max(sum(caption_kind(c) == kind for c in _SPLITS[split]) for kind in chosen)
    if per_kind < 1:
        raise ValueError(f"balanced_prompts: per_kind must be >= 1, got {per_kind}")
    out: List[str] = []
    for kind in chosen:
        group = [c for c in _SPLITS[split] if caption_kind(c) == kind]
        out += [group[i % len(group)] for i in range(per_kind)]
    return out


def sample_scene(rng: np.random.Generator, split: Optional[str] = None) -> Scene:
    """A random scene: kind uniform over single / count / relation, then uniform attributes.

    With ``split`` the scene's caption is in that split (rejection sampling; ~20 % of scenes are held out).
    """
    if split is not None:
        _check_split(split)
    while True:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        colors, shapes = list(COLORS), SHAPES
        if kind == "single":
            scene = Scene((ObjectSpec(colors[rng.integers(4)], shapes[rng.integers(3)], 1),))
        elif kind == "count":
            scene = Scene((ObjectSpec(colors[rng.integers(4)], shapes[rng.integers(3)], int(rng.integers(2, 4))),))
        else:
            c1, c2 = rng.choice(len(colors), size=2, replace=False)
            scene = Scene((ObjectSpec(colors[c1], shapes[rng.integers(3)]), ObjectSpec(colors[c2], shapes[rng.integers(3)])),
                          RELATIONS[int(rng.integers(len(RELATIONS)))])
        if split is None or _SPLIT_OF[caption(scene)] == split:
            return scene


# ---------------------------------------------------------------- rendering

def _bbox(shape: str, cx: float, cy: float, r: float, size: int) -> Tuple[int, int, int, int]:
    h = r * 0.85 if shape == "square" else r
    # pixel i covers [i, i+1); it is drawn when its centre i+0.5 is inside the shape
    x0, x1 = math.ceil(cx - h - 0.5), math.floor(cx + h - 0.5) + 1
    y0, y1 = math.ceil(cy - h - 0.5), math.floor(cy + h - 0.5) + 1
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        h = r * 0.85  # about the circle's area, so the three shapes look the same size
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    # upright isosceles triangle: apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
    return (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)


def _relation_ok(rel: str, a: Placed, b: Placed, margin: float) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # a relative to b
    if rel == "left of":
        return dx >= margin and abs(dx) > abs(dy)
    if rel == "right of":
        return -dx >= margin and abs(dx) > abs(dy)
    if rel == "above":
        return dy >= margin and abs(dy) > abs(dx)
    return -dy >= margin and abs(dy) > abs(dx)


def layout(scene: Scene, size: int = 32, rng: Optional[np.random.Generator] = None) -> List[Placed]:
    """Random non-touching positions and sizes for every object of ``scene`` that honour its relation."""
    if size < 16:
        raise ValueError(f"render: size must be >= 16 px, got {size}")
    rng = np.random.default_rng(0) if rng is None else rng
    scale = size / 32
    gap = 2 * scale
    specs = [(o.color, o.shape) for o in scene.objects for _ in range(o.count)]
    r_max = 7.0 if len(specs) < 3 else 6.0
    for attempt in range(400):
        if attempt and attempt % 100 == 0:
            r_max = max(4.0, r_max - 1)  # crowded: try smaller shapes
        placed: List[Placed] = []
        for color, shape in specs:
            for _ in range(50):
                r = float(rng.uniform(4.0, r_max)) * scale
                lo, hi = r + 0.5, size - r - 0.5
                cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
                cand = Placed(color, shape, cx, cy, r, _bbox(shape, cx, cy, r, size))
                if all(_apart(cand.bbox, p.bbox, gap) for p in placed):
                    placed.append(cand)
                    break
            else:
                break
        if len(placed) == len(specs) and (scene.relation is None
                                         or _relation_ok(scene.relation, placed[0], placed[1], size / 4)):
            return placed
    raise RuntimeError(f"layout: could not place {caption(scene)!r} in {size}x{size} px")  # not reached at size >= 16


def _apart(a, b, gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def draw(placed: Sequence[Placed], size: int = 32) -> np.ndarray:
    """The objects on a black background: uint8 (size, size, 3)."""
    img = np.zeros((size, size, 3), np.uint8)
    for p in placed:
        img[_mask(p.shape, p.cx, p.cy, p.r, size)] = COLORS[p.color]
    return img


def render(scene: Scene, size: int = 32, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """A random picture of ``scene``: uint8 (size, size, 3); ``rng=None`` means ``default_rng(0)``."""
    return draw(layout(scene, size, rng), size)


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` (image, caption) pairs of ``split``; item ``i`` depends only on (seed, i), not on access order.

    Images are float tensors (3, size, size) in [0, 1].
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, split: str = "train"):
        _check_split(split)
        if n < 1:
            raise ValueError(f"ShapesDataset: n must be >= 1, got {n}")
        self.n, self.seed, self.size, self.split = n, seed, size, split

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int) -> Tuple[Scene, np.random.Generator]:
        rng = np.random.default_rng([self.seed, i])
        return sample_scene(rng, self.split), rng

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, str]:
        if not -self.n <= i < self.n:
            raise IndexError(f"ShapesDataset index {i} out of range for length {self.n}")
        i %= self.n
        scene, rng = self.scene(i)
        img = render(scene, self.size, rng)
        return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0), caption(scene)
