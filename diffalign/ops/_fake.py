"""Fake (meta) impls of the compiled ops: output shapes and dtypes only, so torch.compile and
torch.export trace the ops (symbolic shapes included) without running them. A mask (``mask`` in the
forward ops, ``elem_mask`` in the backward ones) changes no output shape."""
from __future__ import annotations

import torch
from torch.library import register_fake


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _masked(wanted: bool, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like, memory_format=torch.contiguous_format) if wanted else like.new_empty((0,))


@register_fake("diffalign::gaussian_logprob")
def _(x, mean, std, reduction, mask=None):
    return x.new_empty((x.shape[0],), dtype=_acc(x))


@register_fake("diffalign::gaussian_logprob_backward")
def _(grad, x, mean, std, reduction, mask, elem_mask=None):
    gs = std.new_empty(std.shape, dtype=_acc(x)) if mask[2] else std.new_empty((0,), dtype=_acc(x))
    return _masked(mask[0], x), _masked(mask[1], x), gs


@register_fake("diffalign::gaussian_kl")
def _(mean, ref_mean, std, ref_std, reduction, mask=None):
    return mean.new_empty((mean.shape[0],), dtype=_acc(mean))


@register_fake("diffalign::gaussian_kl_backward")
def _(grad, mean, ref_mean, std, ref_std, reduction, mask, elem_mask=None):
    acc = _acc(mean)
    gs1 = std.new_empty(std.shape, dtype=acc) if mask[2] else std.new_empty((0,), dtype=acc)
    gs2 = (ref_std.new_empty(ref_std.shape, dtype=acc) if (mask[3] and ref_std is not None)
           else std.new_empty((0,), dtype=acc))
    return _masked(mask[0], mean), _masked(mask[1], mean), gs1, gs2


@register_fake("diffalign::diffusion_dpo_loss")
def _(model_pred, ref_pred, target, beta, loss_type, reduction, mask=None):
    pairs = model_pred.shape[0] // 2
    acc = _acc(model_pred)
    loss = model_pred.new_empty((pairs,) if reduction == 1 else (), dtype=acc)
    return loss, model_pred.new_empty((pairs,), dtype=acc)


@register_fake("diffalign::diffusion_dpo_loss_backward")
def _(grad, model_pred, target, margin, beta, loss_type, reduction, elem_mask=None):
    return torch.empty_like(model_pred, memory_format=torch.contiguous_format)


@register_fake("diffalign::diffusion_kto_loss")
def _(model_pred, ref_pred, target, desirable, beta, lambda_desirable, lambda_undesirable, kl_ref, mask=None):
    acc = _acc(model_pred)
    return (model_pred.new_empty((), dtype=acc), model_pred.new_empty((), dtype=acc),
            model_pred.new_empty((model_pred.shape[0],), dtype=acc))


@register_fake("diffalign::diffusion_kto_loss_backward")
def _(grad, model_pred, target, desirable, g, z, beta, lambda_desirable, lambda_undesirable, elem_mask=None):
    return torch.empty_like(model_pred, memory_format=torch.contiguous_format)


@register_fake("diffalign::gaussian_step")
def _(model_output, sample, p0, p1, param, prev_sample, noise, mode, mask=None):
    acc = _acc(sample)
    prev = sample.new_empty((0,)) if prev_sample is not None else torch.empty_like(
        sample, memory_format=torch.contiguous_format)
    std_shape = (sample.shape[0],) + (1,) * (sample.ndim - 1)
    return (prev, sample.new_empty((sample.shape[0],), dtype=acc),
            torch.empty_like(sample, memory_format=torch.contiguous_format), sample.new_empty(std_shape, dtype=acc))


@register_fake("diffalign::gaussian_step_backward")
def _(grad_prev, grad_log_prob, grad_mean, model_output, sample, p0, p1, param, prev_sample, mode, mask,
      elem_mask=None):
    return _masked(mask[0], sample), _masked(mask[1], sample), _masked(mask[2] and prev_sample is not None, sample)
