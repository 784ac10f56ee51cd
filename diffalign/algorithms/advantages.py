"""Reward -> advantage transforms shared by the policy-gradient algorithms."""
from __future__ import annotations

import collections
from typing import Dict, Hashable, List, Sequence

import torch


def batch_normalize(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean) / (std + eps) over the whole batch (population std, as DDPO)."""
    r = rewards.double()
    return ((r - r.mean()) / (r.std(unbiased=False) + eps)).float()


def group_normalize(rewards: torch.Tensor, prompts: Sequence[Hashable], eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (r - mean_g) / (std_g + eps) within each group of samples sharing a prompt (or any group key)."""
    r = rewards.double()
    out = torch.empty_like(r)
    groups: Dict[str, List[int]] = collections.defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    for idx in groups.values():
        g = r[idx]
        out[idx] = (g - g.mean()) / (g.std(unbiased=False) + eps)
    return out.float()


class PerPromptStatTracker:
    """DDPO's per-prompt reward statistics: the last ``buffer_size`` rewards of each prompt.

    A prompt with fewer than ``min_count`` rewards stored is normalised with the current batch's
    mean and std instead. The buffers are part of the training state (exact resume).
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16, eps: float = 1e-6):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.stats: Dict[str, collections.deque] = {}

    def update(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Add the batch's rewards to the buffers and return normalised advantages (B,)."""
        r = rewards.detach().double().cpu()
        if len(prompts) != r.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {r.shape[0]} rewards")
        out = torch.empty_like(r)
        batch_mean, batch_std = r.mean(), r.std(unbiased=False) + self.eps
        for p in dict.fromkeys(prompts):  # unique, in order
            idx = [i for i, q in enumerate(prompts) if q == p]
            buf = self.stats.setdefault(p, collections.deque(maxlen=self.buffer_size))
            buf.extend(r[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                values = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = values.mean(), values.std(unbiased=False) + self.eps
            out[idx] = (r[idx] - mean) / std
        return out.float().to(rewards.device)

    def mean(self, prompt: str) -> float:
        """Running mean of a prompt's rewards (a value estimate V(c)); nan if unseen."""
        buf = self.stats.get(prompt)
        return float(sum(buf) / len(buf)) if buf else float("nan")

    def state_dict(self):
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "stats": {p: list(b) for p, b in self.stats.items()}}

    def load_state_dict(self, state):
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        self.stats = {p: collections.deque(v, maxlen=self.buffer_size) for p, v in state["stats"].items()}
