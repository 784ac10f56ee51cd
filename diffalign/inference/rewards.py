"""Rewards for inference-time methods: one callable from a name, a callable, or several weighted.

A reward is ``(decoded, prompts) -> Tensor[B]`` as everywhere in diffalign. Best-of-N and rejection
sampling only rank samples, so any reward works; noise optimisation needs one that is differentiable
in the decoded samples (those in ``diffalign.rewards`` that detach, such as the colour rewards, are
not; pass ``differentiable=True`` to :func:`make_reward` to have that checked up front where a reward
declares it).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

__all__ = ["make_reward", "WeightedReward", "RewardSpec"]

RewardFn = Callable[[Any, Sequence[str]], torch.Tensor]
RewardSpec = Union[str, RewardFn, Mapping[str, Any], Sequence[Any]]


class WeightedReward:
    """sum_k w_k r_k(samples, prompts): several rewards ranked as one (no normalisation here; the
    rewards package's weighted sum adds per-reward normalisation where it is installed)."""

    def __init__(self, rewards: Sequence[RewardFn], weights: Sequence[float]):
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"a weighted reward needs as many weights as rewards (>= 1), got {len(weights)} "
                             f"weights for {len(rewards)} rewards")
        self.rewards, self.weights = list(rewards), [float(w) for w in weights]
        self.differentiable = all(getattr(r, "differentiable", False) for r in self.rewards)

    def __call__(self, samples, prompts):
        total = None
        for fn, w in zip(self.rewards, self.weights):
            r = torch.as_tensor(fn(samples, list(prompts))).float()
            total = w * r if total is None else total + w * r.to(total.device)
        return total


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
    package's, e.g. ``shapes_surrogate``, then the registry's), a
    callable, a mapping ``{name, kwargs}``, or a list of those (mappings may carry ``weight``,
    default 1) combined as a weighted sum."""
    from diffalign.inference.surrogates import INFERENCE_REWARDS
    extra = dict(INFERENCE_REWARDS)
    if adapter is not None:
        extra.update(adapter.rewards())
    if isinstance(spec, (list, tuple)):
        parts = [_one(s, extra) for s in spec]
        weights = [float(s.get("weight", 1.0)) if isinstance(s, Mapping) else 1.0 for s in spec]
        fn: RewardFn = WeightedReward(parts, weights)
    else:
        fn = _one(spec, extra)
    if differentiable and getattr(fn, "differentiable", None) is False:
        raise ValueError(f"reward {spec!r} declares differentiable=False; noise optimisation needs a reward "
                         "differentiable in the decoded samples")
    return fn
