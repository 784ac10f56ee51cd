"""ORPO and SimPO adapted to diffusion: reference-free preference losses (survey 3.2.2, Eq. 12), in the
bounded form of MaPO (Hong, Paul et al. 2024, "Margin-aware Preference Optimization for Aligning Diffusion
Models without Reference", the ORPO authors' own diffusion version).

The per-sample quantity. A diffusion model has no tractable log-likelihood; Diffusion-DPO uses the ELBO,
whose term at (t, eps) is -(T w(t)/2) ||pred - target||^2 + const. Both losses read the *per-dimension
mean* denoising error e = mean over dims of (pred - target)^2 (the counterpart of the per-token average
NLL that ORPO and SimPO use; it makes them independent of the resolution), and the winner and the loser
share one noise and one timestep (as in Diffusion-DPO), so the timestep's weight is common to both sides.

Why bounded (issue 27). The first adaptation scored a sample by -e itself (SimPO's reward -beta e, ORPO's
odds of P = exp(-kappa e)). That reward is unbounded: the ranking can be won by making the *loser*
arbitrarily hard to denoise, and with no reference to anchor the errors that is what happened on the demo's
AI feedback (docs/experiments.md, "Offline losses on images"): the losers' per-dim error went from ~0.064 to
~0.15, the winners' from ~0.06 to 0.08-0.125 with them, and held-out accuracy fell by 5.6 points on average
for both losses where Diffusion-DPO, whose reference cancels the base model's own gaps, gained 8. MaPO scores
a sample instead by the bounded, convex, decreasing

    s(e) = g(w e),   g(x) = x / (exp(x) - 1)   (g(0) = 1, g(inf) = 0, g'(0) = -1/2),

with w a constant SNR weight (MaPO's ``snr_value``, 0.5 in its train script). Two properties matter:
raising the loser's error gains at most s(e_l) <= 1, with a gradient g'(w e_l) that vanishes as e_l grows,
and since g is convex the same change of error is worth more on the better-denoised side (|g'| is largest
near 0), so lowering the winner's error pays more than raising the loser's. The winners' plain denoising
loss is kept as the SFT anchor. For w e << 1, g(w e) ~ 1 - w e / 2: the score margin is w/2 (e_l - e_w),
the first adaptation's linear reward, so that behaviour is the small-w limit and needs no separate code.
That is also the regime of the demo's errors (per-dim ~0.05, w e ~ 0.025): there the bound on s hardly bites
(it does for w e >~ 1), and what limits the push on the losers is MaPO's weighting: the steep margin (slope
T w / 2 = 250) saturates after an error gap of ~0.02, and lam = 0.1 keeps the margin term small beside the SFT.

ORPO (``orpo``), MaPO's loss as its official train script computes it (checked against mapo-t2i/mapo,
train.py, 2024: per-sample mean MSE, the score above, the margin multiplied by the number of training
timesteps T "to maximize the margin throughout the denoising process", defaults snr_value 0.5 and
beta_mapo 0.1):

    loss = sft_weight * mean(e_w) - lam * mean(log sigmoid(T (s(e_w) - s(e_l)))).

SimPO (``simpo``): SimPO's reward margin with its target margin gamma, on the same bounded score:

    loss = -mean(log sigmoid(beta (s(e_w) - s(e_l)) - gamma)) + sft_weight * mean(e_w).

beta plays T's part (1000: for small w e the margin's slope is beta w / 2 = 250, as MaPO's T w / 2 and as
Diffusion-DPO's beta / 2 at the demo's beta 500, so the sigmoid saturates after a per-dim error gap of ~0.02
instead of being chased up to ~0.1). sft_weight is 10 where published SimPO has none: without a reference the
winners' denoising loss is the only anchor of the errors, and what keeps MaPO's model intact is the *ratio*
of the two gradients (the optimiser is Adam and the gradient is clipped, so the overall scale hardly matters):
before saturation the margin term pulls on e_l with lam T w / 2 = 25 per unit of the SFT term's pull on e_w.
SimPO with sft_weight 10 has that same ratio. Measured on the demo's AI feedback (seed 0, 3 minutes, float32,
one thread, load ~5; docs/results.md): with sft_weight 1 (ratio 250) the errors still grew (winners' per-dim
error 0.057 -> 0.077, losers' -> 0.084) and held-out accuracy changed by -1.0 point, where ORPO-as-MaPO kept
them at 0.052 / 0.051 and gained +5.2.

What it does not fix (3 seeds at these defaults, same feedback, same session; docs/results.md): neither loss
aligns the demo model yet. ORPO changes held-out accuracy by +5.2 / -3.1 / -4.2 points (mean -0.7), SimPO by
+4.2 / -2.1 / -6.3 (mean -1.4; its errors still grow with the steps, 0.053 -> 0.070 / 0.057 -> 0.086 after 3
epochs), every interval including 0, where Diffusion-DPO gains +11.5 / +8.3 / +14.6 on the same pairs (the
first adaptation: -5.6 for both). Bounding removes most of the damage; what is left is the missing anchor: a
reference-free loss must beat each pair's own base error gap, which DPO's reference cancels.

``implicit_acc`` is the share of pairs whose score ranks the winner first (s(e_w) > s(e_l), i.e. e_w < e_l);
``reward_margin`` is the mean of the margin inside the sigmoid (before gamma).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from diffalign.algorithms.preference import OfflinePreferenceAlgorithm, _check_positive, _mask, _mse_metrics
from diffalign.ops.reference import per_sample_mse


def bounded_score(e: torch.Tensor, snr_value: float) -> torch.Tensor:
    """MaPO's per-sample score g(w e) = w e / (exp(w e) - 1) for e >= 0, in (0, 1].

    Written as x exp(-x) / (1 - exp(-x)) (expm1), which neither overflows for large x nor loses precision
    for small x; x is floored at 1e-12, where g is 1 to double precision (0/0 at x = 0 exactly)."""
    x = (snr_value * e).clamp_min(1e-12)
    return x * torch.exp(-x) / -torch.expm1(-x)


def _check_non_negative(**values):
    for key, v in values.items():
        if not v >= 0:
            raise ValueError(f"algorithm.{key} must be >= 0, got {v}")


@dataclasses.dataclass
class SimPOConfig:
    beta: float = 1000.0            # scale of the score margin (MaPO's T: slope beta w / 2 = 250 for small w e)
    gamma: float = 0.5              # SimPO's target reward margin
    snr_value: float = 0.5          # w in the bounded score g(w e) (MaPO's snr_value)
    sft_weight: float = 10.0        # weight of the winners' denoising loss (0: SimPO's published form)

    def __post_init__(self):
        _check_positive(beta=self.beta, snr_value=self.snr_value)
        _check_non_negative(gamma=self.gamma, sft_weight=self.sft_weight)


def simpo_loss(model_pred, target, beta: float, gamma: float, snr_value: float, sft_weight: float, mask=None):
    """(loss, implicit_acc (P,), reward_margin (P,)) on rows [winners; losers]."""
    e = per_sample_mse(model_pred, target, mask)
    p = e.shape[0] // 2
    score = bounded_score(e, snr_value)
    margin = beta * (score[:p] - score[p:])
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
        loss, acc, margin = simpo_loss(model_pred, target, c.beta, c.gamma, c.snr_value, c.sft_weight, _mask(batch))
        return loss, {"implicit_acc": acc.mean(), "reward_margin": margin.mean(),
                      **_mse_metrics(model_pred, target, _mask(batch))}


@dataclasses.dataclass
class ORPOConfig:
    snr_value: float = 0.5            # w in the bounded score g(w e) (MaPO's snr_value default)
    margin_scale: float = 1000.0      # T multiplying the score margin (MaPO: the scheduler's training timesteps)
    lam: float = 0.1                  # weight of the margin term (ORPO's lambda; MaPO's beta_mapo default)
    sft_weight: float = 1.0           # weight of the winners' denoising loss (ORPO's SFT term)

    def __post_init__(self):
        _check_positive(snr_value=self.snr_value, margin_scale=self.margin_scale, lam=self.lam)
        _check_non_negative(sft_weight=self.sft_weight)


def orpo_loss(model_pred, target, snr_value: float, margin_scale: float, lam: float, sft_weight: float = 1.0,
              mask=None):
    """MaPO: (loss, implicit_acc (P,), reward_margin (P,)) on rows [winners; losers]."""
    e = per_sample_mse(model_pred, target, mask)
    p = e.shape[0] // 2
    score = bounded_score(e, snr_value)
    margin = margin_scale * (score[:p] - score[p:])
    loss = sft_weight * e[:p].mean() - lam * F.logsigmoid(margin).mean()
    margin = margin.detach()
    return loss, (margin > 0).to(margin.dtype), margin


class ORPO(OfflinePreferenceAlgorithm):
    name = "orpo"
    config_class = ORPOConfig

    @property
    def needs_reference(self):
        return False

    def pair_loss(self, model_pred, ref_pred, target, batch):
        c = self.config
        loss, acc, margin = orpo_loss(model_pred, target, c.snr_value, c.margin_scale, c.lam, c.sft_weight,
                                      _mask(batch))
        return loss, {"implicit_acc": acc.mean(), "reward_margin": margin.mean(),
                      **_mse_metrics(model_pred, target, _mask(batch))}
