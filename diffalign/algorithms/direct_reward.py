"""Direct reward fine-tuning (survey section 4.1): backpropagate a differentiable reward through sampling.

Every method samples x_T and the per-step noise up front (so a chain can be recomputed exactly, which
gradient checkpointing needs) and differs only in which steps keep their graph and where the reward is read:

- ReFL (ImageReward): denoise WITHOUT gradient to a random late step j (one of the last ``late_steps``),
  take that one step's model output WITH gradient, and score the one-step prediction x0_hat(x_j).
- DRaFT-K: sample the whole chain, keep the graph of the last K steps only (stop-gradient before them),
  score the final x0.
- DRaFT-LV (``lv_samples`` = n > 0, K = 1): sample the whole chain without gradient, re-noise the final
  x0 n times to the last step's noise level, x_1 ~ q(x_1 | x0), and average the reward of the n one-step
  denoisings with gradient: n low-variance estimates for the price of one chain (DRaFT paper, section 4).
- AlignProp: the graph of the last K steps with K drawn uniformly from [min_truncation, max_truncation]
  at every update (randomised truncation); K = T backpropagates through the whole chain.

Reward term per sample: "linear": -lambda r; "hinge": lambda relu(c - r) (ReFL's phi). Optional pre-training
term (``pretrain_weight`` beta): with no pre-training set at hand, beta ||eps_theta - eps_ref||^2 on the
detached samples re-noised to a random step, as RWR's Eq. 16 term (see algorithms/rwr.py for why this equals
the denoising loss up to a constant).

Partial chains (``partial_chain: {tau, source}``, InstructVideo, Yuan et al. 2024; any of the methods above): instead
of starting from x_T, start from a clean sample x0 noised to the chain's step s = T - round(tau T) with the forward
process, x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps (a flow: (1 - sigma_s) x0 + sigma_s eps), and denoise only steps
s .. T-1; the method's truncation then counts within those steps. ``source: generated`` samples x0 by a full chain
without gradient; ``source: data`` takes x0 from the batch (``SamplingBatch.x0``, e.g. encoded dataset clips, what
VGen's InstructVideo config uses: reward_source 'gt'). Either way x0 is a constant: gradients reach the weights
through the re-denoised steps only. VGen's InstructVideo config: 20 DDIM steps, starting_partial 0.6 (tau),
truncated backprop through the last step (trunc_backprop_timestep 1), LoRA rank 4, lr 1e-5, gradient checkpointing.

Gradient checkpointing (``checkpointing``): each step that keeps its graph runs under
torch.utils.checkpoint, so only its input state is stored and the UNet activations are recomputed in the
backward pass; the noise is pre-drawn, so the recomputation is exact (tests compare the gradients).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from diffalign.algorithms.base import Algorithm, DataPath
from diffalign.mdp.chain import run_chain
from diffalign.modalities.base import Conditions

REWARD_LOSSES = ("linear", "hinge")
PARTIAL_SOURCES = ("generated", "data")

__all__ = ["DirectRewardConfig", "ReFLConfig", "DRaFTConfig", "AlignPropConfig", "ReFL", "DRaFT", "AlignProp",
           "SamplingBatch", "reward_loss", "sample_chain", "predicted_x0", "partial_start_step", "noised_start",
           "REWARD_LOSSES", "PARTIAL_SOURCES"]


# ---- pure pieces ---------------------------------------------------------------------------------------
def reward_loss(rewards: torch.Tensor, kind: str = "linear", weight: float = 1.0, margin: float = 1.0) -> torch.Tensor:
    """Per-sample reward loss: -weight r ("linear") or weight relu(margin - r) ("hinge")."""
    if kind == "linear":
        return -weight * rewards
    if kind == "hinge":
        return weight * F.relu(margin - rewards)
    raise ValueError(f"algorithm.reward_loss must be one of {REWARD_LOSSES}, got {kind!r}")


def predicted_x0(rule, i, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The one-step prediction x0_hat of x at step index i from the model output (what ReFL scores).

    alphas_cumprod rules: eps -> (x - sqrt(1-a) eps)/sqrt(a); v -> sqrt(a) x - sqrt(1-a) v; sample -> output.
    Flow: x_s = (1-s) x0 + s eps and v = eps - x0 give x0 = x - s v.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    if rule.prediction_type == "flow":
        s, _ = rule._sigmas(i, x)
        return (x - s.reshape(shape) * model_output).to(x.dtype)
    _, a, _ = rule._coefficients(i, x)
    a = a.reshape(shape)
    if rule.prediction_type == "epsilon":
        out = (x - (1 - a).sqrt() * model_output) / a.sqrt()
    elif rule.prediction_type == "v_prediction":
        out = a.sqrt() * x - (1 - a).sqrt() * model_output
    else:
        out = model_output
    return out.to(x.dtype)


def sample_chain(policy, cond: Conditions, x_T: torch.Tensor, noise: torch.Tensor, grad_from: int,
                 checkpointing: bool = True, stop: Optional[int] = None, start: int = 0) -> torch.Tensor:
    """Run steps start .. stop-1 (default all T) from x_T (the state before step ``start``) with pre-drawn noise
    (B, T, ...), through the one chain runner (diffalign.mdp.run_chain). Steps before ``grad_from`` run under
    no_grad (DRaFT's stop-gradient); the rest keep their graph, each under torch.utils.checkpoint when
    ``checkpointing``. Returns the last state."""
    return run_chain(policy, cond, x_T, noise=noise, grad_from=grad_from, checkpoint=checkpointing, start=start,
                     stop=stop).x


def partial_start_step(num_steps: int, tau: float) -> int:
    """The step a partial chain starts at: s = T - round(tau T), so round(tau T) >= 1 steps are re-run."""
    return num_steps - max(1, int(round(tau * num_steps)))


def noised_start(rule, x0: torch.Tensor, eps: torch.Tensor, start: int) -> torch.Tensor:
    """x0 noised to the state before step ``start`` by the forward process q(x_s | x0) (the rule's add_noise)."""
    steps = torch.full((x0.shape[0],), int(start), dtype=torch.long)
    return rule.add_noise(x0, eps, steps)


def _one_step(policy, cond: Conditions, x: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
    """Step i from x with the given noise, constrained by the adapter (DRaFT-LV's last step)."""
    out = policy.step(i, x, cond, noise=noise)
    return policy.adapter.project(out.prev_sample, cond)


@dataclasses.dataclass
class SamplingBatch:
    """What one differentiable-sampling update needs; everything random is drawn by the trainer."""

    cond: Conditions
    prompts: List[str]
    x_T: torch.Tensor                                  # (B, ...)
    noise: torch.Tensor                                # (B, T, ...) step noise
    reward: Callable[[torch.Tensor], torch.Tensor]     # x0 (B, ...) -> (B,) rewards, differentiable
    generator: torch.Generator                         # draws of the method (ReFL's step, AlignProp's K, ...)
    x0: Optional[torch.Tensor] = None                  # given clean samples (partial_chain source "data")


# ---- configs -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DirectRewardConfig:
    reward_loss: str = "linear"      # "linear": -lambda r;  "hinge": lambda relu(c - r)
    reward_weight: float = 1.0       # lambda
    hinge_margin: float = 1.0        # c
    pretrain_weight: float = 0.0     # beta of the pre-training (distillation to the frozen base) term
    checkpointing: bool = True       # torch.utils.checkpoint on every step that keeps its graph
    lora_scale: float = 1.0          # LoRA scale of the evaluation samples (DRaFT's over-optimisation control)
    # InstructVideo's partial chains (module doc): {tau: fraction of the chain re-run, source: generated | data}
    partial_chain: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if self.partial_chain is not None:
            self.partial_chain = _check_partial_chain(self.partial_chain)
        if self.reward_loss not in REWARD_LOSSES:
            raise ValueError(f"algorithm.reward_loss must be one of {REWARD_LOSSES}, got {self.reward_loss!r}")
        if not self.reward_weight > 0:
            raise ValueError(f"algorithm.reward_weight must be > 0, got {self.reward_weight}")
        if not self.pretrain_weight >= 0:
            raise ValueError(f"algorithm.pretrain_weight must be >= 0, got {self.pretrain_weight}")
        if not self.lora_scale >= 0:
            raise ValueError(f"algorithm.lora_scale must be >= 0, got {self.lora_scale}")


def _check_partial_chain(value) -> dict:
    """{tau, source} with tau in (0, 1] and a known source; ValueError naming algorithm.partial_chain otherwise."""
    key = "algorithm.partial_chain"
    if not isinstance(value, dict) or set(value) - {"tau", "source"} or "tau" not in value:
        raise ValueError(f"{key} must be a mapping {{tau: (0, 1], source: {'|'.join(PARTIAL_SOURCES)}}}, got {value!r}")
    tau, source = value["tau"], value.get("source", "generated")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
        raise ValueError(f"{key}.tau must be a fraction of the sampling chain in (0, 1], got {tau!r}")
    if source not in PARTIAL_SOURCES:
        raise ValueError(f"{key}.source must be one of {PARTIAL_SOURCES}, got {source!r}")
    return {"tau": float(tau), "source": source}


@dataclasses.dataclass
class ReFLConfig(DirectRewardConfig):
    reward_loss: str = "hinge"       # ImageReward's ReFL: relu(c - r)
    late_steps: int = 3              # the gradient step j is drawn from the last late_steps sampling steps

    def __post_init__(self):
        super().__post_init__()
        if int(self.late_steps) < 1:
            raise ValueError(f"algorithm.late_steps must be >= 1, got {self.late_steps}")


@dataclasses.dataclass
class DRaFTConfig(DirectRewardConfig):
    truncation: int = 1              # K: backpropagate through the last K steps
    lv_samples: int = 0              # n > 0: DRaFT-LV (requires truncation 1)

    def __post_init__(self):
        super().__post_init__()
        if int(self.truncation) < 1:
            raise ValueError(f"algorithm.truncation must be >= 1, got {self.truncation}")
        if self.lv_samples < 0:
            raise ValueError(f"algorithm.lv_samples must be >= 0, got {self.lv_samples}")
        if self.lv_samples > 0 and self.truncation != 1:
            raise ValueError(f"algorithm.lv_samples = {self.lv_samples} (DRaFT-LV) needs algorithm.truncation 1, "
                             f"got {self.truncation}")


@dataclasses.dataclass
class AlignPropConfig(DirectRewardConfig):
    min_truncation: int = 1
    max_truncation: Optional[int] = None   # None: all sampling steps

    def __post_init__(self):
        super().__post_init__()
        if int(self.min_truncation) < 1:
            raise ValueError(f"algorithm.min_truncation must be >= 1, got {self.min_truncation}")
        if self.max_truncation is not None and self.max_truncation < self.min_truncation:
            raise ValueError(f"algorithm.max_truncation ({self.max_truncation}) must be >= algorithm.min_truncation "
                             f"({self.min_truncation})")


# ---- algorithms ----------------------------------------------------------------------------------------
class DirectReward(Algorithm):
    """Shared by ReFL, DRaFT and AlignProp: the reward term, the pre-training term and the metrics."""

    data_path = DataPath.DIFFERENTIABLE_SAMPLING

    @property
    def needs_reference(self) -> bool:
        return self.config.pretrain_weight > 0

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return rewards  # unused: the reward's gradient is the signal

    def check_steps(self, num_steps: int) -> None:
        """ValueError naming the key when a setting does not fit T sampling steps (called before training)."""

    @classmethod
    def check_config(cls, config, cfg) -> None:
        """Config-time check against the other sections (diffalign/config.py calls it)."""
        cls(config).check_steps(cfg.sampling.num_steps)

    def scored(self, batch: SamplingBatch, policy) -> Tuple[torch.Tensor, torch.Tensor, dict]:
        """(rewards with a graph (B,) or (n, B), the detached sample for the pre-training term, metrics)."""
        raise NotImplementedError

    def first_step(self, num_steps: int) -> int:
        """The step the chains start at: 0, or the partial chain's s = T - round(tau T)."""
        pc = self.config.partial_chain
        return 0 if pc is None else partial_start_step(num_steps, pc["tau"])

    def steps_run(self, num_steps: int) -> str:
        """The steps a chain runs, for error messages."""
        if self.config.partial_chain is None:
            return f"sampling.num_steps = {num_steps}"
        return (f"the {num_steps - self.first_step(num_steps)} steps of algorithm.partial_chain.tau = "
                f"{self.config.partial_chain['tau']} of sampling.num_steps = {num_steps}")

    def chain_start(self, batch: SamplingBatch, policy) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """(the state the chain starts from, its step noise (B, T, ...), its first step): (x_T, batch noise, 0), or a
        partial chain's x_s = q(x_s | x0) with x0 given (source data) or sampled without gradient (generated)
        and fresh step noise from the method's generator (independent of the chain that generated x0)."""
        pc, T = self.config.partial_chain, policy.rule.num_steps
        if pc is None:
            return batch.x_T, batch.noise, 0
        if pc["source"] == "data":
            if batch.x0 is None:
                raise ValueError("algorithm.partial_chain.source 'data' needs clean samples in the batch (x0); "
                                 "use source 'generated' to start from the model's own samples")
            x0 = batch.x0.detach().to(batch.x_T)
        else:
            with torch.no_grad():
                x0 = sample_chain(policy, batch.cond, batch.x_T, batch.noise, grad_from=T)
        start = self.first_step(T)
        x_s = noised_start(policy.rule, x0, _draw(policy, batch, x0), start)
        noise = None
        if batch.noise is not None:
            noise = torch.stack([_draw(policy, batch, x0) for _ in range(T)], dim=1)
        return x_s, noise, start

    def loss(self, batch: SamplingBatch, policy, reference):
        c = self.config
        rewards, x0, metrics = self.scored(batch, policy)
        if not rewards.requires_grad:
            raise ValueError("the reward returned a tensor without a graph: direct reward fine-tuning needs a "
                             "differentiable reward (e.g. differentiable_color_target, differentiable_brightness, "
                             "tiny_cnn, or the toy rewards)")
        r = rewards if rewards.dtype == torch.float64 else rewards.float()
        per_sample = reward_loss(r, c.reward_loss, c.reward_weight, c.hinge_margin)
        loss = per_sample.mean()
        metrics.update(reward_mean=rewards.detach().float().mean(), reward_loss=loss.detach())
        if c.pretrain_weight > 0:
            pre = self.pretrain_loss(x0.detach(), batch, policy, reference)
            loss = loss + c.pretrain_weight * pre
            metrics["pretrain_loss"] = pre.detach()
        return loss, metrics

    def pretrain_loss(self, x0, batch: SamplingBatch, policy, reference) -> torch.Tensor:
        T = policy.rule.num_steps
        steps = torch.randint(T, (x0.shape[0],), generator=batch.generator)
        noise = _draw(policy, batch, x0)
        x_t = policy.rule.add_noise(x0, noise, steps)
        pred = policy.predict(x_t, steps, batch.cond, guided=False)
        ref = reference.predict(x_t, steps, batch.cond, guided=False)
        return policy.sample_mse(pred, ref.detach(), batch.cond).mean()


def _draw(policy, batch: SamplingBatch, like: torch.Tensor) -> torch.Tensor:
    """Noise of like's shape from the batch's method generator (on the CPU, as before), projected."""
    noise = torch.randn(like.shape, generator=batch.generator, dtype=like.dtype).to(like.device)
    return policy.adapter.project_noise(noise, batch.cond)


class ReFL(DirectReward):
    name = "refl"
    config_class = ReFLConfig

    def check_steps(self, num_steps):
        run = num_steps - self.first_step(num_steps)
        if self.config.late_steps > run:
            raise ValueError(f"algorithm.late_steps = {self.config.late_steps} exceeds {self.steps_run(num_steps)}")

    def grad_step(self, T: int, generator: torch.Generator) -> int:
        return T - 1 - int(torch.randint(self.config.late_steps, (1,), generator=generator))

    def scored(self, batch, policy):
        T = policy.rule.num_steps
        j = self.grad_step(T, batch.generator)
        x_s, noise, start = self.chain_start(batch, policy)
        with torch.no_grad():
            x_j = sample_chain(policy, batch.cond, x_s, noise, grad_from=T, stop=j, start=start)
        out = policy.predict(x_j, j, batch.cond)
        x0_hat = predicted_x0(policy.rule, j, out, x_j)
        return batch.reward(x0_hat), x0_hat, {"grad_step": torch.tensor(float(j))}


class DRaFT(DirectReward):
    name = "draft"
    config_class = DRaFTConfig

    def check_steps(self, num_steps):
        run = num_steps - self.first_step(num_steps)
        if self.config.truncation > run:
            raise ValueError(f"algorithm.truncation = {self.config.truncation} exceeds {self.steps_run(num_steps)}")

    def scored(self, batch, policy):
        c, T = self.config, policy.rule.num_steps
        x_s, noise, start = self.chain_start(batch, policy)
        if c.lv_samples == 0:
            x0 = sample_chain(policy, batch.cond, x_s, noise, grad_from=T - c.truncation,
                              checkpointing=c.checkpointing, start=start)
            return batch.reward(x0), x0, {"truncation": torch.tensor(float(c.truncation))}
        with torch.no_grad():
            x0 = sample_chain(policy, batch.cond, x_s, noise, grad_from=T, start=start)
        rewards = []
        for _ in range(c.lv_samples):  # x_1 ~ q(x_1 | x0), then the last step with its graph
            eps, step_noise = _draw(policy, batch, x0), _draw(policy, batch, x0)
            x1 = policy.rule.add_noise(x0, eps, T - 1)
            if c.checkpointing:
                y = _checkpoint(_one_step, policy, batch.cond, x1, T - 1, step_noise, use_reentrant=False)
            else:
                y = _one_step(policy, batch.cond, x1, T - 1, step_noise)
            rewards.append(batch.reward(y))
        return torch.stack(rewards), x0, {"truncation": torch.tensor(1.0)}


class AlignProp(DirectReward):
    name = "alignprop"
    config_class = AlignPropConfig

    def check_steps(self, num_steps):
        run = num_steps - self.first_step(num_steps)
        if self.config.min_truncation > run:
            raise ValueError(f"algorithm.min_truncation = {self.config.min_truncation} exceeds "
                             f"{self.steps_run(num_steps)}")

    def truncation(self, T: int, generator: torch.Generator) -> int:
        """K ~ U{min_truncation .. max_truncation}, capped by the steps the chain runs (T, or a partial chain's)."""
        run = T - self.first_step(T)
        lo, hi = self.config.min_truncation, min(self.config.max_truncation or run, run)
        return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))

    def scored(self, batch, policy):
        T = policy.rule.num_steps
        k = self.truncation(T, batch.generator)
        x_s, noise, start = self.chain_start(batch, policy)
        x0 = sample_chain(policy, batch.cond, x_s, noise, grad_from=T - k,
                          checkpointing=self.config.checkpointing, start=start)
        return batch.reward(x0), x0, {"truncation": torch.tensor(float(k))}
