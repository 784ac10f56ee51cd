"""Rewards for inference-time methods: one callable from a name, a callable, or several weighted
(``diffalign.rewards.combine.WeightedSum``).

A reward is ``(decoded, prompts) -> Tensor[B]`` as everywhere in diffalign. Best-of-N and rejection
sampling only rank samples, so any reward works; noise optimisation needs one that is differentiable
in the decoded samples (those in ``diffalign.rewards`` that detach, such as the colour rewards, are
not; pass ``differentiable=True`` to :func:`make_reward` to have that checked up front where a reward
declares it).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

__all__ = ["make_reward", "RewardSpec"]

RewardFn = Callable[[Any, Sequence[str]], torch.Tensor]
RewardSpec = Union[str, RewardFn, Mapping[str, Any], Sequence[Any]]


def _one(spec, extra: Optional[Mapping[str, RewardFn]]) -> RewardFn:
    from diffalign.rewards import bind_reward_kwargs, resolve_reward
    if callable(spec):
        return spec
    if isinstance(spec, str):
        return resolve_reward(spec, extra)
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"a reward mapping needs a 'name' key, got {dict(spec)!r}")
        fn = resolve_reward(spec["name"], extra)
        return bind_reward_kwargs(fn, spec["name"], spec.get("kwargs"))
    raise ValueError(f"a reward must be a name, a callable or a mapping {{name, kwargs, weight}}, got {spec!r}")


def make_reward(spec: RewardSpec, adapter=None, differentiable: bool = False) -> RewardFn:
    """One reward callable from ``spec``: a registered name (the adapter's own rewards first, then this
    package's, e.g. ``shapes_surrogate``, then the registry's), a callable, a mapping ``{name, kwargs}``,
    or a list of those combined by the rewards package's weighted sum (mappings may carry ``weight``,
    default 1, and ``normalize`` "none" | "fixed" with ``mean``/``std``). Ranking methods (best-of-N,
    rejection, prompt_opt) compare scores across batches, so give them "none" or "fixed": "running"
    and "batch" statistics differ from batch to batch."""
    from diffalign.inference.surrogates import INFERENCE_REWARDS
    extra = dict(INFERENCE_REWARDS)
    if adapter is not None:
        extra.update(adapter.rewards())
    if isinstance(spec, (list, tuple)):
        from diffalign.rewards.combine import Normalizer, WeightedSum
        parts = [_one(s, extra) for s in spec]
        maps = [s if isinstance(s, Mapping) else {} for s in spec]
        norms = [Normalizer(m.get("normalize", "none"), m.get("mean"), m.get("std")) for m in maps]
        names = [m.get("name", getattr(p, "__name__", f"r{i}")) for i, (m, p) in enumerate(zip(maps, parts))]
        fn: RewardFn = WeightedSum(parts, [float(m.get("weight", 1.0)) for m in maps], norms, names)
    else:
        fn = _one(spec, extra)
    if differentiable and getattr(fn, "differentiable", None) is False:
        raise ValueError(f"reward {spec!r} declares differentiable=False; noise optimisation needs a reward "
                         "differentiable in the decoded samples")
    return fn
