"""Reward-weighted regression (survey Eq. 16), run online as in DDPO's RWR baselines.

Weights: "exp": w = B * softmax(gamma r) over the rollout batch, i.e. exp(gamma r)/Z with Z
normalising the mean weight to 1; "sparse": w = 1[r >= threshold]. The weighted negative
log-likelihood is approximated by the denoising loss at the trained step: x0 (the rollout's final
sample) is re-noised to step i with fresh noise and the conditional output regresses the target.
(Eq. 16's second term, a pre-training loss, needs a pre-training set: an offline data path.)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from diffalign.algorithms.base import Algorithm, TransitionBatch

WEIGHTINGS = ("exp", "sparse")


@dataclasses.dataclass
class RWRConfig:
    weighting: str = "exp"      # "exp" (w_RWR) or "sparse" (w_sparse)
    temperature: float = 1.0    # gamma, the inverse temperature of the exponential weights
    threshold: float = 0.0      # C, the reward threshold of the sparse weights

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"algorithm.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not self.temperature > 0:
            raise ValueError(f"algorithm.temperature must be > 0, got {self.temperature}")


class RWR(Algorithm):
    name = "rwr"
    config_class = RWRConfig

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        r = rewards.double()
        if self.config.weighting == "exp":
            w = torch.softmax(self.config.temperature * r, dim=0) * r.shape[0]
        else:
            w = (r >= self.config.threshold).double()
        return w.float()

    def loss(self, batch: TransitionBatch, policy, reference):
        noise = torch.randn_like(batch.x0)
        x_t = policy.rule.add_noise(batch.x0, noise, batch.steps)
        pred = policy.predict(x_t, batch.steps, batch.cond, guided=False)
        target = policy.rule.training_target(batch.x0, noise, x_t, batch.steps)
        mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        loss = (batch.advantages * mse).mean()
        return loss, {"denoising_mse": mse.detach().mean(), "weight_mean": batch.advantages.mean()}
