"""Reward functions by name. A reward is any callable ``(samples, prompts) -> Tensor[B]``.

Names are looked up in the modality's own rewards first (``adapter.rewards()``), then in
``diffalign.registry.rewards`` (the built-in rewards and every installed package's entry points of group
``diffalign.rewards``: plain callables, and model reward types, served by ``loading.lazy_reward`` so kwargs
such as ``model: PATH_OR_HUB_ID`` go to its loader), then as a reward directory, then as
``package.module:function`` (any importable user callable).
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch

from diffalign import registry
from diffalign.registry import RewardType

RewardFn = Callable[[object, Sequence[str]], torch.Tensor]


class _Rewards(Mapping):
    """name -> reward callable for every name in ``diffalign.registry.rewards`` (a model reward type gives its
    ``lazy_reward``). Read-only and lazy: ``REWARDS[name]`` imports only the module that defines ``name``."""

    def __contains__(self, name) -> bool:
        return name in registry.rewards

    def __getitem__(self, name: str) -> RewardFn:
        obj = registry.rewards[name]
        if isinstance(obj, RewardType):
            from diffalign.rewards.loading import lazy_reward
            return lazy_reward(name)
        return obj

    def __iter__(self) -> Iterator[str]:
        return iter(registry.rewards.names())

    def __len__(self) -> int:
        return len(registry.rewards)


REWARDS: Mapping[str, RewardFn] = _Rewards()


def resolve_reward(name: str, extra: Optional[Mapping[str, RewardFn]] = None) -> RewardFn:
    """The reward called ``name`` (see module doc); ValueError naming it if there is none."""
    if extra and name in extra:
        return extra[name]
    if name in REWARDS:
        return REWARDS[name]
    from diffalign.rewards.loading import is_model_reward, lazy_reward
    if is_model_reward(name):  # a reward directory: loaded on first call
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
    known = sorted(set(REWARDS) | set(extra or {}))
    raise ValueError(f"reward.name {name!r} is unknown; use one of {known} or 'package.module:function'")


def bind_reward_kwargs(fn: RewardFn, name: str, kwargs: Optional[Mapping[str, object]]) -> RewardFn:
    """``fn`` with the config's ``reward.kwargs`` bound (keyword arguments after samples and prompts).

    Checks the names against the function's signature, so a misspelt keyword fails before training, and the
    values with the reward type's own ``check`` where it has one (a wrapper's inner reward names).
    """
    import functools
    import inspect
    if kwargs:
        try:
            inspect.signature(fn).bind(None, None, **kwargs)
        except TypeError as exc:
            raise ValueError(f"reward.kwargs {dict(kwargs)!r} do not fit reward {name!r}: {exc}") from None
        except ValueError:  # no signature (a builtin): let the call decide
            pass
    check = getattr(fn, "check_kwargs", None)
    if check is not None:
        try:
            check(dict(kwargs or {}))
        except ValueError as exc:
            raise ValueError(f"reward {name!r}: {exc}") from None
    return functools.partial(fn, **kwargs) if kwargs else fn


def call_reward(fn: RewardFn, samples, prompts: Sequence[str], device) -> torch.Tensor:
    """Call a reward and check it returned one finite float per sample."""
    r = fn(samples, list(prompts))
    r = torch.as_tensor(r, dtype=torch.float32).to(device)
    if r.shape != (len(prompts),):
        raise ValueError(f"the reward returned shape {tuple(r.shape)}; expected ({len(prompts)},)")
    if not torch.isfinite(r).all():
        raise ValueError(f"the reward returned non-finite values: {r.tolist()}")
    return r
