"""From a validated config to live objects: the modality adapter, step rule, policy, algorithm, reward.

Modalities are found by name in ``diffalign.registry.modalities`` (built-ins and entry points).
"""
from __future__ import annotations

from typing import List

import torch

from diffalign import registry
from diffalign.algorithms import ALGORITHMS, Algorithm
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.registry import ModalityEntry  # noqa: F401  (public name, kept where it was)


# the modality table lives in diffalign.registry (built-ins + entry points); these names stay for callers
MODALITIES = registry.modalities


def build_adapter(cfg, prompts: List[str], device: torch.device):
    """The adapter of ``cfg.modality`` (its options checked against the modality's dataclass)."""
    from diffalign.config import modality_options
    entry = registry.modalities[cfg.modality.name]
    return entry.build(modality_options(cfg), prompts, device)


def build_policy(cfg, adapter) -> DiffusionPolicy:
    s = cfg.sampling
    name = s.step_rule or adapter.default_step_rule
    kwargs = {"ddim": {"eta": s.eta}, "vp": {"eta": s.eta}, "edm": {"eta": s.eta},
              "flow_sde": {"noise_level": s.noise_level}}.get(name, {})
    rule = make_step_rule(name, adapter.scheduler, s.num_steps, **kwargs)
    return DiffusionPolicy(adapter, rule, s.guidance_scale, s.logprob_reduction)


def build_algorithm(cfg) -> Algorithm:
    from diffalign.config import from_dict
    section = dict(cfg.algorithm)
    cls = ALGORITHMS[section.pop("name")]
    return cls(from_dict(cls.config_class, section, "algorithm"))


def build_optimizer(train, params):
    """AdamW over ``params`` with the config's ``train`` hyper-parameters and a linear warm-up of
    ``train.warmup_steps`` optimiser steps (constant after): one definition for every training loop."""
    params = list(params)
    if not params:
        raise ValueError("the modality has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                                  weight_decay=train.adam_weight_decay, eps=train.adam_epsilon)
    warmup = train.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


def build_ema(train, params):
    """An exponential moving average of ``params`` (diffusers' EMAModel) when ``train.ema_decay`` > 0, else None.

    EMAModel's default schedule min((1 + n) / (10 + n), decay) lets the early average follow the weights closely
    instead of holding on to the initial ones."""
    if not train.ema_decay:
        return None
    from diffusers.training_utils import EMAModel
    return EMAModel(list(params), decay=train.ema_decay)
