"""AlignDiff's preference-matching metrics: how far achieved attribute strengths are from requested ones.

Strengths live in [0, 1] (AlignDiff's normalised attribute strengths). ``requested`` and ``achieved`` are
(N, A) tensors; a NaN in ``requested`` means that attribute was not requested for that sample (AlignDiff
masks the attributes a user leaves unspecified) and is ignored.

- :func:`attribute_mae`: mean over samples of the mean |achieved - requested| over the requested attributes
  (the per-plan error of AlignDiff's evaluation, github.com/ZibinDong/AlignDiff-ICLR2024 eval.py: the
  mask-weighted mean of |normalised strength - target|);
- :func:`match_rate`: the fraction of samples whose every requested attribute lies within ``tolerance`` (the
  issue's "match within a tolerance"; AlignDiff itself plots the fraction of plans under each MAE level).
"""
from __future__ import annotations

from typing import Any, Dict

import torch


def _check(requested: Any, achieved: Any):
    r = torch.as_tensor(requested, dtype=torch.float64)
    a = torch.as_tensor(achieved, dtype=torch.float64)
    if r.ndim == 1:
        r, a = r[:, None], a[:, None] if a.ndim == 1 else a
    if r.shape != a.shape or r.ndim != 2:
        raise ValueError(f"requested and achieved strengths must both be (N, A), got {tuple(r.shape)} and "
                         f"{tuple(a.shape)}")
    if torch.isnan(a[~torch.isnan(r)]).any():
        raise ValueError("achieved strengths hold NaN where a strength was requested")
    asked = ~torch.isnan(r)
    keep = asked.any(dim=1)
    if not keep.any():
        raise ValueError("no sample requests any attribute (requested is all NaN)")
    return r[keep], a[keep], asked[keep]


def per_sample_error(requested: Any, achieved: Any) -> torch.Tensor:
    """(N',) mean |achieved - requested| over each sample's requested attributes (samples requesting none dropped)."""
    r, a, asked = _check(requested, achieved)
    err = torch.where(asked, (a - torch.nan_to_num(r)).abs(), torch.zeros_like(a))
    return err.sum(dim=1) / asked.sum(dim=1)


def attribute_mae(requested: Any, achieved: Any) -> float:
    """Mean absolute error between requested and achieved strengths (module docstring)."""
    return float(per_sample_error(requested, achieved).mean())


def match_rate(requested: Any, achieved: Any, tolerance: float = 0.1) -> float:
    """Fraction of samples with |achieved - requested| <= tolerance on every requested attribute."""
    if not tolerance >= 0:
        raise ValueError(f"match tolerance must be >= 0, got {tolerance!r}")
    r, a, asked = _check(requested, achieved)
    within = ((a - torch.nan_to_num(r)).abs() <= tolerance) | ~asked
    return float(within.all(dim=1).double().mean())


def matching_metrics(requested: Any, achieved: Any, tolerance: float = 0.1) -> Dict[str, float]:
    """``{"attribute_mae", "match_rate", "tolerance", "n"}``: what the planning demo reports before and after."""
    return {"attribute_mae": attribute_mae(requested, achieved),
            "match_rate": match_rate(requested, achieved, tolerance),
            "tolerance": float(tolerance), "n": int(per_sample_error(requested, achieved).numel())}
