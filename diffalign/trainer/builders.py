"""From a validated config to live objects: the modality adapter, step rule, policy, algorithm, reward.

Each modality registers here its options dataclass (checked before any compute) and a builder.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List

import torch

from diffalign.algorithms import ALGORITHMS, Algorithm
from diffalign.mdp import DiffusionPolicy, make_step_rule


@dataclasses.dataclass
class ToyOptions:
    dim: int = 2
    hidden: int = 64
    scheduler: str = "ddim"      # "ddim" | "ddpm" | "flow"
    init_seed: int = 0
    pretrain_steps: int = 200    # fit the base model to N(0, I) first (a stand-in for pretraining)

    def __post_init__(self):
        from diffalign.modalities.toy.adapter import SCHEDULERS
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"config key 'modality.options.scheduler' must be one of {SCHEDULERS}, "
                             f"got {self.scheduler!r}")
        if self.dim < 1 or self.hidden < 1:
            raise ValueError(f"config keys 'modality.options.dim'/'hidden' must be >= 1, got {self.dim}/{self.hidden}")


def _build_toy(options: ToyOptions, prompts: List[str], device: torch.device):
    from diffalign.modalities.toy import ToyAdapter
    return ToyAdapter(prompts, dim=options.dim, hidden=options.hidden, scheduler=options.scheduler,
                      init_seed=options.init_seed, device=device, pretrain_steps=options.pretrain_steps)


def _image_options():
    from diffalign.modalities.image.options import ImageOptions
    return ImageOptions


def _build_image(options, prompts, device):
    from diffalign.modalities.image import ImageAdapter
    return ImageAdapter.from_options(options, device=device)


def _toy_rewards():
    from diffalign.modalities.toy.rewards import TOY_REWARDS
    return TOY_REWARDS


def _image_rewards():
    from diffalign.rewards import REWARDS
    return REWARDS


@dataclasses.dataclass
class ModalityEntry:
    options: Callable[[], type]
    build: Callable[[Any, List[str], torch.device], Any]
    # the modality's rewards by name, known without building it (what its adapter's rewards() returns),
    # so the config check can resolve reward.name and reward.kwargs before any model is loaded
    rewards: Callable[[], Dict[str, Any]] = dict

    def validate_options(self, options: Dict[str, Any]):
        from diffalign.config import from_dict
        return from_dict(self.options(), options, "modality.options")


MODALITIES: Dict[str, ModalityEntry] = {
    "toy": ModalityEntry(lambda: ToyOptions, _build_toy, _toy_rewards),
    "image": ModalityEntry(_image_options, _build_image, _image_rewards),
}


def build_adapter(cfg, prompts: List[str], device: torch.device):
    entry = MODALITIES[cfg.modality.name]
    return entry.build(entry.validate_options(cfg.modality.options), prompts, device)


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
