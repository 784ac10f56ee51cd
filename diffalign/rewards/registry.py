"""Reward functions by name. A reward is any callable ``(samples, prompts) -> Tensor[B]``.

Names are looked up in the modality's own rewards first (``adapter.rewards()``), then in the
generic ones below, then as ``package.module:function`` (any importable user callable).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

from diffalign.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility

RewardFn = Callable[[object, Sequence[str]], torch.Tensor]

REWARDS: Dict[str, RewardFn] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
}


def resolve_reward(name: str, extra: Optional[Mapping[str, RewardFn]] = None) -> RewardFn:
    """The reward called ``name`` (see module doc); ValueError naming it if there is none."""
    if extra and name in extra:
        return extra[name]
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward.name {name!r}: cannot import it ({exc})") from None
        if not callable(fn):
            raise ValueError(f"reward.name {name!r} is not callable")
        return fn
    known = sorted(set(REWARDS) | set(extra or {}))
    raise ValueError(f"reward.name {name!r} is unknown; use one of {known} or 'package.module:function'")


def call_reward(fn: RewardFn, samples, prompts: Sequence[str], device) -> torch.Tensor:
    """Call a reward and check it returned one finite float per sample."""
    r = fn(samples, list(prompts))
    r = torch.as_tensor(r, dtype=torch.float32).to(device)
    if r.shape != (len(prompts),):
        raise ValueError(f"the reward returned shape {tuple(r.shape)}; expected ({len(prompts)},)")
    if not torch.isfinite(r).all():
        raise ValueError(f"the reward returned non-finite values: {r.tolist()}")
    return r
