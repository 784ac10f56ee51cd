"""Reward functions by name. A reward is any callable ``(samples, prompts) -> Tensor[B]``.

Names are looked up in the modality's own rewards first (``adapter.rewards()``), then in the
generic ones below, then as a model reward type or reward directory (``loading.load_reward``; kwargs
such as ``model: PATH_OR_HUB_ID`` go to its loader), then as ``package.module:function`` (any importable
user callable).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

from diffalign.rewards.color import brightness, color_target
from diffalign.rewards.compositional import compositional_reward
from diffalign.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility

RewardFn = Callable[[object, Sequence[str]], torch.Tensor]

REWARDS: Dict[str, RewardFn] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
    "brightness": brightness,
    "color_target": color_target,
    "compositional": compositional_reward,  # the shapes demo's GenEval-style reward (not differentiable)
}


def resolve_reward(name: str, extra: Optional[Mapping[str, RewardFn]] = None) -> RewardFn:
    """The reward called ``name`` (see module doc); ValueError naming it if there is none."""
    if extra and name in extra:
        return extra[name]
    if name in REWARDS:
        return REWARDS[name]
    from diffalign.rewards.loading import is_model_reward, lazy_reward
    if is_model_reward(name):  # a registered reward type or a reward directory: loaded on first call
        return lazy_reward(name)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward.name {name!r}: cannot import it ({exc})") from None
        if not callable(fn):
            raise ValueError(f"reward.name {name!r} is not callable")
        return fn
    from diffalign.rewards.loading import REWARD_TYPES
    known = sorted(set(REWARDS) | set(extra or {}) | set(REWARD_TYPES))
    raise ValueError(f"reward.name {name!r} is unknown; use one of {known} or 'package.module:function'")


def bind_reward_kwargs(fn: RewardFn, name: str, kwargs: Optional[Mapping[str, object]]) -> RewardFn:
    """``fn`` with the config's ``reward.kwargs`` bound (keyword arguments after samples and prompts).

    Checks the names against the function's signature, so a misspelt keyword fails before training.
    """
    if not kwargs:
        return fn
    import functools
    import inspect
    try:
        inspect.signature(fn).bind(None, None, **kwargs)
    except TypeError as exc:
        raise ValueError(f"reward.kwargs {dict(kwargs)!r} do not fit reward {name!r}: {exc}") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    return functools.partial(fn, **kwargs)


def call_reward(fn: RewardFn, samples, prompts: Sequence[str], device) -> torch.Tensor:
    """Call a reward and check it returned one finite float per sample."""
    r = fn(samples, list(prompts))
    r = torch.as_tensor(r, dtype=torch.float32).to(device)
    if r.shape != (len(prompts),):
        raise ValueError(f"the reward returned shape {tuple(r.shape)}; expected ({len(prompts)},)")
    if not torch.isfinite(r).all():
        raise ValueError(f"the reward returned non-finite values: {r.tolist()}")
    return r
