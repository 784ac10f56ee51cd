"""The input images of edit prompt items: what the editing adapter conditions on and what edit rewards compare with.

An edit's prompt item is ``{"text": <instruction>, "image": <path to the input image>, ...}``
(:mod:`diffalign.rewards.prompts`). :func:`input_images` turns items into the (B, 3, H, W) float tensor of their
input images in [0, 1] at (H, W): centre-cropped to that aspect, then resized (bilinear, antialiased). The
editing adapter (modalities/editing) conditions on exactly these pixels at its resolution, and rewards get them
at the edits' size, so image-space and feature-space comparisons line up pixel for pixel with what the model saw.
Decoded files are cached by (path, modification time), since a training run scores the same few inputs every epoch.

``"image"`` is a path (relative ones are taken from the working directory; file readers resolve them against
their file first), anything else :func:`diffalign.data.load_sample` reads (bytes, a PIL image), or an RGB triple
in [0, 1]: a uniform input of that colour, which lets tiny configs and tests carry their inputs inline.
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
    if not isinstance(item, Mapping) or item.get(field) is None or item.get(field) == "":
        shown = item if not isinstance(item, Mapping) else dict(item)
        raise ValueError(f"prompt item {index} ({shown!r}) has no {field!r}; an edit item is "
                         f"{{\"text\": <instruction>, \"image\": <input image path>, ...}}")
    return item[field]


def _to_tensor(img: Any, where: str) -> torch.Tensor:
    """(3, h, w) float32 in [0, 1] of what load_sample returned (a PIL image, or a stored (3, h, w) tensor)."""
    if isinstance(img, torch.Tensor):
        t = img.float()
    else:
        t = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"{where} has shape {tuple(t.shape)}, expected an RGB image")
    return t


def _decode(ref: Any, index: int) -> torch.Tensor:
    """(3, h, w) float32 in [0, 1] of a path (cached), bytes or a PIL image (through diffalign.data's reader)."""
    from diffalign.data.types import load_sample
    if not isinstance(ref, str):
        try:
            return _to_tensor(load_sample(ref), f"prompt item {index}: the input image")
        except ValueError as exc:
            raise ValueError(f"prompt item {index}: the input image is unreadable ({exc})") from None
    try:
        mtime = os.path.getmtime(ref)
    except OSError:
        raise ValueError(f"prompt item {index}: input image {ref!r} does not exist") from None
    key = (os.path.abspath(ref), mtime)
    if key not in _CACHE:
        try:
            img = load_sample(ref)
        except ValueError as exc:
            raise ValueError(f"prompt item {index}: input image {ref!r} is unreadable ({exc})") from None
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = _to_tensor(img, f"prompt item {index}: input image {ref!r}")
    return _CACHE[key]


def fit(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(3, h, w) -> (3, H, W): the largest centred crop of (H, W)'s aspect, resized (bilinear, antialiased)."""
    h, w = image.shape[-2:]
    th, tw = size
    if h * tw > w * th:  # too tall: crop rows
        ch, cw = max(1, round(w * th / tw)), w
    else:
        ch, cw = h, max(1, round(h * tw / th))
    top, left = (h - ch) // 2, (w - cw) // 2
    image = image[:, top:top + ch, left:left + cw]
    if (ch, cw) != (th, tw):
        image = F.interpolate(image[None], size=(th, tw), mode="bilinear", align_corners=False, antialias=True)[0]
    return image


def _is_colour(ref: Any) -> bool:
    return isinstance(ref, (list, tuple)) and len(ref) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in ref)


def input_images(items: Sequence[Any], size: Tuple[int, int], device=None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]: each item's ``"image"`` centre-cropped to ``size`` = (H, W)'s aspect and resized."""
    out = []
    for i, item in enumerate(items):
        ref = item_field(item, "image", i)
        if _is_colour(ref):
            colour = torch.tensor([float(v) for v in ref])
            if colour.min() < 0 or colour.max() > 1:
                raise ValueError(f"prompt item {i}: an input colour is an RGB triple in [0, 1], got {list(ref)}")
            out.append(colour.view(3, 1, 1).expand(3, *size))
            continue
        if isinstance(ref, torch.Tensor):
            raise ValueError(f"prompt item {i}: an input image is a path, bytes, a PIL image or an RGB triple, "
                             "got a tensor")
        out.append(fit(_decode(ref, i), tuple(size)).clamp(0, 1))
    if not out:
        raise ValueError("input_images: no prompt items")
    return torch.stack(out).to(device=device, dtype=dtype)


def clear_cache() -> None:
    _CACHE.clear()
