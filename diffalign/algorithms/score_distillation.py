"""Score distillation sampling (SDS): train a generator x = g(theta) against a frozen diffusion model.

Text-to-3D (DreamFusion, Poole et al. 2022) optimises a radiance field whose renders the frozen text-to-image
model should find likely; the model is a critic, never trained. DreamFusion's eq. (3), the SDS gradient:

    grad_theta L_SDS = E_{t, eps}[ w(t) (eps_hat(x_t; y, t) - eps) dx/dtheta ],   x_t = sqrt(a_t) x + sqrt(1 - a_t) eps

with a_t = alpha_bar_t, eps_hat the classifier-free-guided noise prediction (guidance 100 in DreamFusion),
t ~ U(0.02, 0.98) of the training horizon and w(t) = sigma_t^2 = 1 - alpha_bar_t. The U-Net Jacobian is left
out (eps_hat is a constant to theta), so the loss that has this gradient is the usual

    L = 0.5 * || x - stopgrad(x - w(t) (eps_hat - eps)) ||^2     (summed over x's elements, mean over the batch).

DreamReward (survey section 4.4, "Beyond T2I": Ye et al.'s Reward3D-guided SDS) adds a reward term to the same
generator: ``reward_weight`` = lambda > 0 makes the loss L_SDS - lambda * r(render) with a differentiable reward
(``reward.name``).

Timesteps are the step rule's (sampling.step_rule, sampling.num_steps): each render draws one of the steps whose
timestep lies in [min_step, max_step] of the training horizon (more sampling steps: a finer t grid), and is
noised by the rule's forward process. Flow-matching models (velocity prediction, x_s = (1-s) x + s eps) are
handled through the same eps residual; their w(t) uses the alpha_bar of equal signal-to-noise ratio,
(1-s)^2 / ((1-s)^2 + s^2).

The toy generator is a learnable point (``generator: point``; ``num_points`` > 1: a small set, each render picks
one at random, like a random camera view of a 3-D scene). ``generator: modality`` trains the modality's own
generator (``adapter.build_generator`` / ``adapter.render``: a radiance field and its renderer for text-to-3D), whose
renders are drawn from the conditions (a camera the adapter drew from each render's generator).

RewardSDS (Chachy, Yariv and Benaim 2025, "Aligning Score Distillation via Reward-Weighted Sampling";
``reward_samples`` = N > 1): each render is noised N times at its timestep, each noisy render's one-step denoised
estimate x0_k = (x_t,k - sqrt(1 - a_t) eps_hat_k) / sqrt(a_t) is scored by the reward, and the SDS residuals are
averaged with weights that favour the high-reward noises: w(t) sum_k p_k (eps_hat_k - eps_k). The paper maps the
scores to weights by their rank; here p = softmax(r / ``reward_temperature``) over the N samples (one knob,
-> the mean of plain SDS as the temperature grows, -> the best sample's residual as it shrinks). It needs no
gradient of the reward, so any reward of the zoo fits; it costs N critic evaluations per render.

DreamDPO (Zhou et al. 2025, "Aligning Text-to-3D Generation with Human Preferences via Direct Preference
Optimization"; ``name: dreamdpo``): each render is noised twice at its timestep, the two one-step estimates are
ranked by the reward (any reward of the zoo; no gradient of it is needed), and the update pulls toward the winner's
score and away from the loser's:

    grad = w(t) [ (eps_hat_win - eps_win) - 1[s_win - s_lose > tau] (eps_hat_lose - eps_lose) ]

The loser's term is used only when the reward gap exceeds ``gap_threshold`` = tau, so near-ties, whose ranking is
noise, give the winner's plain SDS residual (the paper's piecewise objective; the authors' released configs use
tau = 0, which drops the loser only on exact ties).

Timestep annealing (``max_step_final``, ``anneal_steps``): the top of the t range decays linearly from max_step to
max_step_final over the first anneal_steps optimiser steps, so late training refines details at low noise
(DreamFusion-style schedules as threestudio's max_step_percent; ProlificDreamer anneals 0.98 -> 0.5).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from diffalign.algorithms.base import Algorithm, DataPath, Metrics
from diffalign.modalities.base import Conditions

__all__ = ["GeneratorAlgorithm", "GeneratorBatch", "PointGenerator", "SDS", "SDSConfig", "DreamDPO", "DreamDPOConfig",
           "GENERATORS",
           "alpha_bar", "eps_from_output"]


@dataclasses.dataclass
class GeneratorBatch:
    """One loss evaluation of the generator path: B renders, each with its own timestep and noise."""

    x: torch.Tensor               # (B, ...) renders, with a graph to the generator's parameters
    steps: torch.Tensor           # (B,) long, step-rule indices
    noise: torch.Tensor           # (B, ...) standard normal
    cond: Conditions
    prompts: List[Any]
    # differentiable reward of renders (B,) when the algorithm scores them (reward_weight > 0), else None
    reward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


class PointGenerator(nn.Module):
    """``num_points`` learnable points of a sample's shape; ``forward(index)`` returns the indexed points."""

    def __init__(self, points: torch.Tensor):
        super().__init__()
        self.points = nn.Parameter(points.clone())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.points[index.to(self.points.device)]


