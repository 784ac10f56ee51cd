"""The input image of an edit: what an item's "image" names, as pixels at the model's resolution.

An item is ``{"text": instruction, "image": ref}``. ``ref`` is anything :func:`diffalign.data.load_sample` reads
as an image (a path, bytes, a PIL image), or an RGB triple of numbers in [0, 1]: a uniform image of that colour,
which lets tiny configs and tests carry their inputs inline. Relative paths are taken as they are (relative to the
working directory): readers of files (modalities/editing/preferences.py) resolve them against the file first.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch


def input_ref(item: Any, where: str = "prompt item"):
    """The "image" entry of an editing item; a ValueError naming the item when it has none."""
    if not isinstance(item, Mapping) or item.get("image") is None:
        raise ValueError(f"{where} {item!r}: an editing item is a mapping {{'text': instruction, 'image': input}}, "
                         "and it names no input image")
    return item["image"]


def _is_colour(ref: Any) -> bool:
    return isinstance(ref, (list, tuple)) and len(ref) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in ref)


def load_input_pixels(ref: Any, resolution: int) -> torch.Tensor:
    """(3, resolution, resolution) float32 in [-1, 1]: the image centre-cropped to a square and resized (bicubic),
    or a uniform image for an RGB triple."""
    import numpy as np
    from PIL import Image, ImageOps

    if _is_colour(ref):
        colour = torch.tensor([float(v) for v in ref])
        if colour.min() < 0 or colour.max() > 1:
            raise ValueError(f"an input colour is an RGB triple in [0, 1], got {list(ref)}")
        return (colour * 2 - 1).view(3, 1, 1).expand(3, resolution, resolution).clone()
    if isinstance(ref, torch.Tensor):
        raise ValueError("an input image is a path, bytes, a PIL image or an RGB triple, got a tensor")
    from diffalign.data.types import load_sample
    image = load_sample(ref)
    if not isinstance(image, Image.Image):
        raise ValueError(f"input image {ref!r} is not an image (it reads as {type(image).__name__})")
    image = ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
