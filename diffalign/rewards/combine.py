"""Weighted sums of rewards with per-reward normalisation: ``R = sum_i w_i * norm_i(r_i(images, prompts))``.

Normalisation per component (``normalize``), so rewards on different scales (PickScore ~20, HPS ~0.3,
JPEG size in kB) can be mixed with interpretable weights:

- ``none``: ``r``.
- ``fixed``: ``(r - mean) / std`` with the given ``mean`` and ``std`` (e.g. measured on a reference set; ImageReward
  already applies its own published constants).
- ``running``: ``(r - mu) / max(sigma, eps)`` with mu, sigma the mean and (population) std of every score seen so far,
  this batch included (Welford / Chan's parallel update, float64). The first batch is standardised by itself.
  The statistics are detached: gradients flow through ``r`` scaled by ``w / sigma``.
- ``batch``: ``(r - mean(r)) / max(std(r), eps)`` within the batch (gradients flow through the batch statistics).

From a config::

    reward:
      name: weighted_sum
      kwargs:
        components:
          - {name: pickscore, weight: 1.0, normalize: running}
          - {name: aesthetic, weight: 0.5, normalize: fixed, mean: 5.5, std: 0.5, kwargs: {head: /models/aes.pth}}
          - {name: jpeg_compressibility, weight: 0.1}

Each ``name`` is anything ``load_reward`` takes (a registered type, a reward directory, a plain reward name or
``package.module:function``); ``kwargs`` go to it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from diffalign.registry import RewardType
from diffalign.rewards.base import Reward, as_pixels
from diffalign.rewards.loading import load_reward

NORMALIZE_MODES = ("none", "fixed", "running", "batch")


class Normalizer(torch.nn.Module):
    """One component's normalisation (see module doc); running statistics in float64."""

    def __init__(self, mode: str = "none", mean: Optional[float] = None, std: Optional[float] = None,
                 eps: float = 1e-6):
        super().__init__()
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize {mode!r} is unknown; use one of {list(NORMALIZE_MODES)}")
        if mode == "fixed" and (mean is None or std is None or not float(std) > 0):
            raise ValueError(f"normalize 'fixed' needs mean and a positive std, got mean={mean!r} std={std!r}")
        self.mode, self.eps = mode, float(eps)
        self.fixed_mean = float(mean) if mean is not None else 0.0
        self.fixed_std = float(std) if std is not None else 1.0
        # Python floats (float64), not buffers: ``.to(dtype)`` on the sum must not round the statistics
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0  # m2: sum of squared deviations from the mean

    @torch.no_grad()
    def update(self, r: torch.Tensor) -> None:
        x = r.detach().to("cpu", torch.float64).flatten()
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b, m2_b = float(x.mean()), float(((x - x.mean()) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + delta ** 2 * self.count * n_b / n  # Chan et al.'s pairwise combination
        self.mean += delta * n_b / n
        self.count = n

    @property
    def running_std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count > 0 else 1.0

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return r
        if self.mode == "fixed":
            return (r - self.fixed_mean) / self.fixed_std
        if self.mode == "batch":
            return (r - r.mean()) / r.std(unbiased=False).clamp(min=self.eps)
        self.update(r)
        return (r - self.mean) / max(self.running_std, self.eps)


@dataclasses.dataclass
class Component:
    name: str
    weight: float = 1.0
    normalize: str = "none"
    mean: Optional[float] = None
    std: Optional[float] = None
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)


def parse_components(components: Sequence[Mapping[str, Any]]) -> List[Component]:
    """``components`` from a config, checked: ValueError naming the component and the bad key."""
    if not isinstance(components, (list, tuple)) or not components:
        raise ValueError(f"weighted_sum: components must be a non-empty list, got {components!r}")
    fields = {f.name for f in dataclasses.fields(Component)}
    out = []
    for i, c in enumerate(components):
        if not isinstance(c, Mapping) or "name" not in c:
            raise ValueError(f"weighted_sum: components[{i}] must be a mapping with a 'name', got {c!r}")
        unknown = set(c) - fields
        if unknown:
            raise ValueError(f"weighted_sum: components[{i}] ({c['name']}) has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(fields)}")
        out.append(Component(**{**c, "weight": float(c.get("weight", 1.0)), "kwargs": dict(c.get("kwargs") or {})}))
    return out


def _is_sample_list(samples) -> bool:
    """A list of non-image samples (molecules, None for an invalid one): passed to the components as is."""
    return isinstance(samples, (list, tuple)) and not all(hasattr(s, "convert") for s in samples)


def _pixels_or_samples(samples):
    if isinstance(samples, torch.Tensor) or _is_sample_list(samples):
        return samples
    return as_pixels(samples)


class WeightedSum(Reward):
    """``sum_i w_i * norm_i(r_i)``; ``last_components`` holds each component's raw scores of the last call."""

    name = "weighted_sum"

    def __init__(self, rewards: Sequence, weights: Sequence[float], normalizers: Optional[Sequence[Normalizer]] = None,
                 names: Optional[Sequence[str]] = None):
        super().__init__()
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"weighted_sum: {len(rewards)} rewards but {len(weights)} weights")
        self.rewards = list(rewards)
        # registered as submodules where they are modules, so .to() / .eval() reach them
        self.reward_modules = torch.nn.ModuleList([r for r in rewards if isinstance(r, torch.nn.Module)])
        self.weights = [float(w) for w in weights]
        self.normalizers = torch.nn.ModuleList(normalizers or [Normalizer() for _ in rewards])
        self.names = list(names or [getattr(r, "name", getattr(r, "__name__", f"r{i}")) for i, r in enumerate(rewards)])
        self.differentiable = all(getattr(r, "differentiable", False) for r in rewards)
        self.last_components: Dict[str, torch.Tensor] = {}

    def forward(self, images, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        pixels = _pixels_or_samples(images)
        n = len(pixels) if _is_sample_list(images) else (
            sum(p.shape[0] for p in pixels) if isinstance(pixels, list) else pixels.shape[0])
        prompts = [""] * n if prompts is None else list(prompts)
        total, self.last_components = None, {}
        for name, r, w, norm in zip(self.names, self.rewards, self.weights, self.normalizers):
            raw = torch.as_tensor(r(images if isinstance(r, Reward) else pixels, prompts)).float()
            if raw.shape != (n,):
                raise ValueError(f"weighted_sum: component {name!r} returned shape {tuple(raw.shape)}, expected ({n},)")
            self.last_components[name] = raw.detach()
            term = w * norm(raw)
            total = term if total is None else total + term.to(total.device)
        return total


def load_weighted_sum(directory: Optional[str], device=None, dtype=None,
                      components: Sequence[Mapping[str, Any]] = ()) -> WeightedSum:
    """A ``WeightedSum`` of ``components`` (see module doc), each loaded with ``load_reward`` on ``device``."""
    comps = parse_components(components)
    rewards, names, norms = [], [], []
    for i, c in enumerate(comps):
        rewards.append(load_reward(c.name, device=device, dtype=dtype, **c.kwargs))
        names.append(c.name if c.name not in names else f"{c.name}_{i}")
        norms.append(Normalizer(c.normalize, c.mean, c.std))
    return WeightedSum(rewards, [c.weight for c in comps], norms, names)


def check_weighted_sum(kwargs: Mapping[str, Any]) -> None:
    """Config validation of ``weighted_sum``'s kwargs (loads nothing): every component parses, names a reward
    that exists and takes its kwargs."""
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    for i, c in enumerate(parse_components(kwargs.get("components", ()))):
        try:
            bind_reward_kwargs(resolve_reward(c.name), c.name, c.kwargs)
        except ValueError as exc:
            raise ValueError(f"weighted_sum: components[{i}]: {exc}") from None


WEIGHTED_SUM = RewardType(load_weighted_sum, check=check_weighted_sum)  # registered as 'weighted_sum' in diffalign.registry.BUILTIN_REWARDS
