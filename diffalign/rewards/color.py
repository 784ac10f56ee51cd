"""Colour statistics of images: rewards a small random model can move within seconds.

DDPO's JPEG rewards measure texture, which on the tiny random preset is set by the random VAE's own
decoder far more than by the latents the policy controls (measured: JPEG compressibility rises by
~0.014 kB, about 1.5 sample standard deviations, after 48 DDPO epochs, then stalls). The mean colour
of an image follows the latents' channel means, which the denoiser's output shifts directly, so
these rewards show a training run working end to end on CPU in a minute.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _check(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"colour rewards want RGB images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    return images.detach().float()


def brightness(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Mean pixel value in [0, 1]."""
    return _check(images).mean(dim=(1, 2, 3))


def color_target(images: torch.Tensor, prompts: Sequence[str], target: Sequence[float] = (1.0, 0.0, 0.0)) -> torch.Tensor:
    """-||mean RGB colour - target||_2: 0 when the image's average colour is ``target`` (default pure red).

    Set the target from a config with ``reward: {name: color_target, kwargs: {target: [0, 0, 1]}}``.
    """
    target = torch.as_tensor([float(v) for v in target], dtype=torch.float32)
    if target.shape != (3,):
        raise ValueError(f"color_target: target must be 3 numbers (R, G, B) in [0, 1], got {list(target.tolist())}")
    mean = _check(images).mean(dim=(2, 3))
    return -(mean - target.to(mean.device)).norm(dim=1)
