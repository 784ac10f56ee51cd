"""Temporally correlated initial noise for video: PYoCo's mixed noise (Ge et al. 2023, "Preserve Your Own
Correlation", Eq. 4): every frame's noise is a shared draw plus the frame's own draw,

    eps_f = sqrt(alpha / (1 + alpha)) * eps_shared + sqrt(1 / (1 + alpha)) * eps_f_own,

so each element stays standard normal (variance alpha/(1+alpha) + 1/(1+alpha) = 1) and any two frames of one
sample have correlation rho = alpha / (1 + alpha) at the same position (alpha = 19: frames share 95% of their
variance; alpha = 0: independent frames).

Only x_T is drawn this way (see ``VideoOptions.frame_noise_alpha``): step noise and the re-noising of denoising
losses stay independent per element, so the per-step Gaussian log-probs of DDPO/GRPO need no whitening.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

FRAME_DIM = 2  # x is (B, C, F, h, w)


def mixed_noise_weights(alpha: float) -> Tuple[float, float]:
    """(shared weight, own weight) of PYoCo's mixed noise: sqrt(alpha / (1 + alpha)), sqrt(1 / (1 + alpha))."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"mixed frame noise: alpha must be a finite number >= 0, got {alpha!r}")
    return math.sqrt(alpha / (1.0 + alpha)), math.sqrt(1.0 / (1.0 + alpha))


def mixed_frame_noise(shape: Sequence[int], alpha: float, generator: Optional[torch.Generator] = None,
                      device=None) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, C, F, h, w) whose frames are correlated by ``alpha`` (module
    docstring); drawn from ``generator`` on its device: the frames' own noise first, then the shared frame."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"mixed frame noise: shape must be (B, C, F, h, w), got {shape}")
    shared_w, own_w = mixed_noise_weights(alpha)
    device = generator.device if generator is not None else device
    own = torch.randn(shape, generator=generator, device=device)
    shared_shape = shape[:FRAME_DIM] + (1,) + shape[FRAME_DIM + 1:]
    shared = torch.randn(shared_shape, generator=generator, device=device)
    return shared_w * shared + own_w * own  # the shared frame broadcasts over F
