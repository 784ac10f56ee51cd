"""Offline preference optimisation, the DPO family on stored pairs (survey 3.2.2 and 4.2, Eq. 23-25).

The trainer (trainer/offline.py) draws, for each pair, ONE noise eps and ONE timestep t, noises the
winner and the loser with them (the forward-process approximation of Eq. 24-25: Diffusion-DPO replaces
the intractable reverse joint by q(x_t | x0)), and hands the losses an :class:`OfflineBatch` whose rows
are [winners; losers]. A loss runs the policy's denoiser (unguided, the conditional branch) and, if it
needs one, the frozen reference (``adapter.reference_mode()``: LoRA disabled or a frozen copy), and
compares the per-sample denoising errors e = mean over dims of (pred - target)^2 — eps for epsilon
models, v for v-prediction, the velocity eps - x0 for flow matching.

Every loss reports ``implicit_acc`` (the share of pairs whose implicit reward prefers the winner) and
``reward_margin`` (the batch mean of the scaled implicit reward margin).

- ``dpo``: Diffusion-DPO, loss_type "sigmoid" (Eq. 25: -log sigmoid(beta h), h = -((e_w - e_l)_theta -
  (e_w - e_l)_ref)/2, beta ~ 5000 as in the authors' trainer), "hinge" (relu(1 - beta h), SLiC-style)
  or "ipo"; all through the fused ``ops.diffusion_dpo_loss``.
- ``ipo``: IPO (Eq. 11) with the same diffusion margin h: (h - 1/(2 beta))^2 — a squared loss that
  regresses the margin to a finite target instead of pushing it to infinity; beta is IPO's tau.
- ``e2po``: E2PO (AliDiff), Diffusion-DPO with a soft label p = sigmoid(beta_r (r_w - r_l)) from the
  pair's stored rewards: -p log sigmoid(-beta D) - (1 - p) log sigmoid(beta D),
  D = (e_theta^w - e_ref^w) - (e_theta^l - e_ref^l) (docs/design.md, "Formulas", E2PO: no factor 1/2).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from diffalign import ops
from diffalign.algorithms.base import Algorithm, DataPath
from diffalign.modalities.base import Conditions
from diffalign.ops.reference import per_sample_mse


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _mask(batch) -> Optional[torch.Tensor]:
    """The batch's element mask (None without one, or for a bare pair_loss call with no batch)."""
    return getattr(batch, "mask", None)


def _mask_kw(batch) -> dict:
    mask = _mask(batch)
    return {} if mask is None else {"mask": mask}


@dataclasses.dataclass
class OfflineBatch:
    """Forward-noised stored samples. Pairs: rows [winners (P); losers (P)] sharing noise and t.
    Labels (KTO): B independent samples with ``desirable``."""

    x_t: torch.Tensor               # (R, ...) noised samples
    timesteps: torch.Tensor         # (R,) what the denoiser is conditioned on
    target: torch.Tensor            # (R, ...) the training target (eps, v, x0 or velocity)
    cond: Conditions                # (R,) batch-first
    desirable: Optional[torch.Tensor] = None     # (R,) bool, labels only
    rewards: Optional[torch.Tensor] = None       # (R,) float, [r_w; r_l], pairs with stored rewards
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = _identity  # mean over processes (KTO's z)
    mask: Optional[torch.Tensor] = None          # the adapter's logprob_mask of x_t: errors average over it

    @property
    def num_pairs(self) -> int:
        return self.x_t.shape[0] // 2


def denoiser_outputs(batch: OfflineBatch, policy, reference) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(policy output with grad, frozen reference output or None) on the batch's rows."""
    adapter = policy.adapter
    model_pred = adapter.denoise(batch.x_t, batch.timesteps, batch.cond)
    ref_pred = None
    if reference is not None:
        with torch.no_grad(), adapter.reference_mode():
            ref_pred = adapter.denoise(batch.x_t, batch.timesteps, batch.cond).detach()
        # under autocast a frozen copy returns bf16 while the accelerate-wrapped policy returns float32
        ref_pred = ref_pred.to(model_pred.dtype)
    return model_pred, ref_pred


