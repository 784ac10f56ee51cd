"""Fused per-step ops of diffusion alignment: Gaussian log-prob and KL, the Diffusion-DPO and
Diffusion-KTO losses, and DDIM / flow-matching SDE steps that also score their sample.

Each function calls the compiled op ``torch.ops.diffalign.<name>`` (schemas, CPU/CUDA kernels,
argument checks and autograd registered in C++, see csrc/) or, when the extension is not built, the
pure-PyTorch reference in :mod:`diffalign.ops.reference` after the same checks written in Python
(:mod:`diffalign.ops._checks`): same results, same ValueErrors, one warning. The wrappers stay thin
because at the sizes of a sampling step host-side overhead, not the kernel, is the cost; they run the
Python checks before the compiled ops too only where an error raised in C++ is unsafe
(``_checks.PYTHON_CHECKS``: torch < 2.14, or DIFFALIGN_PYTHON_CHECKS=1).

Per-sample outputs (log-probs, KLs, losses) are float32 whatever the input dtype (float64 for float64
inputs); reductions accumulate in float32. Gradients come back in the inputs' dtypes.

Masks: every op takes ``mask=None``, a per-element weight m >= 0 (bool or float) of the input's shape or
broadcastable to it with the same batch size (trailing dims it lacks count as 1: (B, N) for (B, N, F)).
"sum" is sum m*l, "mean" is sum m*l / sum m per sample, and a sample whose mask sums to 0 gives 0. The
step ops weight only their log-prob; DPO/KTO take e = sum m (pred - target)^2 / sum m per sample. Masked-
out elements contribute exactly 0 whatever they hold (padding), the weights are read in the input's dtype
(0/1 exactly), and the mask gets no gradient. mask=None runs the unmasked kernels, unchanged.

Cost on the CPU: the kernels read a per-position mask in place (x's leading dims, then 1s: (B, N, 1) for
(B, N, F) with F >= 16, or (B,)) as one weight per run of F elements, and a bool mask of x's shape as bytes;
a float mask of x's shape and dtype is read as it is. Other forms ((B, 1, F), F < 16, a float mask of
another dtype) are first expanded to weights of x's shape and dtype (one extra pass), as every mask is on
the GPU. docs/results.md has the measured cost of each form.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from diffalign.ops import _checks, reference
from diffalign.ops._checks import set_value_checks
from diffalign.ops._extension import cuda_kernels_built, extension_available, unavailable_reason

__all__ = [
    "gaussian_logprob", "gaussian_kl", "diffusion_dpo_loss", "diffusion_kto_loss",
    "ddim_step_with_logprob", "flow_sde_step_with_logprob", "StepOutput", "DPOOutput", "KTOOutput",
    "extension_available", "cuda_kernels_built", "unavailable_reason", "set_value_checks", "reference",
]

_OPS = torch.ops.diffalign  # the compiled ops' namespace (filled when diffalign._C is imported)
_REDUCTIONS = {"mean": 0, "sum": 1}
_DPO_REDUCTIONS = {"mean": 0, "none": 1}
_DPO_LOSSES = {name: i for i, name in enumerate(reference.DPO_LOSS_TYPES)}
_PREDICTION_TYPES = {name: i for i, name in enumerate(reference.PREDICTION_TYPES)}


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # x_{t-1}, in the sample's dtype
    log_prob: torch.Tensor     # (B,) log p(x_{t-1} | x_t), mean over non-batch dims, float32
    mean: torch.Tensor         # posterior mean, in the sample's dtype
    std: torch.Tensor          # (B, 1, ..., 1) float32


class DPOOutput(NamedTuple):
    loss: torch.Tensor           # scalar, or (P,) with reduction="none"
    implicit_acc: torch.Tensor   # (P,) float: 1 where the model prefers the winner more than the reference
    reward_margin: torch.Tensor  # (P,) beta*h, the scaled implicit reward margin


class KTOOutput(NamedTuple):
    loss: torch.Tensor
    kl_ref: torch.Tensor  # the reference point z actually used (detached)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """t in dtype; skips the call when it already is (each .to() costs about a microsecond of host time)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _use_extension() -> bool:
    return extension_available()


def _python_checks() -> bool:
    """Whether the wrapper validates its arguments in Python: always for the reference backend, and for
    the compiled ops where an error raised in C++ is unsafe (see _checks.PYTHON_CHECKS)."""
    return _checks.PYTHON_CHECKS or not _use_extension()


