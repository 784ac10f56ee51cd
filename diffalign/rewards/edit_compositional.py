"""The editing demo's reward: does an edit of a shapes scene follow its instruction and keep the rest? ``shapes_edit``.

The input and the edited picture both go through the image demo's exact detector
(:func:`diffalign.rewards.compositional.detect_batch`); the structured instruction
(:class:`diffalign.data.shapes_edits.Edit`, carried in the prompt item as ``item["edit"]`` or parsed from its
``"text"``) says what must change. Three attributes (:data:`EDIT_ATTRIBUTES`):

- ``instruction``: the edit holds in the output. With ``p`` the input's detection of the named colour and shape:
  ``recolour`` an object of the new colour and the same shape within ``position_tolerance`` px of ``p``'s centre,
  and none of the old colour and shape left; ``move`` an object of the named colour and shape (the one nearest to
  where it should be) moved along the direction by at least ``min_move`` px and across it by at most
  ``position_tolerance`` px; ``add`` an object of the named colour and shape; ``remove`` none of it left.
- ``preserved``: every input object the instruction does not name is in the output with the same colour and shape
  and its centre within ``position_tolerance`` px. Valued as the fraction of such objects found.
- ``no_extra``: the output has exactly as many objects as the edit should leave (the input's, one more after
  ``add``, one fewer after ``remove``): a kept copy of a moved or recoloured object, or a stray blob, fails it.

An edit is correct when all three hold (the demo's accuracy). The reward of an edit is the mean of the three
values (``instruction`` and ``no_extra`` 0 or 1, ``preserved`` a fraction), in [0, 1]. Pixel thresholds are for
32 px images and scale with the image side. Not differentiable (thresholds, components, counting): use it with
online RL or to label pairs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from diffalign.data.shapes_edits import DIRECTION_VECTORS, EDIT_KINDS, Edit, instruction, parse_instruction
from diffalign.rewards.checks import Check, CheckedSample, accuracies
from diffalign.rewards.compositional import Detection, DetectorConfig, detect_batch

EDIT_ATTRIBUTES: Tuple[str, ...] = ("instruction", "preserved", "no_extra")


@dataclass(frozen=True)
class EditTolerance:
    """Pixel tolerances of the edit checks, for 32 px images (scaled with the side)."""
    position_tolerance: float = 3.0  # px an unchanged object's centre may shift
    min_move: float = 4.0            # px a moved object must travel along its direction (the demo moves 8)

    def __post_init__(self):
        for name in ("position_tolerance", "min_move"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"EditTolerance.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class EditScore(CheckedSample):
    """One edit's checks (caption = the instruction; one graded check per attribute of EDIT_ATTRIBUTES, holding
    when its value is 1) and the detections of the input (``source``) and the output."""
    source: Tuple[Detection, ...] = field(repr=False, default=())
    output: Tuple[Detection, ...] = field(repr=False, default=())

    def as_dict(self) -> dict:
        return {**super().as_dict(), "source_detections": [_det_dict(d) for d in self.source],
                "output_detections": [_det_dict(d) for d in self.output]}


def _det_dict(d: Detection) -> dict:
    return {"color": d.color, "shape": d.shape, "centre": [round(c, 2) for c in d.centre], "area": d.area}


def _dist(a: Tuple[float, float], b: Tuple[float, float]) -> float:
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def score_edit_detections(edit: Edit, source: Sequence[Detection], output: Sequence[Detection], image_size: int = 32,
                          tolerance: EditTolerance = EditTolerance()) -> EditScore:
    """Check ``edit`` given the input's and the output's detections (see the module doc).

    ValueError when the input does not fit the edit (no, or several, objects of the named colour and shape to
    change; or already one to add): such an input is a bad prompt item, not a bad edit.
    """
    scale = image_size / 32.0
    tol, min_move = tolerance.position_tolerance * scale, tolerance.min_move * scale
    named = [d for d in source if (d.color, d.shape) == (edit.color, edit.shape)]
    text = instruction(edit)
    if edit.kind == "add" and named:
        raise ValueError(f"edit {text!r}: the input already has a {edit.color} {edit.shape}")
    if edit.kind != "add" and len(named) != 1:
        raise ValueError(f"edit {text!r}: the input needs exactly one {edit.color} {edit.shape}, the detector found "
                         f"{len(named)} among {[(d.color, d.shape) for d in source]}")
    same = [d for d in output if (d.color, d.shape) == (edit.color, edit.shape)]
    if edit.kind == "add":
        ok = bool(same)
    elif edit.kind == "remove":
        ok = not same
    elif edit.kind == "recolour":
        ok = not same and any(d.color == edit.to_color and d.shape == edit.shape
                              and _dist(d.centre, named[0].centre) <= tol for d in output)
    else:
        ux, uy = DIRECTION_VECTORS[edit.direction]
        old = named[0].centre
        want = (old[0] + ux * 8.0 * scale, old[1] + uy * 8.0 * scale)
        ok = False
        if same:
            d = min(same, key=lambda e: _dist(e.centre, want))
            dx, dy = d.centre[0] - old[0], d.centre[1] - old[1]
            along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
            ok = along >= min_move and across <= tol
    kept = [d for d in source if (d.color, d.shape) != (edit.color, edit.shape)]
    found = [any(o.color == k.color and o.shape == k.shape and _dist(o.centre, k.centre) <= tol for o in output)
             for k in kept]
    preserved = float(np.mean(found)) if found else 1.0
    expected = len(source) + {"add": 1, "remove": -1}.get(edit.kind, 0)
    checks = (Check("instruction", text, ok),
              Check("preserved", f"{sum(found)} of {len(found)} untouched objects kept", preserved >= 1.0, preserved),
              Check("no_extra", f"exactly {expected} objects", len(output) == expected))
    return EditScore(text, edit.kind, checks, tuple(source), tuple(output))


def score_edits(edited, inputs, edits: Sequence[Edit], detector: DetectorConfig = DetectorConfig(),
                tolerance: EditTolerance = EditTolerance()) -> List[EditScore]:
    """:func:`score_edit_detections` for a batch: ``edited`` and ``inputs`` float tensors (B, 3, H, W) in [0, 1] of
    the same size, one detector call for both."""
    for name, t in (("edited images", edited), ("inputs", inputs)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"shapes_edit reward: {name} must be a float tensor (B, 3, H, W), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if edited.shape != inputs.shape or len(edits) != edited.shape[0]:
        raise ValueError(f"shapes_edit reward: edited images {tuple(edited.shape)}, inputs {tuple(inputs.shape)} "
                         f"and {len(edits)} edits do not match")
    dets = detect_batch(torch.cat([edited.detach().float().cpu(), inputs.detach().float().cpu()]), detector)
    n, side = len(edits), min(edited.shape[-2:])
    return [score_edit_detections(e, dets[n + i], dets[i], side, tolerance) for i, e in enumerate(edits)]


_parse = functools.lru_cache(maxsize=1024)(parse_instruction)


def item_edit(item: Any, index: int = 0) -> Edit:
    """The structured edit of a prompt item: ``item["edit"]`` (a dict, see ``Edit.as_dict``) or, without it, the
    parsed ``item["text"]``; ValueError naming the item otherwise."""
    if isinstance(item, Mapping) and item.get("edit") is not None:
        try:
            return item["edit"] if isinstance(item["edit"], Edit) else Edit.from_dict(dict(item["edit"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"shapes_edit reward: prompt item {index}: bad 'edit' {item['edit']!r} ({exc})") from None
    text = item.get("text") if isinstance(item, Mapping) else item
    if not isinstance(text, str):
        raise ValueError(f"shapes_edit reward: prompt item {index} ({item!r}) has neither an 'edit' spec nor an "
                         "instruction 'text'")
    try:
        return _parse(text)
    except ValueError as exc:
        raise ValueError(f"shapes_edit reward: prompt item {index}: {exc}") from None


def score_items(images: torch.Tensor, items: Sequence[Any], detector: Optional[DetectorConfig] = None,
                tolerance: Optional[EditTolerance] = None) -> List[EditScore]:
    """Scores of edited images (B, 3, H, W) in [0, 1] against edit prompt items ``{"text", "image"[, "edit"]}``;
    the input images are read from the items' ``"image"`` paths (cached, resized to the edits' size)."""
    from diffalign.rewards.editing_inputs import input_images

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"shapes_edit reward: expected edited images (B, 3, H, W), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if len(items) != images.shape[0]:
        raise ValueError(f"shapes_edit reward: {images.shape[0]} images but {len(items)} prompt items")
    edits = [item_edit(it, i) for i, it in enumerate(items)]
    inputs = input_images(items, tuple(images.shape[-2:]))
    return score_edits(images, inputs, edits, detector or DetectorConfig(), tolerance or EditTolerance())


def shapes_edit_reward(images: torch.Tensor, items: Sequence[Any], position_tolerance: float = 3.0,
                       min_move: float = 4.0) -> torch.Tensor:
    """The mean of the ``instruction``, ``preserved`` and ``no_extra`` values of each edit: float32 Tensor[B]."""
    results = score_items(images, items, tolerance=EditTolerance(position_tolerance, min_move))
    return torch.tensor([r.reward for r in results], dtype=torch.float32, device=images.device)


def edit_accuracies(results: Sequence[EditScore]) -> Dict[str, float]:
    """``accuracy`` (all attributes hold), ``reward`` (mean), ``n``, each attribute's rate, ``accuracy/<kind>`` and
    ``<attribute>/<kind>`` for every kind present (:func:`diffalign.rewards.checks.accuracies`)."""
    return accuracies(results, EDIT_ATTRIBUTES, EDIT_KINDS, attributes_per_kind=True)
