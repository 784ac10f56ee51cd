"""Procedural instruction edits of the coloured-shapes world (:mod:`diffalign.data.shapes`): input -> instruction -> target.

The editing demo's tiny InstructPix2Pix-style model is trained on these triples and aligned against the edit
reward (:mod:`diffalign.rewards.edit_compositional`), so everything here is deterministic from a seed and needs
no download. Pictures use the image world's palette and masks (``shapes.draw``), 32x32 RGB on black.

Input scenes hold 2 or 3 objects with pairwise different colours AND pairwise different shapes, so "the circle"
or "the green circle" names exactly one object. Instructions come in four kinds (:data:`EDIT_KINDS`):

- ``recolour``: ``"make the red circle blue"``  (the new colour is not in the scene, so colours stay distinct)
- ``move``:     ``"move the red circle to the left"`` / ``"... to the right"`` / ``"... up"`` / ``"... down"``:
  the object moves :data:`MOVE_PX` px (8 at 32 px) along the axis and stays clear of the others and the border
- ``add``:      ``"add a red triangle"`` (input of 2 objects without that colour or shape; placed anywhere free)
- ``remove``:   ``"remove the red circle"``

Every object the instruction does not name keeps its colour, shape, place and size in the target.

Splits (:func:`edits` with ``split="heldout"``) are disjoint in instructions AND in input scenes:

- instructions: per kind, ``max(8, 20 %)`` held out (:data:`HELDOUT_MIN_PER_KIND`), picked by a SHA-256 hash of
  the instruction (not an RNG, so the set cannot drift between numpy versions) in hash order, skipping any whose
  loss would leave a colour, shape or direction without a training instruction of its kind;
- input scenes: a scene's identity is its composition, the set of its (colour, shape) objects (there are 60).
  A fixed hash-ordered 20 % of them are held-out inputs, grown where needed so that every held-out instruction
  applies to some held-out composition. Training edits never use a held-out composition as input or as target.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from itertools import combinations, permutations
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import torch

from diffalign.data.shapes import COLORS, SHAPES, Placed, _apart, _bbox, draw

EDIT_KINDS: Tuple[str, ...] = ("recolour", "move", "add", "remove")
DIRECTIONS: Tuple[str, ...] = ("left", "right", "up", "down")
# unit step (dx, dy) of each direction, x right and y down
DIRECTION_VECTORS: Dict[str, Tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_DIRECTION_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
SPLITS: Tuple[str, ...] = ("train", "heldout")
HELDOUT_FRACTION = 0.2
HELDOUT_MIN_PER_KIND = 8
MOVE_PX = 8.0                      # px a move shifts its object, at 32 px (scaled with the size)
MIN_RADIUS, MAX_RADIUS = 4.5, 5.5  # px at 32 px: small enough that an object has room to move (as shapes_clips)
GAP = 2.0                          # px of black between bounding boxes at 32 px, as the image world
VOCAB: Tuple[str, ...] = tuple(sorted({"make", "the", "move", "to", "up", "down", "left", "right", "add", "a",
                                       "remove"} | set(COLORS) | set(SHAPES)))

Composition = FrozenSet[Tuple[str, str]]


@dataclass(frozen=True)
class Edit:
    """A structured instruction: ``kind``, the object it names (``color``, ``shape``), and ``to_color`` (recolour)
    or ``direction`` (move)."""
    kind: str
    color: str
    shape: str
    to_color: Optional[str] = None
    direction: Optional[str] = None

    def __post_init__(self):
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"Edit.kind {self.kind!r} is not one of {list(EDIT_KINDS)}")
        if self.color not in COLORS:
            raise ValueError(f"Edit.color {self.color!r} is not one of {list(COLORS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"Edit.shape {self.shape!r} is not one of {list(SHAPES)}")
        if (self.kind == "recolour") != (self.to_color is not None):
            raise ValueError(f"Edit.to_color is set exactly for recolour edits, got kind {self.kind!r} "
                             f"to_color {self.to_color!r}")
        if self.to_color is not None and (self.to_color not in COLORS or self.to_color == self.color):
            raise ValueError(f"Edit.to_color {self.to_color!r} must be a palette colour other than {self.color!r}")
        if (self.kind == "move") != (self.direction is not None):
            raise ValueError(f"Edit.direction is set exactly for move edits, got kind {self.kind!r} "
                             f"direction {self.direction!r}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"Edit.direction {self.direction!r} is not one of {list(DIRECTIONS)}")

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Edit":
        if not isinstance(data, dict):
            raise ValueError(f"an edit spec is a dict with kind/color/shape[/to_color/direction], got {data!r}")
        unknown = set(data) - {"kind", "color", "shape", "to_color", "direction"}
        if unknown or not {"kind", "color", "shape"} <= set(data):
            raise ValueError(f"edit spec {data!r}: needs kind, color, shape (+ to_color or direction), "
                             f"unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class EditExample:
    """One training or evaluation triple: the input objects, the edit, the target objects (ground truth)."""
    source: Tuple[Placed, ...]
    edit: Edit
    target: Tuple[Placed, ...]

    @property
    def instruction(self) -> str:
        return instruction(self.edit)

    def images(self, size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
        """(input, target) pictures, uint8 (size, size, 3)."""
        return draw(self.source, size), draw(self.target, size)


# ---------------------------------------------------------------- instructions

def instruction(edit: Edit) -> str:
    """The instruction text, e.g. ``"make the red circle blue"``."""
    if edit.kind == "recolour":
        return f"make the {edit.color} {edit.shape} {edit.to_color}"
    if edit.kind == "move":
        return f"move the {edit.color} {edit.shape} {_DIRECTION_PHRASE[edit.direction]}"
    if edit.kind == "add":
        return f"add a {edit.color} {edit.shape}"
    return f"remove the {edit.color} {edit.shape}"


def parse_instruction(text: str) -> Edit:
    """Inverse of :func:`instruction` (case, surrounding spaces and a final '.' ignored); ValueError names the text."""
    words = text.strip().rstrip(".").lower().split()
    for edit in all_edits():
        if instruction(edit).split() == words:
            return edit
    raise ValueError(f"instruction {text!r} is not a shapes edit; e.g. {instruction(all_edits()[0])!r}, "
                     f"kinds {list(EDIT_KINDS)}")


def all_edits(kind: Optional[str] = None) -> List[Edit]:
    """Every structured instruction (of ``kind``), in a fixed order."""
    out: List[Edit] = []
    for c in COLORS:
        for s in SHAPES:
            out += [Edit("recolour", c, s, to_color=t) for t in COLORS if t != c]
            out += [Edit("move", c, s, direction=d) for d in DIRECTIONS]
            out += [Edit("add", c, s), Edit("remove", c, s)]
    out.sort(key=lambda e: EDIT_KINDS.index(e.kind))
    if kind is None:
        return out
    if kind not in EDIT_KINDS:
        raise ValueError(f"edit kind {kind!r} is not one of {list(EDIT_KINDS)}")
    return [e for e in out if e.kind == kind]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _coverage(edits: Sequence[Edit]) -> Tuple[frozenset, frozenset, frozenset, frozenset]:
    return (frozenset(e.color for e in edits), frozenset(e.shape for e in edits),
            frozenset(e.to_color for e in edits), frozenset(e.direction for e in edits))


def _all_compositions() -> List[Composition]:
    out = []
    for n in (2, 3):
        for shapes in combinations(SHAPES, n):
            for colors in permutations(COLORS, n):
                out.append(frozenset(zip(colors, shapes)))
    return sorted(out, key=lambda c: sorted(c))


def _comp_key(comp: Composition) -> str:
    return ", ".join(f"{c} {s}" for c, s in sorted(comp))


def applies(edit: Edit, comp: Composition) -> bool:
    """Whether ``edit`` can be applied to a scene of composition ``comp`` (and keeps colours and shapes distinct)."""
    colors, shapes = {c for c, _ in comp}, {s for _, s in comp}
    if edit.kind == "add":
        return len(comp) < len(SHAPES) and edit.color not in colors and edit.shape not in shapes
    if (edit.color, edit.shape) not in comp:
        return False
    if edit.kind == "recolour":
        return edit.to_color not in colors
    if edit.kind == "remove":
        return len(comp) > 2  # an input keeps at least 2 objects, so a removal leaves at least one to preserve
    return True


def target_composition(edit: Edit, comp: Composition) -> Composition:
    if edit.kind == "add":
        return comp | {(edit.color, edit.shape)}
    if edit.kind == "remove":
        return comp - {(edit.color, edit.shape)}
    if edit.kind == "recolour":
        return (comp - {(edit.color, edit.shape)}) | {(edit.to_color, edit.shape)}
    return comp


def _build_splits():
    held_edits: List[Edit] = []
    for kind in EDIT_KINDS:
        group = all_edits(kind)
        order = sorted(group, key=lambda e: (_hash("diffalign-edit-heldout:" + instruction(e)), instruction(e)))
        want = max(HELDOUT_MIN_PER_KIND, round(HELDOUT_FRACTION * len(group)))
        kept = list(group)
        for e in order:  # hash order, skipping an instruction whose loss would leave an attribute untrained
            if len(group) - len(kept) == want:
                break
            rest = [k for k in kept if k != e]
            if _coverage(rest) == _coverage(group):
                kept = rest
                held_edits.append(e)
    comps = sorted(_all_compositions(), key=lambda c: (_hash("diffalign-edit-scene:" + _comp_key(c)), _comp_key(c)))
    held_comps = comps[:round(HELDOUT_FRACTION * len(comps))]
    for e in held_edits:  # every held-out instruction has a held-out input it applies to
        if not any(applies(e, c) for c in held_comps):
            held_comps.append(next(c for c in comps if c not in held_comps and applies(e, c)))
    held_set = set(held_edits)
    train_edits = [e for e in all_edits() if e not in held_set]
    train_comps = [c for c in comps if c not in held_comps]
    held_comp_set = set(held_comps)
    train_pairs = {e: [c for c in train_comps if applies(e, c) and target_composition(e, c) not in held_comp_set]
                   for e in train_edits}
    held_pairs = {e: [c for c in held_comps if applies(e, c)] for e in held_edits}
    missing = [instruction(e) for e, cs in {**train_pairs, **held_pairs}.items() if not cs]
    if missing:  # not reached with the shipped palette; guards a change of COLORS / SHAPES
        raise RuntimeError(f"shapes_edits: no input scene for {missing}")
    return {"train": train_pairs, "heldout": held_pairs}


_SPLITS = _build_splits()


def _check_split(split: str):
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")


def split_edits(split: str, kind: Optional[str] = None) -> List[Edit]:
    """The structured instructions of ``split`` (of ``kind``), in :func:`all_edits` order."""
    _check_split(split)
    kinds = EDIT_KINDS if kind is None else (kind,)
    return [e for e in all_edits() if e in _SPLITS[split] and e.kind in kinds]


def input_compositions(split: str) -> List[Composition]:
    """The input scene compositions of ``split`` (each a frozenset of (colour, shape))."""
    _check_split(split)
    return sorted({c for cs in _SPLITS[split].values() for c in cs}, key=lambda c: sorted(c))


def split_of(edit_or_instruction) -> str:
    """``"train"`` or ``"heldout"``."""
    edit = parse_instruction(edit_or_instruction) if isinstance(edit_or_instruction, str) else edit_or_instruction
    return "heldout" if edit in _SPLITS["heldout"] else "train"


# ---------------------------------------------------------------- layouts and edits

def _place(color: str, shape: str, rng: np.random.Generator, size: int) -> Placed:
    scale = size / 32
    r = float(rng.uniform(MIN_RADIUS, MAX_RADIUS)) * scale
    lo, hi = r + 0.5, size - r - 0.5
    cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    return Placed(color, shape, cx, cy, r, _bbox(shape, cx, cy, r, size))


def _fits(p: Placed, others: Sequence[Placed], size: int) -> bool:
    inside = p.r + 0.5 <= p.cx <= size - p.r - 0.5 and p.r + 0.5 <= p.cy <= size - p.r - 0.5
    return inside and all(_apart(p.bbox, o.bbox, GAP * size / 32) for o in others)


def _moved(p: Placed, direction: str, size: int) -> Placed:
    dx, dy = DIRECTION_VECTORS[direction]
    d = MOVE_PX * size / 32
    cx, cy = p.cx + dx * d, p.cy + dy * d
    return Placed(p.color, p.shape, cx, cy, p.r, _bbox(p.shape, cx, cy, p.r, size))


def apply_edit(edit: Edit, source: Sequence[Placed], rng: np.random.Generator, size: int = 32) -> Optional[Tuple[Placed, ...]]:
    """The target objects of ``edit`` on ``source``, or None if this layout leaves no room (a move off the border
    or onto another object, an addition with no free place after 50 tries)."""
    named = [p for p in source if (p.color, p.shape) == (edit.color, edit.shape)]
    rest = [p for p in source if (p.color, p.shape) != (edit.color, edit.shape)]
    if edit.kind == "add":
        for _ in range(50):
            new = _place(edit.color, edit.shape, rng, size)
            if _fits(new, source, size):
                return tuple(source) + (new,)
        return None
    if len(named) != 1:
        raise ValueError(f"apply_edit: {instruction(edit)!r} needs exactly one {edit.color} {edit.shape} in the "
                         f"input, found {len(named)}")
    p = named[0]
    if edit.kind == "remove":
        return tuple(rest)
    if edit.kind == "recolour":
        return tuple(Placed(edit.to_color, q.shape, q.cx, q.cy, q.r, q.bbox) if q is p else q for q in source)
    moved = _moved(p, edit.direction, size)
    return tuple(moved if q is p else q for q in source) if _fits(moved, rest, size) else None


def layout_composition(comp: Composition, rng: np.random.Generator, size: int = 32) -> Tuple[Placed, ...]:
    """Random non-touching placements of ``comp``'s objects (in sorted order)."""
    for _ in range(400):
        placed: List[Placed] = []
        for color, shape in sorted(comp):
            p = _place(color, shape, rng, size)
            if not _fits(p, placed, size):
                break
            placed.append(p)
        if len(placed) == len(comp):
            return tuple(placed)
    raise RuntimeError(f"layout_composition: could not place {_comp_key(comp)} in {size}x{size} px")


