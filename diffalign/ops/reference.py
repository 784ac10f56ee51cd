"""Pure-PyTorch reference of every fused op.

These functions are the test oracle for the compiled kernels and the fallback when the extension is
not built. They are written for clarity, not speed: plain tensor expressions, computed in float32
(float64 for float64 inputs), differentiated by autograd. Argument checking lives in
``diffalign.ops._checks`` and runs before either backend, so both raise the same errors.

Conventions shared with the kernels (see ../../csrc/include/diffalign/math.h):
- per-sample outputs (log-probs, KLs, per-pair losses) are float32 (float64 for float64 inputs);
- "mean" reduces over all non-batch dims (the public trainers' convention, which makes log-ratios
  about 1/D of the true ones, hence their tiny PPO clip range), "sum" gives the true log-density;
- a step whose std is 0 is deterministic: its log-prob is defined as 0 (a point mass has no density,
  so it contributes nothing to a likelihood ratio);
- a ``mask`` (per-element weight m >= 0, bool or float, of the input's shape or broadcastable to it with
  the same batch size; trailing dims it lacks count as 1) weights each element: "sum" = sum m*l, "mean" =
  sum m*l / sum m per sample, 0 for a sample whose mask sums to 0; masked-out elements contribute exactly
  0 whatever they hold. The weights are read in the input's dtype, as the kernels read them.
"""
from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _reduce(values: torch.Tensor, reduction: str, mask=None) -> torch.Tensor:
    if mask is not None:
        return _masked_reduce(values, reduction, mask)
    dims = tuple(range(1, values.ndim))
    if not dims:
        return values
    return values.mean(dim=dims) if reduction == "mean" else values.sum(dim=dims)


def expand_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask as the kernels read it: in ``like``'s dtype (weights rounded to it), trailing dims it lacks
    added as 1, broadcast to ``like``'s shape."""
    m = mask.to(like.dtype)
    if m.ndim < like.ndim:
        m = m.reshape(tuple(m.shape) + (1,) * (like.ndim - m.ndim))
    return m.expand(like.shape)


def _masked_reduce(values: torch.Tensor, reduction: str, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype).expand(values.shape)
    dims = tuple(range(1, values.ndim))
    # where, not m * values: a masked-out element may hold inf or NaN (padding), and 0 * NaN is NaN
    total = torch.where(m != 0, m * values, torch.zeros_like(values)).sum(dim=dims)
    if reduction == "sum":
        return total
    weight = m.sum(dim=dims)
    return torch.where(weight > 0, total / torch.where(weight > 0, weight, torch.ones_like(weight)),
                       torch.zeros_like(total))


