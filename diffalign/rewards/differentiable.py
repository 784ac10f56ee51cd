"""Differentiable rewards for direct reward fine-tuning (ReFL, DRaFT, AlignProp) and the tools they need.

The colour rewards in color.py detach their input (they serve RL, which needs no gradient); these keep
the graph. ``tiny_cnn`` is a fixed random convolutional network: a stand-in for a learned reward model
(ImageReward, PickScore, HPSv2) that tests and CPU runs can backpropagate through with no download.
What they score comes from the adapter's ``decode_with_grad`` (modalities/base.py).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from diffalign.rewards.compositional_soft import compositional_soft

__all__ = ["differentiable_brightness", "differentiable_color_target", "tiny_cnn", "DIFFERENTIABLE_REWARDS",
           "TinyCNN"]


def _images(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"image rewards want RGB images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    return images if images.dtype == torch.float64 else images.float()


def differentiable_brightness(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Mean pixel value in [0, 1], with its gradient."""
    return _images(images).mean(dim=(1, 2, 3))


def differentiable_color_target(images: torch.Tensor, prompts: Sequence[str],
                                target: Sequence[float] = (1.0, 0.0, 0.0)) -> torch.Tensor:
    """-||mean RGB colour - target||_2 (color.color_target), with its gradient."""
    target = torch.as_tensor([float(v) for v in target], dtype=torch.float32)
    if target.shape != (3,):
        raise ValueError(f"differentiable_color_target: target must be 3 numbers (R, G, B), got {target.tolist()}")
    mean = _images(images).mean(dim=(2, 3))
    # sqrt has an infinite slope at 0; the epsilon keeps the gradient finite at the target itself
    return -(((mean - target.to(mean)) ** 2).sum(dim=1) + 1e-12).sqrt()


class TinyCNN(torch.nn.Module):
    """conv(3->8, stride 2) - SiLU - conv(8->16, stride 2) - SiLU - global mean - linear(16->1), seeded."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.SiLU(),
                                           torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.SiLU(),
                                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 1))
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1).squeeze(1)


_CNNS: Dict[tuple, TinyCNN] = {}


def tiny_cnn(images: torch.Tensor, prompts: Sequence[str], seed: int = 0) -> torch.Tensor:
    """The score of a fixed random CNN (weights seeded by ``seed``), differentiable in the images."""
    images = _images(images)
    key = (seed, str(images.device))
    if key not in _CNNS:
        _CNNS[key] = TinyCNN(seed).to(images.device)
    return _CNNS[key](images.float())


DIFFERENTIABLE_REWARDS = {"differentiable_brightness": differentiable_brightness,
                          "differentiable_color_target": differentiable_color_target, "tiny_cnn": tiny_cnn,
                          # the shapes demo's compositional reward, relaxed (rewards/compositional_soft.py)
                          "compositional_soft": compositional_soft}
