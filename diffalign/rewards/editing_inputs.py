"""The input images of edit prompt items, for rewards that compare an edit with what it edited.

An edit's prompt item is ``{"text": <instruction>, "image": <path to the input image>, ...}``
(:mod:`diffalign.rewards.prompts`). Rewards get ``(decoded, items)``; :func:`input_images` turns the items
into the (B, 3, H, W) float tensor of their input images in [0, 1], resized to the edits' (H, W), so
that image-space and feature-space comparisons line up pixel for pixel. Decoded files are cached by
(path, modification time), since a training run scores the same few inputs every epoch.

``"image"`` is a path (or anything else :func:`diffalign.data.load_sample` reads), or, as the editing
adapter also accepts (modalities/editing/inputs.py), an RGB triple in [0, 1]: a uniform input of that colour.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_CACHE: Dict[Tuple[str, float], torch.Tensor] = {}
_CACHE_LIMIT = 512  # decoded inputs kept; beyond it the cache starts over (inputs are small, runs reuse few)


def item_field(item: Any, field: str, index: int) -> Any:
    """``item[field]`` of an edit item; ValueError naming the item when it is not a mapping or lacks the field."""
    if not isinstance(item, Mapping) or item.get(field) in (None, ""):
        shown = item if not isinstance(item, Mapping) else dict(item)
        raise ValueError(f"edit reward: prompt item {index} ({shown!r}) has no {field!r}; an edit item is "
                         f"{{\"text\": <instruction>, \"image\": <input image path>, ...}}")
    return item[field]


def _decode(path: str, index: int) -> torch.Tensor:
    """(3, h, w) float32 in [0, 1] of the file at ``path`` (through diffalign.data's sample reader)."""
    from diffalign.data.types import load_sample
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        raise ValueError(f"edit reward: prompt item {index}: input image {path!r} does not exist") from None
    key = (os.path.abspath(path), mtime)
    if key not in _CACHE:
        try:
            img = load_sample(path)
        except ValueError as exc:
            raise ValueError(f"edit reward: prompt item {index}: input image {path!r} is unreadable ({exc})") from None
        if isinstance(img, torch.Tensor):  # a stored tensor sample: (3, h, w) in [0, 1] expected
            t = img.float()
        else:
            t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"edit reward: prompt item {index}: input image {path!r} has shape {tuple(t.shape)}, "
                             "expected an RGB image")
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = t
    return _CACHE[key]


def _is_colour(ref: Any) -> bool:
    return isinstance(ref, (list, tuple)) and len(ref) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in ref)


def input_images(items: Sequence[Any], size: Tuple[int, int], device=None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]: each item's ``"image"`` resized to ``size`` = (H, W) (bilinear, antialiased)."""
    out = []
    for i, item in enumerate(items):
        ref = item_field(item, "image", i)
        if _is_colour(ref):
            out.append(torch.tensor([float(v) for v in ref]).clamp(0, 1).view(3, 1, 1).expand(3, *size))
            continue
        t = _decode(str(ref), i)
        if tuple(t.shape[-2:]) != tuple(size):
            t = F.interpolate(t[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(t.clamp(0, 1))
    if not out:
        raise ValueError("edit reward: no prompt items")
    return torch.stack(out).to(device=device, dtype=dtype)


def clear_cache() -> None:
    _CACHE.clear()