GENERATORS = ("point", "modality")  # modality: adapter.build_generator / adapter.render


class GeneratorAlgorithm(Algorithm):
    """Base of the algorithms on the generator data path (trainer/generator.py): they own the generator
    (``trainable_modules``), render from it, pick the timesteps a render may be noised at, and name the guidance
    of the frozen critic."""

    data_path = DataPath.GENERATOR

    @property
    def needs_reference(self) -> bool:
        return True  # the critic is the frozen reference view of the policy

    @property
    def guidance_scale(self) -> float:
        raise NotImplementedError

    @property
    def reward_weight(self) -> float:
        """> 0: the loop hands the loss a differentiable reward of the renders."""
        return 0.0

    @property
    def uses_reward(self) -> bool:
        """Whether the loop should hand the loss the reward of the renders (``GeneratorBatch.reward``)."""
        return self.reward_weight > 0

    def render(self, modules: Dict[str, nn.Module], cond: Conditions,
               generators: Sequence[torch.Generator], adapter=None) -> torch.Tensor:
        """(B, ...) renders of the generator, render b drawing its randomness (a view) from generators[b] alone
        (or from its conditions, which the adapter drew from generators[b])."""
        raise NotImplementedError

    def allowed_steps(self, rule, step: int = 0) -> torch.Tensor:
        """The step-rule indices a render may be noised at (1-D long tensor) at optimiser step ``step``."""
        return torch.arange(rule.num_steps)

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise TypeError(f"{self.name} trains a generator (data path 'generator'); it has no advantages")


# ---- noise levels of a step rule ---------------------------------------------------------------------------
def _is_flow(rule) -> bool:
    return rule.prediction_type == "flow"