def _choice(name: str, value: str, codes: dict) -> int:
    if value not in codes:
        raise ValueError(f"{name} must be one of {tuple(codes)}, got {value!r}")
    return codes[value]


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean",
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log N(x; mean, std^2) per element, reduced ("mean" or "sum") over all non-batch dims -> (B,).

    std broadcasts to x: 0-d, (B,), (B,1,..,1) or x's full shape. Differentiable in x, mean and std.
    mask: per-element weights (see the module docstring); "mean" is then sum m*l / sum m.
    """
    code = _choice("reduction", reduction, _REDUCTIONS)
    if _python_checks():
        _checks.check_tensor("x", x)
        _checks.check_same("mean", mean, "x", x)
        _checks.check_std("std", std, x, "x")
        _checks.check_mask(mask, x, "x")
    if _use_extension():
        if _checks.value_checks_on_accelerator():
            _checks.accelerator_value_checks(std=std)
        return _OPS.gaussian_logprob.default(x, mean, _cast(std, _acc(x)), code, mask)
    return reference.gaussian_logprob(x, mean, std, reduction, mask)


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, ref_std: Optional[torch.Tensor] = None,
                reduction: str = "mean", mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(N(mean, std^2) || N(ref_mean, ref_std^2)) per element, reduced over non-batch dims -> (B,).

    ref_std defaults to std, where the KL is (mean - ref_mean)^2 / (2 std^2) (DPOK, survey Eq. 21-22).
    mask: per-element weights (see the module docstring).
    """
    code = _choice("reduction", reduction, _REDUCTIONS)
    if _python_checks():
        _checks.check_tensor("mean", mean)
        _checks.check_same("ref_mean", ref_mean, "mean", mean)
        _checks.check_std("std", std, mean, "mean")
        if ref_std is not None:
            _checks.check_std("ref_std", ref_std, mean, "mean")
        _checks.check_mask(mask, mean, "mean")
    if _use_extension():
        if _checks.value_checks_on_accelerator():
            _checks.accelerator_value_checks(std=std, ref_std=ref_std)
        acc = _acc(mean)
        return _OPS.gaussian_kl.default(mean, ref_mean, _cast(std, acc), _cast(ref_std, acc), code, mask)
    return reference.gaussian_kl(mean, ref_mean, std, ref_std, reduction, mask)


def diffusion_dpo_loss(model_pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor, beta: float = 5000.0,
                       loss_type: str = "sigmoid", reduction: str = "mean", return_stats: bool = False,
                       mask: Optional[torch.Tensor] = None):
    """Diffusion-DPO loss (survey Eq. 25) on rows [winners; losers] sharing noise and timestep.

    e = mean over non-batch dims of (pred - target)^2 (masked: sum m (pred - target)^2 / sum m);
    h = -((e_w - e_l)_model - (e_w - e_l)_ref)/2.
    loss_type "sigmoid": -log sigmoid(beta h); "hinge": relu(1 - beta h); "ipo": (h - 1/(2 beta))^2.
    Gradient flows to model_pred only. With return_stats, returns DPOOutput(loss, implicit_acc, reward_margin).
    """
    loss_code = _choice("loss_type", loss_type, _DPO_LOSSES)
    red_code = _choice("reduction", reduction, _DPO_REDUCTIONS)
    beta = _positive("beta", beta)
    if _python_checks():
        _checks.check_tensor("model_pred", model_pred)
        _checks.check_same("ref_pred", ref_pred, "model_pred", model_pred)
        _checks.check_same("target", target, "model_pred", model_pred)
        _checks.check_pairs("model_pred", model_pred)
        _checks.check_mask(mask, model_pred, "model_pred")
    if _use_extension():
        loss, margin = _OPS.diffusion_dpo_loss.default(model_pred, ref_pred, target, beta, loss_code, red_code, mask)
    else:
        loss, margin = reference.diffusion_dpo_loss(model_pred, ref_pred, target, beta, loss_type, reduction, mask)
    if not return_stats:
        return loss
    return DPOOutput(loss, (margin > 0).to(margin.dtype), margin)


def diffusion_kto_loss(model_pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor, desirable: torch.Tensor,
                       beta: float = 1000.0, lambda_desirable: float = 1.0, lambda_undesirable: float = 1.0,
                       kl_ref: Optional[torch.Tensor] = None, return_stats: bool = False,
                       mask: Optional[torch.Tensor] = None):
    """Diffusion-KTO loss (survey Eq. 26): g = e_ref - e_model per sample, z = max(0, mean g) detached
    (or ``kl_ref``, e.g. an all-reduced value), loss = mean of lambda_y (1 - sigmoid(s_y beta (g - z))).
    mask: e = sum m (pred - target)^2 / sum m per sample."""
    beta = _positive("beta", beta)
    if _python_checks():
        _checks.check_tensor("model_pred", model_pred)
        _checks.check_same("ref_pred", ref_pred, "model_pred", model_pred)
        _checks.check_same("target", target, "model_pred", model_pred)
        _checks.check_desirable(desirable, model_pred)
        _checks.check_kl_ref(kl_ref, model_pred)
        _checks.check_mask(mask, model_pred, "model_pred")
    if _use_extension():
        ref_point = None if kl_ref is None else kl_ref.detach().to(_acc(model_pred))
        loss, z, _ = _OPS.diffusion_kto_loss.default(model_pred, ref_pred, target, desirable, beta,
                                                     float(lambda_desirable), float(lambda_undesirable), ref_point,
                                                     mask)
    else:
        loss, z = reference.diffusion_kto_loss(model_pred, ref_pred, target, desirable, beta, lambda_desirable,
                                               lambda_undesirable, kl_ref, mask)
    return KTOOutput(loss, z) if return_stats else loss


