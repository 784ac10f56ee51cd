"""The policy-gradient objectives of DDPO (survey Eq. 17-19), reused by DPOK and GRPO."""
from __future__ import annotations

from typing import Tuple

import torch


def score_function_loss(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Eq. 17): per-sample -A * log p. Its gradient is -A grad log p."""
    return -advantages * log_prob


def clipped_surrogate_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                           clip_range: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled, clipped (Eq. 18-19, PPO): per-sample max(-A r, -A clip(r, 1-e, 1+e)).

    Returns (per-sample loss, ratio r = p_theta / p_old).
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def ratio_metrics(log_prob: torch.Tensor, old_log_prob: torch.Tensor, ratio: torch.Tensor, clip_range: float):
    """approx_kl (0.5 E[(log r)^2], as DDPO logs it) and the fraction of clipped ratios."""
    with torch.no_grad():
        return {"approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean(),
                "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean()}