def alpha_bar(rule, steps: torch.Tensor) -> torch.Tensor:
    """alpha_bar (float64, (B,)) at step-rule indices ``steps``; for a flow rule the VP alpha_bar of equal
    signal-to-noise ratio ((1-s)^2 / s^2), so that w(t) means the same noise level for both families."""
    idx = steps.cpu()
    if _is_flow(rule):
        s = rule.sigma[idx]
        return (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
    return rule.alpha_t[idx]


def eps_from_output(rule, output: torch.Tensor, x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The noise prediction eps_hat implied by a model output of the rule's prediction type."""
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    if _is_flow(rule):  # x_s = (1-s) x + s eps, v = eps - x  =>  eps = x_s + (1-s) v
        s = rule.sigma[steps.cpu()].to(x_t.device, output.dtype).reshape(shape)
        return x_t + (1 - s) * output
    kind = rule.prediction_type
    if kind == "epsilon":
        return output
    a = rule.alpha_t[steps.cpu()].to(x_t.device, output.dtype).reshape(shape)
    if kind == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x  =>  eps = sqrt(a) v + sqrt(1-a) x_t
        return a.sqrt() * output + (1 - a).sqrt() * x_t
    if kind == "sample":
        return (x_t - a.sqrt() * output) / (1 - a).sqrt()
    raise ValueError(f"score distillation does not support prediction type {kind!r}")


def distillation_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 ||x - stopgrad(x - grad)||^2 per render, mean over the batch: its gradient to x is ``grad`` (divided by
    the batch size), the update of every score-distillation variant (the batch mean is E_{t, eps})."""
    target = (x - grad).detach()
    return 0.5 * ((x.float() - target.float()) ** 2).flatten(1).sum(1).mean()


# ---- SDS -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SDSConfig:
    guidance_scale: float = 100.0     # classifier-free guidance of the critic (DreamFusion: 100); sampling.guidance_scale
                                      # is not used on this path
    min_step: float = 0.02            # the t range, as fractions of the training horizon (DreamFusion: U(0.02, 0.98))
    max_step: float = 0.98
    max_step_final: Optional[float] = None  # timestep annealing: max_step decays linearly to this value ...
    anneal_steps: int = 0                   # ... over this many optimiser steps (then stays); None / 0: no annealing
    weighting: str = "sds"            # "sds": w(t) = 1 - alpha_bar_t (DreamFusion); "uniform": w(t) = 1
    generator: str = "point"          # what is trained; "point": num_points learnable points of a sample's shape;
                                      # "modality": the modality's generator (adapter.build_generator(init_seed))
    num_points: int = 1
    init: Optional[List[float]] = None  # the points' initial value: one sample's values (shared by all points) or
                                        # num_points of them, flattened; default: N(0, init_std^2) from init_seed
    init_std: float = 1.0
    init_seed: int = 0
    reward_weight: float = 0.0        # DreamReward-style: loss = L_SDS - reward_weight * reward(render)
    reward_samples: int = 0           # RewardSDS: > 1 noise samples per render, weighted by their reward (module doc)
    reward_temperature: float = 0.1   # RewardSDS: weights softmax(reward / temperature) over a render's samples

    def __post_init__(self):
        if not self.guidance_scale >= 0:
            raise ValueError(f"config key 'algorithm.guidance_scale' must be >= 0, got {self.guidance_scale!r}")
        if not 0 <= self.min_step < self.max_step <= 1:
            raise ValueError(f"config keys 'algorithm.min_step' / 'algorithm.max_step' must satisfy "
                             f"0 <= min_step < max_step <= 1, got {self.min_step!r} / {self.max_step!r}")
        if self.max_step_final is not None:
            if not self.min_step < self.max_step_final <= self.max_step:
                raise ValueError(f"config key 'algorithm.max_step_final' must satisfy min_step < max_step_final <= "
                                 f"max_step ({self.min_step} / {self.max_step}), got {self.max_step_final!r}")
            if self.anneal_steps < 1:
                raise ValueError(f"config key 'algorithm.anneal_steps' must be >= 1 with max_step_final, got "
                                 f"{self.anneal_steps!r}")
        elif self.anneal_steps:
            raise ValueError(f"config key 'algorithm.anneal_steps' ({self.anneal_steps!r}) needs "
                             f"'algorithm.max_step_final'")
        if self.weighting not in ("sds", "uniform"):
            raise ValueError(f"config key 'algorithm.weighting' must be 'sds' or 'uniform', got {self.weighting!r}")
        if self.generator not in GENERATORS:
            raise ValueError(f"config key 'algorithm.generator' must be one of {GENERATORS}, got {self.generator!r}")
        if self.generator == "modality" and (self.init is not None or self.num_points != 1):
            raise ValueError("config keys 'algorithm.init' / 'algorithm.num_points' apply to generator 'point'; the "
                             "modality's generator is initialised from algorithm.init_seed")
        if self.num_points < 1:
            raise ValueError(f"config key 'algorithm.num_points' must be >= 1, got {self.num_points!r}")
        if not self.init_std >= 0:
            raise ValueError(f"config key 'algorithm.init_std' must be >= 0, got {self.init_std!r}")
        if not self.reward_weight >= 0:
            raise ValueError(f"config key 'algorithm.reward_weight' must be >= 0, got {self.reward_weight!r}")
        if self.reward_samples < 0 or self.reward_samples == 1:
            raise ValueError(f"config key 'algorithm.reward_samples' must be 0 (plain SDS) or >= 2 (RewardSDS), got "
                             f"{self.reward_samples!r}")
        if not self.reward_temperature > 0:
            raise ValueError(f"config key 'algorithm.reward_temperature' must be > 0, got {self.reward_temperature!r}")


class SDS(GeneratorAlgorithm):
    """Score distillation sampling (DreamFusion) with an optional reward term (DreamReward)."""

    name = "sds"
    config_class = SDSConfig

    @property
    def guidance_scale(self) -> float:
        return self.config.guidance_scale

    @property
    def reward_weight(self) -> float:
        return self.config.reward_weight

    @property
    def uses_reward(self) -> bool:
        return self.config.reward_weight > 0 or self.config.reward_samples > 1

    def trainable_modules(self, adapter, sample_shape: Tuple[int, ...]) -> Dict[str, nn.Module]:
        c = self.config
        if c.generator == "modality":
            return {"generator": adapter.build_generator(c.init_seed)}
        size = math.prod(sample_shape)
        if c.init is None:
            g = torch.Generator().manual_seed(c.init_seed)
            points = c.init_std * torch.randn((c.num_points,) + tuple(sample_shape), generator=g)
        else:
            values = torch.tensor(c.init, dtype=torch.float32)
            if values.numel() not in (size, c.num_points * size):
                raise ValueError(f"config key 'algorithm.init' has {values.numel()} values; a sample has {size} "
                                 f"(shape {tuple(sample_shape)}): give {size} or num_points x {size} = "
                                 f"{c.num_points * size}")
            points = values.reshape((-1,) + tuple(sample_shape)).expand((c.num_points,) + tuple(sample_shape))
        return {"generator": PointGenerator(points.float())}

    def render(self, modules, cond, generators, adapter=None):
        if self.config.generator == "modality":
            if adapter is None:
                raise ValueError("algorithm.generator 'modality' renders through the adapter; none was given")
            return adapter.render(modules["generator"], cond)
        n = self.config.num_points
        views = torch.cat([torch.randint(n, (1,), generator=g) for g in generators])
        return modules["generator"](views)

    def max_step_at(self, step: int) -> float:
        """The top of the t range at optimiser step ``step`` (timestep annealing; constant without it)."""
        c = self.config
        if c.max_step_final is None:
            return c.max_step
        return c.max_step + (c.max_step_final - c.max_step) * min(1.0, step / c.anneal_steps)

    def allowed_steps(self, rule, step: int = 0) -> torch.Tensor:
        horizon = rule.scheduler.config.num_train_timesteps
        frac = rule.timesteps.to(torch.float64) / horizon
        top = self.max_step_at(step)
        ok = torch.nonzero((frac >= self.config.min_step) & (frac <= top)).flatten()
        if not len(ok):
            raise ValueError(f"no sampling step has its timestep within [algorithm.min_step, algorithm.max_step] = "
                             f"[{self.config.min_step}, {top}] of the horizon (the steps' fractions: "
                             f"{[round(float(f), 3) for f in frac]}); raise sampling.num_steps or widen the range")
        return ok

    def weight(self, rule, steps: torch.Tensor) -> torch.Tensor:
        """w(t) (float64, (B,))."""
        if self.config.weighting == "uniform":
            return torch.ones(len(steps), dtype=torch.float64)
        return 1 - alpha_bar(rule, steps)  # DreamFusion: w(t) = sigma_t^2

    def sds_gradient(self, batch: GeneratorBatch, critic) -> Tuple[torch.Tensor, torch.Tensor]:
        """(w(t) (eps_hat - eps), w) for the batch's renders: DreamFusion eq. (3) without dx/dtheta, no graph."""
        rule = critic.rule
        with torch.no_grad():
            x = batch.x.detach()
            x_t = rule.add_noise(x, batch.noise, batch.steps)
            output = critic.predict(x_t, batch.steps, batch.cond)
            eps_hat = eps_from_output(rule, output.to(x.dtype), x_t, batch.steps)
            w = self.weight(rule, batch.steps)
            grad = w.to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)) * (eps_hat - batch.noise)
        return grad, w

    def scored_residual(self, batch: GeneratorBatch, critic, eps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(eps_hat - eps, reward of the one-step denoised estimate (B,)) of the renders noised with ``eps`` at the
        batch's steps; no graph. The rewarded methods (RewardSDS, DreamDPO) score noisy renders this way."""
        if batch.reward is None:
            raise ValueError(f"{self.name} scores noisy renders and needs a reward of the renders (the generator loop "
                             "passes reward.name's)")
        rule = critic.rule
        with torch.no_grad():
            x = batch.x.detach()
            a = alpha_bar(rule, batch.steps).to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
            x_t = rule.add_noise(x, eps, batch.steps)
            eps_hat = eps_from_output(rule, critic.predict(x_t, batch.steps, batch.cond).to(x.dtype), x_t, batch.steps)
            # the one-step denoised estimate; for a flow rule a is the alpha_bar of equal SNR, and
            # x_t (sqrt(a) + sqrt(1 - a)) is its VP-scaled x_t, so one formula serves both families
            scaled = x_t * (a.sqrt() + (1 - a).sqrt()) if _is_flow(rule) else x_t
            x0 = (scaled - (1 - a).sqrt() * eps_hat) / a.sqrt()
            return eps_hat - eps, batch.reward(x0).detach().to(x.dtype)

    def reward_sds_gradient(self, batch: GeneratorBatch, critic) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RewardSDS: (w(t) sum_k p_k (eps_hat_k - eps_k), w, the samples' rewards (B, N)), no graph. Sample 0 is the
        batch's noise, the other N - 1 are drawn from torch's generator (seeded per epoch by the loop)."""
        rule, n = critic.rule, self.config.reward_samples
        with torch.no_grad():
            x = batch.x.detach()
            shape = (-1,) + (1,) * (x.ndim - 1)
            residuals, rewards = [], []
            for k in range(n):
                residual, reward = self.scored_residual(batch, critic, batch.noise if k == 0 else torch.randn_like(x))
                residuals.append(residual)
                rewards.append(reward)
            r = torch.stack(rewards, 1)  # (B, N)
            p = torch.softmax(r / self.config.reward_temperature, dim=1)
            mix = sum(p[:, k].reshape(shape) * residuals[k] for k in range(n))
            w = self.weight(rule, batch.steps)
            grad = w.to(x.device, x.dtype).reshape(shape) * mix
        return grad, w, r

    def add_reward_term(self, loss: torch.Tensor, metrics: Metrics, batch: GeneratorBatch):
        """DreamReward's term: loss - reward_weight * mean differentiable reward of the renders."""
        if batch.reward is None:
            raise ValueError("algorithm.reward_weight > 0 needs a reward of the renders (the generator loop "
                             "passes reward.name's)")
        r = batch.reward(batch.x)
        if not r.requires_grad:
            raise ValueError("algorithm.reward_weight > 0 needs a differentiable reward; reward.name's returned "
                             "no graph")
        metrics["reward_mean"] = r.detach().float().mean()
        return loss - self.config.reward_weight * r.float().mean(), metrics

    def loss(self, batch: GeneratorBatch, policy, reference) -> Tuple[torch.Tensor, Metrics]:
        if reference is None:
            raise ValueError("sds needs the frozen critic (the reference policy)")
        if self.config.reward_samples > 1:
            grad, w, sample_rewards = self.reward_sds_gradient(batch, reference)
        else:
            grad, w = self.sds_gradient(batch, reference)
        loss = distillation_loss(batch.x, grad)
        metrics: Metrics = {"sds_grad_norm": grad.detach().float().flatten(1).norm(dim=1).mean(),
                            "w_mean": w.float().mean()}
        if self.config.reward_weight > 0:
            loss, metrics = self.add_reward_term(loss, metrics, batch)
        if self.config.reward_samples > 1:
            metrics["sample_reward_mean"] = sample_rewards.float().mean()
        return loss, metrics


@dataclasses.dataclass
class DreamDPOConfig(SDSConfig):
    gap_threshold: float = 0.0        # tau: the loser's term is used only when the reward gap exceeds it

    def __post_init__(self):
        super().__post_init__()
        if not self.gap_threshold >= 0:
            raise ValueError(f"config key 'algorithm.gap_threshold' must be >= 0, got {self.gap_threshold!r}")
        if self.reward_samples:
            raise ValueError("config key 'algorithm.reward_samples' is RewardSDS's; dreamdpo draws its own pair of "
                             "noises per render")


class DreamDPO(SDS):
    """DreamDPO: score distillation toward the reward-preferred of two noisings of each render (module docstring)."""

    name = "dreamdpo"
    config_class = DreamDPOConfig

    @property
    def uses_reward(self) -> bool:
        return True

    def dreamdpo_gradient(self, batch: GeneratorBatch, critic) -> Tuple[torch.Tensor, torch.Tensor, Metrics]:
        """(w(t) [(eps_hat_win - eps_win) - 1[gap > tau] (eps_hat_lose - eps_lose)], w, metrics), no graph. The first
        noise is the batch's, the second is drawn from torch's generator (seeded per epoch by the loop)."""
        x = batch.x.detach()
        shape = (-1,) + (1,) * (x.ndim - 1)
        res_a, r_a = self.scored_residual(batch, critic, batch.noise)
        res_b, r_b = self.scored_residual(batch, critic, torch.randn_like(x))
        a_wins = (r_a >= r_b).reshape(shape)
        win, lose = torch.where(a_wins, res_a, res_b), torch.where(a_wins, res_b, res_a)
        gap = (r_a - r_b).abs()
        push = (gap > self.config.gap_threshold).to(x.dtype)
        w = self.weight(critic.rule, batch.steps)
        grad = w.to(x.device, x.dtype).reshape(shape) * (win - push.reshape(shape) * lose)
        metrics: Metrics = {"reward_gap_mean": gap.float().mean(), "pushed_fraction": push.float().mean(),
                            "pair_reward_mean": torch.cat([r_a, r_b]).float().mean()}
        return grad, w, metrics

    def loss(self, batch: GeneratorBatch, policy, reference) -> Tuple[torch.Tensor, Metrics]:
        if reference is None:
            raise ValueError("dreamdpo needs the frozen critic (the reference policy)")
        grad, w, metrics = self.dreamdpo_gradient(batch, reference)
        loss = distillation_loss(batch.x, grad)
        metrics.update(sds_grad_norm=grad.detach().float().flatten(1).norm(dim=1).mean(), w_mean=w.float().mean())
        if self.config.reward_weight > 0:
            loss, metrics = self.add_reward_term(loss, metrics, batch)
        return loss, metrics

