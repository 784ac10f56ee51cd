"""DDPO (Black et al.): policy gradient on the denoising MDP, survey Eq. 17-19.

estimator "score_function": Eq. 17, loss -A log p (one gradient step per rollout batch).
estimator "importance_clipped": Eq. 18-19, loss max(-A r, -A clip(r, 1 +- clip_range)) with
r = p_theta / p_old, so a rollout batch can be reused for several inner epochs.
Advantages: clip((r - mean_c) / std_c, +-adv_clip_max) with per-prompt statistics (buffers of the
last ``buffer_size`` rewards of each prompt) or, with per_prompt_stats off, batch statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from diffalign.algorithms.advantages import PerPromptStatTracker, batch_normalize
from diffalign.algorithms.base import Algorithm, TransitionBatch
from diffalign.algorithms.surrogate import clipped_surrogate_loss, ratio_metrics, score_function_loss

ESTIMATORS = ("score_function", "importance_clipped")


@dataclasses.dataclass
class DDPOConfig:
    estimator: str = "importance_clipped"
    clip_range: float = 1e-4        # tiny because log-probs are means over dims (see DiffusionPolicy)
    adv_clip_max: float = 5.0
    per_prompt_stats: bool = True
    buffer_size: int = 16
    min_count: int = 16

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"algorithm.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not self.clip_range > 0:
            raise ValueError(f"algorithm.clip_range must be > 0, got {self.clip_range}")
        if not self.adv_clip_max > 0:
            raise ValueError(f"algorithm.adv_clip_max must be > 0, got {self.adv_clip_max}")


class DDPO(Algorithm):
    name = "ddpo"
    config_class = DDPOConfig

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        self.tracker = PerPromptStatTracker(c.buffer_size, c.min_count) if c.per_prompt_stats else None

    def normalized_rewards(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if self.tracker is not None:
            return self.tracker.update(rewards, prompts)
        return batch_normalize(rewards)

    def advantages(self, rewards, prompts):
        m = self.config.adv_clip_max
        return self.normalized_rewards(rewards, prompts).clamp(-m, m)

    def policy_loss(self, batch: TransitionBatch, policy):
        """Per-sample policy-gradient loss, the step output, and ratio metrics."""
        out = policy.transition(batch.x_t, batch.steps, batch.cond, prev_sample=batch.x_prev)
        adv = batch.advantages.to(out.log_prob)
        if self.config.estimator == "score_function":
            per_sample = score_function_loss(out.log_prob, adv)
            ratio = torch.exp(out.log_prob.detach() - batch.old_log_prob)
        else:
            per_sample, ratio = clipped_surrogate_loss(out.log_prob, batch.old_log_prob, adv, self.config.clip_range)
        return per_sample, out, ratio_metrics(out.log_prob.detach(), batch.old_log_prob, ratio.detach(),
                                              self.config.clip_range)

    def loss(self, batch, policy, reference):
        per_sample, _, metrics = self.policy_loss(batch, policy)
        loss = per_sample.mean()
        metrics["policy_loss"] = loss.detach()
        return loss, metrics

    def state_dict(self):
        return {"tracker": self.tracker.state_dict()} if self.tracker is not None else {}

    def load_state_dict(self, state):
        if self.tracker is not None:
            self.tracker.load_state_dict(state["tracker"])
        else:
            super().load_state_dict(state)