def broadcast_std(std: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a 0-d, (B,), (B,1,..,1) or full std so it broadcasts against ``like``."""
    if std.ndim == 1 and like.ndim > 1 and std.shape[0] == like.shape[0]:
        return std.reshape((-1,) + (1,) * (like.ndim - 1))
    return std


def _mask_for(mask, like):
    return None if mask is None else expand_mask(mask, like).to(acc_dtype(like))


def gaussian_logprob(x, mean, std, reduction="mean", mask=None):
    dt = acc_dtype(x)
    m = _mask_for(mask, x)
    x, mean = x.to(dt), mean.to(dt)
    s = broadcast_std(std, x).to(dt)
    lp = -((x - mean) ** 2) / (2 * s**2) - torch.log(s) - LOG_SQRT_2PI
    return _reduce(lp.expand_as(x), reduction, m)


def gaussian_kl(mean, ref_mean, std, ref_std=None, reduction="mean", mask=None):
    dt = acc_dtype(mean)
    m = _mask_for(mask, mean)
    m1, m2 = mean.to(dt), ref_mean.to(dt)
    s1 = broadcast_std(std, mean).to(dt)
    if ref_std is None:
        kl = (m1 - m2) ** 2 / (2 * s1**2)
    else:
        s2 = broadcast_std(ref_std, mean).to(dt)
        kl = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    return _reduce(kl.expand_as(m1), reduction, m)


def per_sample_mse(pred, target, mask=None):
    """mean over non-batch dims of (pred - target)^2; masked: sum m (pred - target)^2 / sum m."""
    dt = acc_dtype(pred)
    d = pred.to(dt) - target.to(dt)
    if mask is None:
        return _reduce(d**2, "mean")
    weight = _mask_for(mask, pred)
    d = torch.where(weight != 0, d, torch.zeros_like(d))  # padding (even NaN) then has a zero gradient too
    return _reduce(d**2, "mean", weight)


def dpo_pair_loss(h_scaled: torch.Tensor, beta: float, loss_type: str) -> torch.Tensor:
    """Per-pair loss from the scaled implicit reward margin beta*h."""
    if loss_type == "sigmoid":
        return -torch.nn.functional.logsigmoid(h_scaled)
    if loss_type == "hinge":
        return torch.relu(1.0 - h_scaled)
    # IPO: (h - 1/(2 beta))^2 with h = h_scaled / beta
    return (h_scaled / beta - 1.0 / (2.0 * beta)) ** 2


def diffusion_dpo_loss(model_pred, ref_pred, target, beta=5000.0, loss_type="sigmoid", reduction="mean", mask=None):
    """Diffusion-DPO (survey Eq. 25) on rows [winners; losers]. Returns (loss, margin) where margin is
    the per-pair scaled implicit reward beta*h, h = -((e_w - e_l)_model - (e_w - e_l)_ref)/2."""
    e_model = per_sample_mse(model_pred, target, mask)
    e_ref = per_sample_mse(ref_pred.detach(), target, mask)
    p = e_model.shape[0] // 2
    diff_model = e_model[:p] - e_model[p:]
    diff_ref = e_ref[:p] - e_ref[p:]
    margin = -0.5 * beta * (diff_model - diff_ref)
    loss = dpo_pair_loss(margin, beta, loss_type)
    if reduction == "mean":
        loss = loss.mean()
    return loss, margin.detach()


def diffusion_kto_loss(model_pred, ref_pred, target, desirable, beta=1000.0, lambda_desirable=1.0,
                       lambda_undesirable=1.0, kl_ref=None, mask=None):
    """Diffusion-KTO (survey Eq. 26). Returns (loss, z) with z the detached reference point."""
    e_model = per_sample_mse(model_pred, target, mask)
    e_ref = per_sample_mse(ref_pred.detach(), target, mask)
    g = e_ref - e_model
    if kl_ref is None:
        z = g.detach().mean().clamp_min(0.0)
    else:
        z = kl_ref.detach().to(g.dtype).reshape(())
    one = torch.ones_like(g)
    sign = torch.where(desirable, one, -one)
    weight = torch.where(desirable, one * lambda_desirable, one * lambda_undesirable)
    loss = (weight * (1.0 - torch.sigmoid(sign * beta * (g - z)))).mean()
    return loss, z


def _as_batch(a: torch.Tensor, like: torch.Tensor, dt) -> torch.Tensor:
    a = a.to(dt)
    if a.ndim == 0:
        a = a.expand(like.shape[0])
    return a.reshape((-1,) + (1,) * (like.ndim - 1))


def ddim_coefficients(alpha_t, alpha_prev, eta, prediction_type):
    """(c_sample, c_model, std) with mean = c_sample * x_t + c_model * model_output (docs/design.md, "Formulas")."""
    sigma = eta * torch.sqrt((1 - alpha_prev) / (1 - alpha_t)) * torch.sqrt((1 - alpha_t / alpha_prev).clamp_min(0))
    k = torch.sqrt((1 - alpha_prev - sigma**2).clamp_min(0))
    sa, s1a, sap = torch.sqrt(alpha_t), torch.sqrt(1 - alpha_t), torch.sqrt(alpha_prev)
    if prediction_type == "epsilon":  # x0 = (x - s1a eps)/sa
        cx, cm = sap / sa, k - sap * s1a / sa
    elif prediction_type == "v_prediction":  # x0 = sa x - s1a v, eps = sa v + s1a x
        cx, cm = sap * sa + k * s1a, k * sa - sap * s1a
    else:  # sample: eps = (x - sa x0)/s1a
        cx, cm = k / s1a, sap - k * sa / s1a
    return cx, cm, sigma


def flow_sde_coefficients(sigma, sigma_next, noise_level):
    """Flow-GRPO SDE step. sigma = 1 uses sigma_next in the 1/(1-sigma) factor (as the reference
    trainer substitutes the schedule's second sigma) so the first step stays finite."""
    dt = sigma_next - sigma
    denom_sigma = torch.where(sigma >= 1, sigma_next, sigma)
    inv = 1.0 / (1.0 - denom_sigma)
    a2 = noise_level**2
    # sigma_t^2/(2s) = a^2/(2(1-s)) and sigma_t^2 (1-s)/(2s) = a^2 (1-s)/(2(1-s)): no division by s
    cx = 1.0 + 0.5 * a2 * inv * dt
    cm = (1.0 + 0.5 * a2 * (1.0 - sigma) * inv) * dt
    std = noise_level * torch.sqrt((sigma * inv).clamp_min(0)) * torch.sqrt((-dt).clamp_min(0))
    return cx, cm, std


def _linear_gaussian_step(model_output, sample, cx, cm, std, prev_sample, noise, mask=None):
    dt = acc_dtype(sample)
    weight = _mask_for(mask, sample)
    x, m = sample.to(dt), model_output.to(dt)
    cx, cm, std = _as_batch(cx, x, dt), _as_batch(cm, x, dt), _as_batch(std, x, dt)
    mean = cx * x + cm * m
    if prev_sample is None:
        prev_sample = (mean + std * noise.to(dt)).to(sample.dtype)
    prev = prev_sample.to(dt)
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    lp = -((prev - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - LOG_SQRT_2PI
    lp = torch.where(std > 0, lp, torch.zeros_like(lp))
    log_prob = _reduce(lp.expand_as(x), "mean", weight)
    return prev_sample, log_prob, mean.to(sample.dtype), std


def ddim_step_with_logprob(model_output, sample, alpha_prod_t, alpha_prod_prev, eta=1.0, prev_sample=None,
                           noise=None, prediction_type="epsilon", mask=None):
    dt = acc_dtype(sample)
    cx, cm, std = ddim_coefficients(alpha_prod_t.to(dt), alpha_prod_prev.to(dt), eta, prediction_type)
    return _linear_gaussian_step(model_output, sample, cx, cm, std, prev_sample, noise, mask)


def flow_sde_step_with_logprob(model_output, sample, sigma, sigma_next, noise_level=0.7, prev_sample=None,
                               noise=None, mask=None):
    dt = acc_dtype(sample)
    cx, cm, std = flow_sde_coefficients(sigma.to(dt), sigma_next.to(dt), noise_level)
    return _linear_gaussian_step(model_output, sample, cx, cm, std, prev_sample, noise, mask)