def _step_inputs(model_output, sample, prev_sample, noise, generator, mask=None):
    """Cast to the sample's dtype and draw the noise when neither prev_sample nor noise is given."""
    if prev_sample is not None and noise is not None:
        raise ValueError("give prev_sample (to score it) or noise (to draw it), not both")
    if _python_checks():
        _checks.check_tensor("sample", sample)
        _checks.check_same("model_output", model_output, "sample", sample, same_dtype=False)
        for name, t in (("prev_sample", prev_sample), ("noise", noise)):
            if t is not None:
                _checks.check_same(name, t, "sample", sample, same_dtype=False)
        _checks.check_mask(mask, sample, "sample")
    dtype = sample.dtype
    if prev_sample is not None:
        return _cast(model_output, dtype), _cast(prev_sample, dtype), None
    if noise is None:
        noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=dtype)
    return _cast(model_output, dtype), None, _cast(noise, dtype)


def ddim_step_with_logprob(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor,
                           alpha_prod_prev: torch.Tensor, eta: float = 1.0, prev_sample: Optional[torch.Tensor] = None,
                           noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                           prediction_type: str = "epsilon", mask: Optional[torch.Tensor] = None) -> StepOutput:
    """One DDIM(eta) step x_t -> x_{t-1} with its log-prob, fused (formula in docs/design.md, "Formulas", as in DDPO).

    alpha_prod_t / alpha_prod_prev: alphas_cumprod at t and at the previous timestep, 0-d or (B,).
    Draws prev_sample = mean + std * noise unless prev_sample is given, in which case it is scored.
    prediction_type: "epsilon", "v_prediction" or "sample". No x0 clipping (SD schedulers disable it).
    mask weights the log-prob only (sum m*l / sum m); prev_sample and mean are unmasked.
    """
    code = _choice("prediction_type", prediction_type, _PREDICTION_TYPES)
    eta = _non_negative("eta", eta)
    model_output, prev_sample, noise = _step_inputs(model_output, sample, prev_sample, noise, generator, mask)
    if _python_checks():
        _checks.check_schedule("alpha_prod_t", alpha_prod_t, "alpha_prod_prev", alpha_prod_prev, sample)
    if _use_extension():
        if _checks.value_checks_on_accelerator():
            _checks.accelerator_value_checks(alpha_prod_t=alpha_prod_t, alpha_prod_prev=alpha_prod_prev)
        acc = _acc(sample)
        out = _OPS.ddim_step_with_logprob.default(
            model_output, sample, _cast(alpha_prod_t, acc), _cast(alpha_prod_prev, acc), eta, prev_sample, noise, code,
            mask)
        return StepOutput(prev_sample if prev_sample is not None else out[0], out[1], out[2], out[3])
    return StepOutput(*reference.ddim_step_with_logprob(model_output, sample, alpha_prod_t, alpha_prod_prev, eta,
                                                        prev_sample, noise, prediction_type, mask))


def flow_sde_step_with_logprob(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor,
                               sigma_next: torch.Tensor, noise_level: float = 0.7,
                               prev_sample: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                               generator: Optional[torch.Generator] = None,
                               mask: Optional[torch.Tensor] = None) -> StepOutput:
    """One flow-matching SDE step (Flow-GRPO) with its log-prob, computed in float32.

    model_output is the velocity; sigma, sigma_next are 0-d or (B,) with sigma_next < sigma. sigma = 1
    is finite: the 1/(1 - sigma) factor then uses sigma_next, as the reference trainer does.
    mask weights the log-prob only (sum m*l / sum m); prev_sample and mean are unmasked.
    """
    noise_level = _non_negative("noise_level", noise_level)
    model_output, prev_sample, noise = _step_inputs(model_output, sample, prev_sample, noise, generator, mask)
    if _python_checks():
        _checks.check_schedule("sigma", sigma, "sigma_next", sigma_next, sample)
    if _use_extension():
        if _checks.value_checks_on_accelerator():
            _checks.accelerator_value_checks(sigma=sigma, sigma_next=sigma_next)
        acc = _acc(sample)
        out = _OPS.flow_sde_step_with_logprob.default(
            model_output, sample, _cast(sigma, acc), _cast(sigma_next, acc), noise_level, prev_sample, noise, mask)
        return StepOutput(prev_sample if prev_sample is not None else out[0], out[1], out[2], out[3])
    return StepOutput(*reference.flow_sde_step_with_logprob(model_output, sample, sigma, sigma_next, noise_level,
                                                            prev_sample, noise, mask))