class OfflinePreferenceAlgorithm(Algorithm):
    """An algorithm fed stored pairs; subclasses implement ``pair_loss`` on denoiser outputs."""

    data_path = DataPath.OFFLINE_PAIRS
    needs_rewards = False  # whether the pairs must carry rewards (E2PO)

    @property
    def needs_reference(self) -> bool:
        return True

    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} learns from stored preferences, not from rollout rewards")

    def loss(self, batch: OfflineBatch, policy, reference):
        model_pred, ref_pred = denoiser_outputs(batch, policy, reference)
        return self.pair_loss(model_pred, ref_pred, batch.target, batch)

    def pair_loss(self, model_pred, ref_pred, target, batch: OfflineBatch):
        raise NotImplementedError


def _check_positive(**values):
    for key, v in values.items():
        if not v > 0:
            raise ValueError(f"algorithm.{key} must be > 0, got {v}")


@dataclasses.dataclass
class DPOConfig:
    beta: float = 5000.0            # Diffusion-DPO's beta (the authors' SD1.5/SDXL runs use 5000 with per-dim means)
    loss_type: str = "sigmoid"      # "sigmoid" | "hinge" | "ipo"

    def __post_init__(self):
        _check_positive(beta=self.beta)
        if self.loss_type not in ops.reference.DPO_LOSS_TYPES:
            raise ValueError(f"algorithm.loss_type must be one of {ops.reference.DPO_LOSS_TYPES}, got {self.loss_type!r}")


def _mse_metrics(model_pred, target, mask=None):
    e = per_sample_mse(model_pred.detach(), target, mask)
    p = e.shape[0] // 2
    return {"mse_w": e[:p].mean(), "mse_l": e[p:].mean()}


class DPO(OfflinePreferenceAlgorithm):
    name = "dpo"
    config_class = DPOConfig

    def pair_loss(self, model_pred, ref_pred, target, batch):
        c = self.config
        out = ops.diffusion_dpo_loss(model_pred, ref_pred, target, beta=c.beta, loss_type=c.loss_type,
                                     return_stats=True, **_mask_kw(batch))
        metrics = {"implicit_acc": out.implicit_acc.mean(), "reward_margin": out.reward_margin.mean(),
                   **_mse_metrics(model_pred, target, _mask(batch))}
        return out.loss, metrics


@dataclasses.dataclass
class IPOConfig:
    beta: float = 1000.0            # IPO's tau: the margin h is regressed to 1/(2 beta)
    loss_type: str = "ipo"

    def __post_init__(self):
        _check_positive(beta=self.beta)
        if self.loss_type != "ipo":
            raise ValueError(f"algorithm.loss_type of ipo is 'ipo', got {self.loss_type!r} (use algorithm.name dpo)")


class IPO(DPO):
    name = "ipo"
    config_class = IPOConfig


@dataclasses.dataclass
class E2POConfig:
    beta: float = 5000.0            # scale of the diffusion margin D
    beta_r: float = 1.0             # reward-gap temperature of the soft label p = sigmoid(beta_r (r_w - r_l))

    def __post_init__(self):
        _check_positive(beta=self.beta, beta_r=self.beta_r)


def e2po_loss(model_pred, ref_pred, target, reward_w, reward_l, beta: float, beta_r: float, mask=None):
    """(loss, implicit_acc (P,), reward_margin (P,)) of E2PO on rows [winners; losers]."""
    e_m, e_r = per_sample_mse(model_pred, target, mask), per_sample_mse(ref_pred.detach(), target, mask)
    p = e_m.shape[0] // 2
    d = (e_m[:p] - e_r[:p]) - (e_m[p:] - e_r[p:])
    label = torch.sigmoid(beta_r * (reward_w - reward_l).to(d))
    loss = -(label * F.logsigmoid(-beta * d) + (1 - label) * F.logsigmoid(beta * d)).mean()
    margin = (-beta * d).detach()
    return loss, (margin > 0).to(margin.dtype), margin


class E2PO(OfflinePreferenceAlgorithm):
    name = "e2po"
    config_class = E2POConfig
    needs_rewards = True

    def pair_loss(self, model_pred, ref_pred, target, batch):
        if batch.rewards is None:
            raise ValueError("e2po needs pairs with chosen_reward / rejected_reward")
        p = batch.num_pairs
        loss, acc, margin = e2po_loss(model_pred, ref_pred, target, batch.rewards[:p], batch.rewards[p:],
                                      self.config.beta, self.config.beta_r, _mask(batch))
        return loss, {"implicit_acc": acc.mean(), "reward_margin": margin.mean(),
                      **_mse_metrics(model_pred, target, _mask(batch))}
