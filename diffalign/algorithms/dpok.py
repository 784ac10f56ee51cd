"""DPOK (Fan et al.): policy gradient with a KL regulariser to the reference, survey Eq. 20-22.

Per trained step i: loss_i = pg_i + beta * T * KL(p_theta(.|x_t) || p_ref(.|x_t)), where pg_i is
DDPO's per-step policy-gradient term (score function or importance-clipped) and the Gaussian KL
(same std for both policies) is (mu_theta - mu_ref)^2 / (2 sigma^2), reduced like the log-probs.
Averaged over the trained steps, beta multiplies the KL *summed* over steps (Eq. 21-22); the reward
term is averaged over steps as in DDPO's trainer (Eq. 22 up to 1/T, absorbed by the learning rate).

Advantage: A = reward_scale * (r - b(c)). baseline "per_prompt" uses the running per-prompt mean
reward as the value estimate V(c) (DPOK learns a value network; a running mean of the same target
needs no extra model), "batch" the batch mean, "none" no baseline (the paper's basic estimator).
"""
from __future__ import annotations

import dataclasses

import torch

from diffalign.algorithms.advantages import PerPromptStatTracker
from diffalign.algorithms.base import Algorithm
from diffalign.algorithms.ddpo import DDPO, ESTIMATORS

BASELINES = ("none", "batch", "per_prompt")


@dataclasses.dataclass
class DPOKConfig:
    beta: float = 0.01              # KL coefficient (of the KL summed over steps)
    estimator: str = "importance_clipped"
    clip_range: float = 1e-4
    baseline: str = "per_prompt"
    reward_scale: float = 1.0
    adv_clip_max: float = 5.0
    buffer_size: int = 32

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"algorithm.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"algorithm.baseline must be one of {BASELINES}, got {self.baseline!r}")
        if not self.beta >= 0:
            raise ValueError(f"algorithm.beta must be >= 0, got {self.beta}")
        if not self.clip_range > 0:
            raise ValueError(f"algorithm.clip_range must be > 0, got {self.clip_range}")


class DPOK(DDPO):
    name = "dpok"
    config_class = DPOKConfig

    def __init__(self, config=None):
        Algorithm.__init__(self, config)
        self.tracker = PerPromptStatTracker(self.config.buffer_size, 1) if self.config.baseline == "per_prompt" else None

    @property
    def needs_reference(self):
        return self.config.beta > 0

    def advantages(self, rewards, prompts):
        r = rewards.double()
        if self.config.baseline == "per_prompt":
            base = torch.tensor([self.tracker.mean(p) for p in prompts], dtype=torch.float64)
            base = torch.where(torch.isnan(base), r.mean(), base)  # first sight of a prompt: batch mean
            self.tracker.update(rewards, prompts)
        elif self.config.baseline == "batch":
            base = r.mean()
        else:
            base = torch.zeros(())
        m = self.config.adv_clip_max
        return (self.config.reward_scale * (r - base.to(r))).clamp(-m, m).float()

    def loss(self, batch, policy, reference):
        per_sample, out, metrics = self.policy_loss(batch, policy)
        pg = per_sample.mean()
        loss = pg
        if self.config.beta > 0:
            ref = reference.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev)
            kl = policy.step_kl(out, ref, batch.x_t, batch.cond)  # masked, per dimension as the log-probs
            kl_sum = batch.num_steps * kl.mean()  # unbiased estimate of sum_t KL_t
            loss = pg + self.config.beta * kl_sum
            metrics["kl"] = kl_sum.detach()
        metrics["policy_loss"] = pg.detach()
        return loss, metrics
