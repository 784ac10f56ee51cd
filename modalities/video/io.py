"""Clips on disk <-> frame tensors (F, 3, H, W) in [0, 1]: video files through imageio (the pyav plugin for
mp4/webm/mov/avi/mkv, pillow for gif), folders of frame images (sorted by name), or frames already in memory.
The ``video`` extra installs imageio and av."""
from __future__ import annotations

import os
from typing import Any

import torch

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _from_array(array, where: str) -> torch.Tensor:
    """(F, H, W, C) uint8 frames (C = 1, 3 or 4) -> (F, 3, H, W) float in [0, 1]."""
    t = torch.as_tensor(array)
    if t.dim() == 3:  # one frame
        t = t[None]
    if t.dim() != 4 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: expected frames (F, H, W, C) with C in 1, 3, 4, got shape {tuple(t.shape)}")
    t = t[..., :3] if t.shape[-1] != 1 else t.expand(*t.shape[:-1], 3)  # drop alpha; grey -> RGB
    return t.permute(0, 3, 1, 2).float() / 255.0


def _read_file(path: str) -> torch.Tensor:
    try:
        import imageio.v3 as iio
    except ImportError:
        raise ValueError(f"reading {path!r} needs imageio and av: pip install 'diffalign[video]'") from None
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".gif":
            frames = iio.imread(path, index=None)
        else:
            frames = iio.imread(path, plugin="pyav", index=None)
    except Exception as exc:  # imageio/av raise many types for a broken file
        raise ValueError(f"video {path!r} does not decode: {exc}") from None
    return _from_array(frames, repr(path))


def _read_folder(path: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise ValueError(f"frame folder {path!r} holds no images ({', '.join(FRAME_EXTENSIONS)})")
    frames = []
    for name in names:
        try:
            with Image.open(os.path.join(path, name)) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except Exception as exc:
            raise ValueError(f"frame {os.path.join(path, name)!r} does not decode: {exc}") from None
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"frame folder {path!r}: frames differ in size {sorted(sizes)}")
    return _from_array(np.stack(frames), repr(path))


def read_video(ref: Any) -> torch.Tensor:
    """A clip -> frames (F, 3, H, W) float32 in [0, 1]. ``ref``: a video file path, a folder of frame images,
    a tensor (F, 3, H, W) (float in [0, 1], or uint8) or a list of PIL images. ValueError names what failed."""
    if isinstance(ref, torch.Tensor):
        if ref.dim() != 4 or ref.shape[1] != 3:
            raise ValueError(f"a clip tensor must be (F, 3, H, W), got shape {tuple(ref.shape)}")
        return ref.float() / 255.0 if ref.dtype == torch.uint8 else ref.detach().float()
    if isinstance(ref, (list, tuple)) and ref and all(hasattr(im, "convert") for im in ref):
        import numpy as np
        return _from_array(np.stack([np.asarray(im.convert("RGB")) for im in ref]), "a list of images")
    if isinstance(ref, str):
        path = os.path.expanduser(ref)
        if os.path.isdir(path):
            return _read_folder(path)
        if not os.path.isfile(path):
            raise ValueError(f"video {path!r} does not exist")
        if not path.lower().endswith(VIDEO_EXTENSIONS):
            raise ValueError(f"{path!r} is not a video file ({', '.join(VIDEO_EXTENSIONS)}) or a frame folder")
        return _read_file(path)
    raise ValueError(f"cannot read a clip from a {type(ref).__name__}")


def fit_clip(frames: torch.Tensor, num_frames: int, resolution: int) -> torch.Tensor:
    """``num_frames`` frames evenly spaced over the clip (first and last kept), centre-cropped to a square and
    resized (bilinear, antialiased) to ``resolution``: (num_frames, 3, resolution, resolution) in [0, 1]."""
    f, _, h, w = frames.shape
    if f < num_frames:
        raise ValueError(f"a clip of {f} frames is shorter than modality.options.num_frames = {num_frames}")
    index = torch.linspace(0, f - 1, num_frames).round().long()
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    clip = frames[index, :, top:top + side, left:left + side]
    if side != resolution:
        clip = torch.nn.functional.interpolate(clip, size=(resolution, resolution), mode="bilinear",
                                               align_corners=False, antialias=True)
    return clip.clamp(0, 1)


def write_video(path: str, frames: torch.Tensor, fps: int = 8) -> None:
    """Frames (F, 3, H, W) in [0, 1] -> an mp4 (H.264, yuv420p: even sides) or an animated gif (looping).
    Pillow merges identical consecutive gif frames into one longer frame, so a still clip reads back shorter."""
    import imageio.v3 as iio
    array = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gif":
        iio.imwrite(path, array, duration=1000 / fps, loop=0)
    elif ext == ".mp4":
        iio.imwrite(path, array, plugin="pyav", codec="libx264", fps=fps)
    else:
        raise ValueError(f"{path!r}: write_video writes .mp4 or .gif")
