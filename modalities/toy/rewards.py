"""Closed-form toy rewards, ``(samples, prompts) -> Tensor[B]``, so reward gains can be checked exactly."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def prompt_target(prompt: str, dim: int) -> torch.Tensor:
    """A fixed point in [-1, 1]^dim for each prompt name (a hash, so it is the same on every process)."""
    digest = hashlib.sha256(str(prompt).encode()).digest()
    return torch.tensor([digest[i % len(digest)] / 127.5 - 1.0 for i in range(dim)])


def target_distance(samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """-||x - target(prompt)||^2: highest (0) at the prompt's target point."""
    targets = torch.stack([prompt_target(p, samples.shape[1]) for p in prompts]).to(samples)
    return -((samples - targets) ** 2).sum(dim=1)


def first_coordinate(samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """x[0]: an unbounded reward (useful to show reward hacking and KL regularisation)."""
    return samples[:, 0]


TOY_REWARDS = {"toy_target_distance": target_distance, "toy_first_coordinate": first_coordinate}
