"""GRPO for diffusion (Flow-GRPO / DanceGRPO): group-relative advantages, clipped ratio, KL to the reference.

The rollout holds K samples per prompt (``group_size``); the advantage of a sample is its reward
standardised within its group, (r - mean_g) / (std_g + eps), so no value model or stat buffer is
needed. loss = max(-A r, -A clip(r, 1 +- clip_range)) + beta * KL_i, with the per-step Gaussian KL
(mu_theta - mu_ref)^2 / (2 sigma^2) averaged over steps as the Flow-GRPO trainer does.
"""
from __future__ import annotations

import collections
import dataclasses

from diffalign.algorithms.advantages import group_normalize
from diffalign.algorithms.base import Algorithm
from diffalign.algorithms.surrogate import clipped_surrogate_loss, ratio_metrics


@dataclasses.dataclass
class GRPOConfig:
    group_size: int = 4             # K samples per prompt in every rollout batch
    clip_range: float = 1e-4
    beta: float = 0.004             # KL coefficient
    std_eps: float = 1e-4
    adv_clip_max: float = 5.0

    def __post_init__(self):
        if int(self.group_size) < 2:
            raise ValueError(f"algorithm.group_size must be >= 2 (a group needs a spread), got {self.group_size}")
        if not self.clip_range > 0:
            raise ValueError(f"algorithm.clip_range must be > 0, got {self.clip_range}")
        if not self.beta >= 0:
            raise ValueError(f"algorithm.beta must be >= 0, got {self.beta}")


class GRPO(Algorithm):
    name = "grpo"
    config_class = GRPOConfig

    @property
    def needs_reference(self):
        return self.config.beta > 0

    def advantages(self, rewards, prompts):
        sizes = collections.Counter(prompts)
        bad = {p: n for p, n in sizes.items() if n % self.config.group_size}
        if bad:
            raise ValueError(f"GRPO groups must hold multiples of group_size={self.config.group_size} samples "
                             f"per prompt; got {bad}")
        m = self.config.adv_clip_max
        return group_normalize(rewards, prompts, self.config.std_eps).clamp(-m, m)

    def loss(self, batch, policy, reference):
        out = policy.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev)
        adv = batch.advantages.to(out.log_prob)
        per_sample, ratio = clipped_surrogate_loss(out.log_prob, batch.old_log_prob, adv, self.config.clip_range)
        pg = per_sample.mean()
        metrics = ratio_metrics(out.log_prob.detach(), batch.old_log_prob, ratio.detach(), self.config.clip_range)
        metrics["policy_loss"] = pg.detach()
        loss = pg
        if self.config.beta > 0:
            ref = reference.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev)
            kl = policy.step_kl(out, ref, batch.x_t, batch.cond)  # masked, per dimension as the log-probs
            loss = pg + self.config.beta * kl.mean()
            metrics["kl"] = kl.detach().mean()
        return loss, metrics