def sample_edit(rng: np.random.Generator, split: str = "train", size: int = 32,
                edit: Optional[Edit] = None) -> EditExample:
    """A random edit of ``split``: kind uniform, then instruction uniform in the kind, then an input composition of
    the split it applies to, then a layout where it fits (resampled until it does). ``edit`` fixes the instruction."""
    _check_split(split)
    if edit is not None and edit not in _SPLITS[split]:
        raise ValueError(f"sample_edit: {instruction(edit)!r} is not a {split} instruction")
    while True:
        e = edit
        if e is None:
            kind = EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
            group = split_edits(split, kind)
            e = group[int(rng.integers(len(group)))]
        comps = _SPLITS[split][e]
        comp = comps[int(rng.integers(len(comps)))]
        source = layout_composition(comp, rng, size)
        target = apply_edit(e, source, rng, size)
        if target is not None:
            return EditExample(source, e, target)


def edits(split: str = "heldout", per_kind: int = 8, seed: int = 0, size: int = 32) -> List[EditExample]:
    """``per_kind`` examples of each kind of ``split`` (in EDIT_KINDS order): each kind's instructions in their fixed
    order, cycled until there are ``per_kind``; example ``j`` of a kind depends only on (seed, kind, j).

    The demo's evaluation set: its plain mean accuracy weights the four kinds equally.
    """
    _check_split(split)
    if per_kind < 1:
        raise ValueError(f"edits: per_kind must be >= 1, got {per_kind}")
    out: List[EditExample] = []
    for k, kind in enumerate(EDIT_KINDS):
        group = split_edits(split, kind)
        for j in range(per_kind):
            rng = np.random.default_rng([seed, 1 + (split == "heldout"), k, j])
            out.append(sample_edit(rng, split, size, edit=group[j % len(group)]))
    return out


