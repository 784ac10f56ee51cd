"""JPEG (in)compressibility, DDPO's simplest rewards: the size of the image saved as JPEG."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Size in kB of each image (B, C, H, W) in [0, 1] saved as JPEG at ``quality`` (as DDPO)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"jpeg rewards want images (B, 1|3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(np.array(sizes), dtype=torch.float32, device=images.device)


def jpeg_compressibility(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """-size_kb: smaller files score higher."""
    return -jpeg_size_kb(images)


def jpeg_incompressibility(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """+size_kb: larger (more detailed) files score higher."""
    return jpeg_size_kb(images)
