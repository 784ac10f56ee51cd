"""Reward-weighted regression (survey Eq. 16), run online as in DDPO's RWR baselines.

Weights: "exp": w = B * softmax(gamma r) over the rollout batch, i.e. exp(gamma r)/Z with Z
normalising the mean weight to 1; "sparse": w = 1[r >= threshold]. "group" (not in Eq. 16: a baseline
added to it) draws ``group_size`` samples per prompt and weights each by its group-normalised reward
(r - mean_g) / std_g as GRPO does, so the weights sum to zero within a prompt: the pull toward the
policy's own samples, common to all of a prompt's samples, cancels, and what is left moves the model
toward that prompt's better samples and away from its worse ones. The weighted negative
log-likelihood is approximated by the denoising loss at the trained step: x0 (the rollout's final
sample) is re-noised to step i with fresh noise and the conditional output regresses the target.

Eq. 16's second term, beta * (pre-training denoising loss), keeps the model near what it was trained
for. With no pre-training set at hand, ``pretrain_weight`` > 0 adds beta * ||eps_theta - eps_ref||^2
(mean over dims) on the same noised samples, eps_ref the frozen base's conditional output. This is the
pre-training loss up to a constant when the base is the MSE-optimal denoiser of its data, because
E||eps_theta - eps||^2 = E||eps_theta - E[eps | x_t, c]||^2 + const; the one substitution is that x_t is
noised from the rollout's samples instead of from the pre-training set.

``exclude_final_steps`` = k gives the last k sampling steps (the least noise) weight 0. A generated x0
carries its own pixel noise; where the re-noising is smaller than that (std sqrt(1 - alpha) ~ 0.009 at the
shipped demo model's last DDIM step), the noise (or v) target cannot be told apart from x0 and its squared
error stays ~1 where the other steps' is ~0.02, so that one step's gradient drove the whole update and the
demo model fell apart (held-out accuracy 21.9% -> 1% with sparse weights at lr 1e-4).

``common_noise`` (with "group" weighting) trains a prompt's group at the same steps with the same re-noising
noise: common random numbers, as Diffusion-DPO re-noises a pair's two images with one noise and one timestep.
With zero-sum weights, the part of the samples' denoising losses that comes from the noise draw alone then
cancels within the group instead of adding variance to the update; what is left is the difference between
the group's images. Each rollout group is then normalised on its own (a prompt drawn twice is two groups,
each zero-sum), and the trainer puts whole groups into each minibatch (``minibatch_group_size``).

HIVE's two ways of fine-tuning an editor on a learned reward (Zhang et al. 2023) are options of this loop:
reward-weighted fine-tuning is this loss with ``reward.name`` a trained reward model (a reward directory,
e.g. ``diffalign reward train``'s OUTPUT_DIR/reward), which scores every rollout and weights it;
reward-conditioned fine-tuning is ``reward_condition`` (:mod:`diffalign.algorithms.reward_condition`):
rollouts are sampled from the plain prompts (HIVE's data: the model's own outputs), then each sample is
trained on with its prompt rewritten to the level its reward reached, with ``weighting: uniform`` (w = 1
for every sample, HIVE's plain denoising loss) or any weighting above; sampling then asks for the top
level (``reward_condition.top_items``). The logged ``reward_mean`` is that of the plain prompts' rollouts.

``guided`` trains the classifier-free-guided output (the rollouts' own predictor) instead of the plain
conditional one. Rollouts sampled with guidance w are then fitted by the model that drew them; fitting
them with the conditional branch alone moves that branch toward the guided samples, and sampling with
guidance w again applies the guidance twice.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from diffalign.algorithms.base import Algorithm, TransitionBatch
from diffalign.algorithms.reward_condition import RewardConditionConfig

WEIGHTINGS = ("exp", "sparse", "group", "uniform")


@dataclasses.dataclass
class RWRConfig:
    weighting: str = "exp"      # "exp" (w_RWR) or "sparse" (w_sparse)
    temperature: float = 1.0    # gamma, the inverse temperature of the exponential weights
    threshold: float = 0.0      # C, the reward threshold of the sparse weights
    pretrain_weight: float = 0.0  # beta of Eq. 16's pre-training term (a distillation to the frozen base)
    exclude_final_steps: int = 0  # the last k (least-noise) sampling steps get no loss (see the module doc)
    guided: bool = False          # regress the guided output (the sampler's) instead of the conditional one
    group_size: int = 1           # samples per prompt in every rollout batch ("group" weighting needs >= 2)
    common_noise: bool = False    # a group shares its trained steps and re-noising noise (see the module doc)
    reward_condition: Optional[RewardConditionConfig] = None  # HIVE's reward-conditioned training (module doc)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"algorithm.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not self.temperature > 0:
            raise ValueError(f"algorithm.temperature must be > 0, got {self.temperature}")
        if not self.pretrain_weight >= 0:
            raise ValueError(f"algorithm.pretrain_weight must be >= 0, got {self.pretrain_weight}")
        if self.weighting == "group" and int(self.group_size) < 2:
            raise ValueError(f"algorithm.group_size must be >= 2 for weighting 'group', got {self.group_size}")
        if int(self.group_size) < 1:
            raise ValueError(f"algorithm.group_size must be >= 1, got {self.group_size}")
        if self.common_noise and self.weighting != "group":
            raise ValueError(f"algorithm.common_noise needs weighting 'group' (its groups share the noise), "
                             f"got weighting {self.weighting!r}")
        if self.weighting == "uniform" and self.reward_condition is None:
            raise ValueError("algorithm.weighting 'uniform' weights every sample alike, which trains the model on its "
                             "own samples unchanged; it needs algorithm.reward_condition (HIVE's reward-conditioned "
                             "training)")
        if self.exclude_final_steps < 0:
            raise ValueError(f"algorithm.exclude_final_steps must be >= 0, got {self.exclude_final_steps}")


class RWR(Algorithm):
    name = "rwr"
    config_class = RWRConfig

    @property
    def needs_reference(self) -> bool:
        return self.config.pretrain_weight > 0

    @property
    def minibatch_group_size(self) -> int:
        return int(self.config.group_size) if self.config.common_noise else 1

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        r = rewards.double()
        if self.config.weighting == "exp":
            w = torch.softmax(self.config.temperature * r, dim=0) * r.shape[0]
        elif self.config.weighting == "group":
            from diffalign.algorithms.advantages import group_normalize
            # common_noise: each rollout group (group_size consecutive samples) on its own, so that every
            # group's weights sum to zero where it shares its noise (a prompt drawn twice is two groups)
            g = int(self.config.group_size)
            w = group_normalize(r, [i // g for i in range(len(r))] if self.config.common_noise else prompts).double()
        elif self.config.weighting == "uniform":
            w = torch.ones_like(r)
        else:
            w = (r >= self.config.threshold).double()
        return w.float()

    def loss(self, batch: TransitionBatch, policy, reference):
        noise = policy.adapter.project_noise(self._noise(batch), batch.cond)
        x_t = policy.rule.add_noise(batch.x0, noise, batch.steps)
        pred = policy.predict(x_t, batch.steps, batch.cond, guided=self.config.guided)
        target = policy.rule.training_target(batch.x0, noise, x_t, batch.steps)
        mse = policy.sample_mse(pred, target, batch.cond)
        weights = batch.advantages
        if self.config.exclude_final_steps > 0:
            kept = batch.steps.to(mse.device) < batch.num_steps - self.config.exclude_final_steps
            weights = weights * kept.to(weights.dtype)
        loss = (weights * mse).mean()
        metrics = {"denoising_mse": mse.detach().mean(), "weight_mean": batch.advantages.mean()}
        if self.config.pretrain_weight > 0:
            ref = reference.predict(x_t, batch.steps, batch.cond, guided=False)
            pretrain = policy.sample_mse(pred, ref.detach(), batch.cond).mean()
            loss = loss + self.config.pretrain_weight * pretrain
            metrics["pretrain_loss"] = pretrain.detach()
        return loss, metrics

    def _noise(self, batch: TransitionBatch) -> torch.Tensor:
        """Fresh re-noising noise per sample, or with ``common_noise`` one per group of ``group_size``
        consecutive samples (the trainer's minibatches hold whole groups, each at one step)."""
        if not self.config.common_noise:
            return torch.randn_like(batch.x0)
        g, b = int(self.config.group_size), batch.x0.shape[0]
        steps = batch.steps.reshape(-1)
        if b % g or not bool((steps.reshape(-1, g) == steps[::g, None]).all()):
            raise ValueError(f"rwr common_noise: the batch of {b} samples is not whole groups of {g} consecutive "
                             f"samples at one step each (steps {steps.tolist()}); the online trainer builds such "
                             f"batches from minibatch_group_size")
        noise = torch.randn((b // g,) + tuple(batch.x0.shape[1:]), dtype=batch.x0.dtype, device=batch.x0.device)
        return noise.repeat_interleave(g, dim=0)