def near_misses(example: EditExample, split: str = "train") -> List[Edit]:
    """Instructions of ``split`` that differ from ``example``'s in one attribute: a recolour to another colour, a
    move in another direction, an addition of another colour or shape, a removal of another object of the scene. A caption that names a near miss of its picture's edit is a near-miss error of
    an editor trained on it (see :func:`noisy_instruction`)."""
    _check_split(split)
    e, comp = example.edit, frozenset((p.color, p.shape) for p in example.source)
    if e.kind == "recolour":
        cands = [Edit("recolour", e.color, e.shape, to_color=c) for c in COLORS if c not in (e.color, e.to_color)]
    elif e.kind == "move":
        cands = [Edit("move", e.color, e.shape, direction=d) for d in DIRECTIONS if d != e.direction]
    elif e.kind == "add":
        cands = [Edit("add", c, e.shape) for c in COLORS if c != e.color]
        cands += [Edit("add", e.color, s) for s in SHAPES if s != e.shape]
    else:
        cands = [Edit("remove", c, s) for c, s in sorted(comp) if (c, s) != (e.color, e.shape)]
    return [c for c in cands if c in _SPLITS[split]]


def noisy_instruction(example: EditExample, prob: float, rng: np.random.Generator, split: str = "train") -> str:
    """``example``'s instruction, or with probability ``prob`` a uniformly drawn near miss of it
    (:func:`near_misses` of ``split``; the true one when there is none). An editor trained on such captions errs by
    near misses, which a reward for following the instruction can repair, as the image demo model's colour-noisy
    captions do (docs/experiments.md)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"noisy_instruction: prob must be in [0, 1], got {prob}")
    if rng.random() >= prob:
        return example.instruction
    cands = near_misses(example, split)
    return instruction(cands[int(rng.integers(len(cands)))]) if cands else example.instruction


class EditsDataset(torch.utils.data.Dataset):
    """``n`` (input image, instruction, target image) triples of ``split``; item ``i`` depends only on (seed, i).

    Images are float tensors (3, size, size) in [0, 1].
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, split: str = "train"):
        _check_split(split)
        if n < 1:
            raise ValueError(f"EditsDataset: n must be >= 1, got {n}")
        self.n, self.seed, self.size, self.split = n, seed, size, split

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> EditExample:
        if not -self.n <= i < self.n:
            raise IndexError(f"EditsDataset index {i} out of range for length {self.n}")
        return sample_edit(np.random.default_rng([self.seed, i % self.n]), self.split, self.size)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, str, torch.Tensor]:
        ex = self.example(i)
        src, tgt = ex.images(self.size)
        as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float().div(255.0)  # noqa: E731
        return as_tensor(src), ex.instruction, as_tensor(tgt)
