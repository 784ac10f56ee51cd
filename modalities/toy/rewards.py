"""Closed-form toy rewards, ``(samples, items) -> Tensor[B]``, so reward gains can be checked exactly.

Items are prompt names or mappings with a "text" (diffalign.rewards.prompts); the point-set rewards read
the toy_points variant's decoded sets, a list of (n, 3) tensors.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from diffalign.rewards.prompts import prompt_text


def prompt_target(prompt, dim: int) -> torch.Tensor:
    """A fixed point in [-1, 1]^dim for each prompt name (a hash, so it is the same on every process)."""
    digest = hashlib.sha256(prompt_text(prompt, default=str(prompt)).encode()).digest()
    return torch.tensor([digest[i % len(digest)] / 127.5 - 1.0 for i in range(dim)])


def target_distance(samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """-||x - target(prompt)||^2: highest (0) at the prompt's target point."""
    targets = torch.stack([prompt_target(p, samples.shape[1]) for p in prompts]).to(samples)
    return -((samples - targets) ** 2).sum(dim=1)


def first_coordinate(samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """x[0]: an unbounded reward (useful to show reward hacking and KL regularisation)."""
    return samples[:, 0]


def target_radius(prompt) -> float:
    """A fixed radius in [0.5, 2] for each prompt name."""
    digest = hashlib.sha256(prompt_text(prompt, default=str(prompt)).encode()).digest()
    return 0.5 + 1.5 * digest[0] / 255.0


def points_radius(sets: Sequence[torch.Tensor], prompts: Sequence) -> torch.Tensor:
    """-(mean distance of a set's points from their centre - the prompt's target radius)^2: 0 when the points
    sit, on average, at the prompt's radius. Differentiable in the points."""
    out = [-((s.norm(dim=-1).mean() - target_radius(p)) ** 2) for s, p in zip(sets, prompts)]
    return torch.stack(out)


TOY_REWARDS = {"toy_target_distance": target_distance, "toy_first_coordinate": first_coordinate}
POINT_REWARDS = {"toy_points_radius": points_radius}
