"""ORPO and SimPO adapted to diffusion: reference-free preference losses (survey 3.2.2, Eq. 12).

Both LLM losses score a response by its *length-normalised* log-likelihood: SimPO's implicit reward
is (beta/|y|) log p(y|x), and ORPO's odds use P(y|x) = exp((1/|y|) log p(y|x)) (its per-token average,
so P lies in (0, 1]). A diffusion model has no tractable log-likelihood; what Diffusion-DPO uses in
its place is the ELBO, whose per-sample term at (t, eps) is -(T w(t)/2) ||pred - target||^2 + const.
The adaptation chosen here keeps both ingredients exactly analogous:

- the *per-dimension mean* denoising error e = mean over dims of (pred - target)^2 is the diffusion
  counterpart of the per-token average negative log-likelihood (length normalisation becomes
  dimension normalisation, which also makes the losses independent of the resolution), and
- the winner and the loser share one noise and one timestep (as in Diffusion-DPO), so the
  timestep-dependent ELBO weight and constant are common to both sides and fold into one scale.

Why not a reference-based form: the point of these methods is to drop the reference model (no second
forward pass, no frozen copy), so the reference enters neither loss; the frozen base is still
available for monitoring but unused.

SimPO (``simpo``): reward r(x) = -beta e(x) (the length-normalised log-likelihood, beta absorbing the
ELBO scale), loss = -log sigmoid(r_w - r_l - gamma) = -log sigmoid(beta (e_l - e_w) - gamma), gamma
the target reward margin. ``sft_weight`` optionally adds the winner's denoising loss (0 = plain SimPO).

ORPO (``orpo``): P(x) = exp(-kappa e(x)) in (0, 1] (kappa, ``likelihood_scale``, is the ELBO scale of
that per-dimension log-likelihood), log odds(x) = log P - log(1 - P) = -kappa e - log(-expm1(-kappa e)),
loss = sft_weight * e_w + lam * -log sigmoid(log odds(x_w) - log odds(x_l)): ORPO's SFT term on the
preferred sample is the plain denoising loss of the winner (the diffusion NLL up to the ELBO weight),
its odds-ratio term the odds of the length-normalised likelihoods. For kappa e >> 1 the odds ratio
tends to kappa (e_l - e_w), a SimPO margin without gamma; for kappa e << 1 it is dominated by
log(e_l / e_w), a scale-free ratio of the errors.

``implicit_acc`` is the share of pairs whose reward (SimPO: -beta e; ORPO: the log odds) ranks the
winner first; ``reward_margin`` is the mean of that reward difference.

What it takes to learn an image preference (issue 27). The implicit reward of a reference-free loss is
the *absolute* error gap d = e_l - e_w, where Diffusion-DPO's is d_theta - d_ref: DPO's reference removes
the base model's own gap, which on images is large. Measured on the tiny random SD UNet (LoRA rank 4,
32x32, 64 training and 32 held-out pairs, winner bright and flat, loser dark noise, batch 8, float32):
the base model's d on the held-out pairs has mean 3e-5 and spread (std) 6.9e-4 at per-dim errors near 1.06.
Four epochs at lr 5e-4 (what the toy configs use) move d by 2.7e-5 on average, identically under DPO
(beta 50) and SimPO (beta 50): 72% of held-out pairs move towards the winner under both, so the
adaptation learns what DPO learns, yet SimPO's own held-out accuracy stays at 0.50 (ORPO, defaults: 0.53)
because a 2.7e-5 shift cannot reorder gaps spread over 6.9e-4 (which is also why ORPO's and SimPO's
training accuracies matched epoch by epoch: both are the sign of the barely moved base model's gap on the
same seeded noise and timesteps). At lr 5e-3 for 8 epochs the shift is 1.9e-3
and both reach 1.00 with the defaults (DPO 1.00). So:

- the learning rate (or the number of steps) must carry the shift past the base model's spread of d: a
  reference-free loss needs far more movement than DPO needs to report the same preference; about 10x
  DPO's learning rate on the tiny UNet (tests/algorithms/test_offline_losses_image.py);
- beta (SimPO) and kappa (ORPO) set the margin's scale: beta x spread(d) near 1 keeps the sigmoid out of
  saturation (the defaults: 2000 and 1000 for spreads near 7e-4, per-dim errors near 1); the demo model's
  own samples have per-dim errors near 0.04-0.15 and gaps spread over ~0.03, so its configs use 50 (beta 500
  there gave a loss of 11, nearly every pair saturated, and gradient norms of 300 against the clip of 1);
- ORPO needs kappa e >> 1 for its odds ratio to carry a preference: the toy's kappa = 1 on images makes
  the ratio ~1.6 (e_l - e_w), a gradient ~1e-3 of the SFT term's, so ORPO is then plain SFT on the winners
  (held-out 0.56 at lr 5e-3).

Learning the ranking is not yet aligning a model. On the demo's AI feedback (docs/results.md, "The offline
losses on the same AI feedback": 3 minutes, lr 2e-5, 3 seeds) both losses raise their training implicit
accuracy from ~0.53 to ~0.72, but they do it mostly by making the *losers* harder to denoise: the losers'
per-dim error goes from ~0.064 to ~0.15 and the winners' from ~0.06 to 0.08-0.125, so the whole model
denoises worse and the held-out compositional accuracy falls (SimPO and ORPO both -5.6 points on average),
while DPO, whose reference anchors both errors (0.051 -> 0.058), gains. Nothing in a reference-free loss
stops it from pushing e_l up without bound; ORPO's SFT term (and SimPO's optional ``sft_weight``, -4.5
points at 1) only pulls e_w down. So on images they are not listed as working for alignment (README).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from diffalign.algorithms.preference import OfflinePreferenceAlgorithm, _check_positive, _mask, _mse_metrics
from diffalign.ops.reference import per_sample_mse


@dataclasses.dataclass
class SimPOConfig:
    beta: float = 2000.0            # scale of the length-normalised (per-dim) likelihood reward
    gamma: float = 0.5              # target reward margin
    sft_weight: float = 0.0         # weight of the winner's denoising loss (0: SimPO as published)

    def __post_init__(self):
        _check_positive(beta=self.beta)
        if self.gamma < 0 or self.sft_weight < 0:
            raise ValueError(f"algorithm.gamma and algorithm.sft_weight must be >= 0, got {self.gamma}, {self.sft_weight}")


def simpo_loss(model_pred, target, beta: float, gamma: float, sft_weight: float = 0.0, mask=None):
    """(loss, implicit_acc (P,), reward_margin (P,)) on rows [winners; losers]."""
    e = per_sample_mse(model_pred, target, mask)
    p = e.shape[0] // 2
    margin = beta * (e[p:] - e[:p])
    loss = -F.logsigmoid(margin - gamma).mean() + sft_weight * e[:p].mean()
    margin = margin.detach()
    return loss, (margin > 0).to(margin.dtype), margin


class SimPO(OfflinePreferenceAlgorithm):
    name = "simpo"
    config_class = SimPOConfig

    @property
    def needs_reference(self):
        return False

    def pair_loss(self, model_pred, ref_pred, target, batch):
        c = self.config
        loss, acc, margin = simpo_loss(model_pred, target, c.beta, c.gamma, c.sft_weight, _mask(batch))
        return loss, {"implicit_acc": acc.mean(), "reward_margin": margin.mean(),
                      **_mse_metrics(model_pred, target, _mask(batch))}


@dataclasses.dataclass
class ORPOConfig:
    likelihood_scale: float = 1000.0  # kappa: P(x) = exp(-kappa e(x))
    lam: float = 1.0                  # weight of the odds-ratio term (ORPO's lambda)
    sft_weight: float = 1.0           # weight of the winner's denoising loss (ORPO's SFT term)

    def __post_init__(self):
        _check_positive(likelihood_scale=self.likelihood_scale, lam=self.lam)
        if self.sft_weight < 0:
            raise ValueError(f"algorithm.sft_weight must be >= 0, got {self.sft_weight}")


def log_odds(e: torch.Tensor, kappa: float) -> torch.Tensor:
    """log(P / (1 - P)) for P = exp(-kappa e), computed stably (expm1) for e >= 0."""
    nll = kappa * e.clamp_min(1e-12)  # e = 0 would make P = 1 and the odds infinite
    return -nll - torch.log(-torch.expm1(-nll))


def orpo_loss(model_pred, target, kappa: float, lam: float, sft_weight: float = 1.0, mask=None):
    """(loss, implicit_acc (P,), reward_margin (P,)) on rows [winners; losers]."""
    e = per_sample_mse(model_pred, target, mask)
    p = e.shape[0] // 2
    ratio = log_odds(e[:p], kappa) - log_odds(e[p:], kappa)
    loss = sft_weight * e[:p].mean() + lam * -F.logsigmoid(ratio).mean()
    ratio = ratio.detach()
    return loss, (ratio > 0).to(ratio.dtype), ratio


class ORPO(OfflinePreferenceAlgorithm):
    name = "orpo"
    config_class = ORPOConfig

    @property
    def needs_reference(self):
        return False

    def pair_loss(self, model_pred, ref_pred, target, batch):
        c = self.config
        loss, acc, margin = orpo_loss(model_pred, target, c.likelihood_scale, c.lam, c.sft_weight, _mask(batch))
        return loss, {"implicit_acc": acc.mean(), "reward_margin": margin.mean(),
                      **_mse_metrics(model_pred, target, _mask(batch))}
