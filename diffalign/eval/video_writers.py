"""Clips a person can watch: an animated GIF per clip and a filmstrip PNG (frames left to right, one row per clip).

Videos are float tensors (F, 3, H, W) in [0, 1] (one clip of the video modality's ``decode`` output). Small
frames are enlarged by whole multiples (nearest neighbour, ``scale``) so a 32-px clip is visible; colours are
kept exactly (a clip of the shapes world has a handful of colours, well within a GIF's 256-colour palette).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

LABEL_HEIGHT = 12   # px of caption text above each filmstrip row
PAD = 2             # px between frames and rows


def _clip_uint8(frames: torch.Tensor, scale: int) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> uint8 (F, H * scale, W * scale, 3)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"video writers want one clip as a float tensor (F, 3, H, W) in [0, 1], got {shape}")
    if int(scale) < 1:
        raise ValueError(f"video writers: scale must be a whole number >= 1, got {scale}")
    x = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return x.repeat(int(scale), axis=1).repeat(int(scale), axis=2)


def save_gif(path: str, frames: torch.Tensor, fps: float = 4.0, scale: int = 4, loop: int = 0) -> str:
    """One clip (F, 3, H, W) in [0, 1] as an animated GIF (``loop`` 0 repeats forever). Returns ``path``."""
    import imageio.v3 as iio
    if not fps > 0:
        raise ValueError(f"save_gif: fps must be > 0, got {fps}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    iio.imwrite(path, _clip_uint8(frames, scale), extension=".gif", duration=1000.0 / fps, loop=loop)
    return path


def filmstrip(videos: Sequence[torch.Tensor], labels: Optional[Sequence[str]] = None, scale: int = 3) -> np.ndarray:
    """Clips as rows of frames on white, each row under its label: uint8 (height, width, 3).

    Row r's frame t sits at x = PAD + t * (W * scale + PAD), y = top of row + LABEL_HEIGHT (with labels)."""
    from PIL import Image, ImageDraw
    if not len(videos):
        raise ValueError("filmstrip: no clips")
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"filmstrip: {len(videos)} clips but {len(labels)} labels")
    rows = [_clip_uint8(v, scale) for v in videos]
    fh, fw = rows[0].shape[1:3]
    if any(r.shape[1:3] != (fh, fw) for r in rows):
        raise ValueError(f"filmstrip: clips of different frame sizes {sorted({r.shape[1:3] for r in rows})}")
    label_h = LABEL_HEIGHT if labels is not None else 0
    n_frames = max(r.shape[0] for r in rows)
    row_h = label_h + fh + PAD
    canvas = np.full((PAD + len(rows) * row_h, PAD + n_frames * (fw + PAD), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        top = PAD + i * row_h + label_h
        for t, frame in enumerate(row):
            left = PAD + t * (fw + PAD)
            canvas[top:top + fh, left:left + fw] = frame
    if labels is not None:
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for i, text in enumerate(labels):
            draw.text((PAD, PAD + i * row_h), str(text), fill=(0, 0, 0))
        canvas = np.asarray(image).copy()
    return canvas


def save_filmstrip(path: str, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], captions: Sequence[str],
                   scale: int = 3) -> str:
    """Before / after rows for each clip i (row 2i: "before: caption i", row 2i + 1: "after: ..."). Returns ``path``."""
    from PIL import Image
    if not len(before) == len(after) == len(captions):
        raise ValueError(f"save_filmstrip: {len(before)} before clips, {len(after)} after clips and "
                         f"{len(captions)} captions; they must match")
    videos, labels = [], []
    for b, a, c in zip(before, after, captions):
        videos += [b, a]
        labels += [f"before: {c}", f"after: {c}"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(filmstrip(videos, labels, scale)).save(path)
    return path
