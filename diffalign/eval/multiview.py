"""Multi-view accuracy of a 3D result, and paired tests of two methods over views and over runs.

A 3D result satisfies its prompt from one side and not from another (the "Janus" failure), so one render
says little. :func:`multiview_accuracy` renders are judged one by one: the accuracy is the fraction of
evaluation views (at least :data:`MIN_VIEWS`, evenly spaced all around the object) whose render
satisfies the prompt under the compositional reward's checks (every check holds:
:attr:`diffalign.rewards.checks.CheckedSample.correct`, GenEval's per-image accuracy), with Wilson's
interval over views (:func:`diffalign.eval.paired.wilson_interval`).

Two methods run from the same seed and judged on the same views are compared per view by
:func:`paired_views` (McNemar's exact test and the paired interval of :func:`diffalign.eval.paired.paired_change`).
Across runs (prompts x seeds) :func:`paired_runs` takes each run's per-view outcomes of both methods:
the mean over runs of the accuracy change, its t interval (n - 1 degrees of freedom), and an exact
sign-flip permutation test (under "no difference" each run's change is as likely negative as positive:
the two-sided p is the fraction of the 2^n sign patterns whose mean change is at least as large in
magnitude as the observed one), which assumes nothing about the changes' distribution; the views of all
runs pooled go to McNemar's test as well.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from diffalign.eval.paired import Z95, paired_change, wilson_interval

MIN_VIEWS = 16
EXACT_RUNS = 16  # up to this many runs the sign-flip test enumerates all 2^n patterns; beyond, 2^16 random ones

Checker = Callable[[Any, Sequence[str]], Sequence[Any]]  # (images, prompts) -> CheckedSample per image


def evaluation_azimuths(n: int = MIN_VIEWS) -> List[float]:
    """``n`` >= MIN_VIEWS azimuths in degrees, evenly spaced all around: 0, 360/n, ..."""
    if n < MIN_VIEWS:
        raise ValueError(f"multi-view evaluation needs at least {MIN_VIEWS} views all around, got {n}")
    return [360.0 * i / n for i in range(n)]


def check_all_around(azimuths: Sequence[float], tol: float = 1e-3) -> None:
    """ValueError unless the azimuths (degrees) are >= MIN_VIEWS views evenly spaced over the full circle."""
    n = len(azimuths)
    if n < MIN_VIEWS:
        raise ValueError(f"multi-view evaluation needs at least {MIN_VIEWS} views all around, got {n}")
    a = sorted(float(x) % 360.0 for x in azimuths)
    gaps = [b - x for x, b in zip(a, a[1:])] + [a[0] + 360.0 - a[-1]]
    if max(abs(g - 360.0 / n) for g in gaps) > tol:
        raise ValueError(f"evaluation azimuths must be evenly spaced all around ({360.0 / n:g} degrees apart), got "
                         f"gaps from {min(gaps):g} to {max(gaps):g} degrees")


def _checker(reward: Union[str, Checker]) -> Checker:
    if callable(reward):
        return reward
    if reward == "compositional":
        from diffalign.rewards.compositional import score_batch
        return score_batch
    raise ValueError(f"multiview_accuracy: reward must be 'compositional' or a callable (images, prompts) -> "
                     f"checked samples, got {reward!r}")


def multiview_accuracy(views, prompts: Union[str, Sequence[str]], reward: Union[str, Checker] = "compositional",
                       azimuths: Optional[Sequence[float]] = None, z: float = Z95) -> Dict[str, Any]:
    """The fraction of ``views`` (N renders of one object: float (N, 3, H, W) in [0, 1] or uint8 (N, H, W, 3))
    that satisfy ``prompts`` (one caption, or one per view) under ``reward``'s checks.

    ``azimuths`` (degrees, one per view) are checked to be evenly spaced all around; N >= MIN_VIEWS always.
    Returns ``accuracy``, ``ci95`` (Wilson, over views), ``n_views``, ``correct`` (per view), ``reward`` (the
    mean fraction of checks met) and ``rewards`` (per view)."""
    n = len(views)
    if n < MIN_VIEWS:
        raise ValueError(f"multi-view evaluation needs at least {MIN_VIEWS} views all around, got {n}")
    if azimuths is not None:
        if len(azimuths) != n:
            raise ValueError(f"multiview_accuracy: {n} views but {len(azimuths)} azimuths")
        check_all_around(azimuths)
    texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(texts) != n:
        raise ValueError(f"multiview_accuracy: {n} views but {len(texts)} prompts")
    results = list(_checker(reward)(views, texts))
    if len(results) != n:
        raise ValueError(f"multiview_accuracy: the reward judged {len(results)} of {n} views")
    correct = [bool(r.correct) for r in results]
    rewards = [float(r.reward) for r in results]
    k = sum(correct)
    return {"accuracy": k / n, "ci95": list(wilson_interval(k, n, z)), "n_views": n, "correct": correct,
            "reward": float(np.mean(rewards)), "rewards": rewards}


def paired_views(before: Sequence[bool], after: Sequence[bool], z: float = Z95) -> Dict[str, Any]:
    """Two methods' per-view outcomes on the same views: :func:`diffalign.eval.paired.paired_change`."""
    return paired_change(before, after, z)


def sign_flip_p(deltas: Sequence[float], seed: int = 0) -> float:
    """Two-sided p of the sign-flip permutation test of mean(deltas) = 0 (exact up to EXACT_RUNS values)."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign_flip_p: no runs")
    observed = abs(d.mean())
    if d.size <= EXACT_RUNS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(1 << 16, d.size))
    means = np.abs(signs @ d) / d.size
    return float(np.mean(means >= observed - 1e-12))


def paired_runs(before: Sequence[Sequence[bool]], after: Sequence[Sequence[bool]], z: float = Z95) -> Dict[str, Any]:
    """Runs (e.g. prompts x seeds) of two methods, each run judged on the same views by both.

    Returns ``runs``, per-run ``before_accuracy`` / ``after_accuracy`` / ``deltas``, ``mean_before``,
    ``mean_after``, ``mean_delta`` with ``ci95`` (t interval over runs; [delta, delta] for one run),
    ``sign_flip_p`` and ``views`` (McNemar over every view of every run, :func:`paired_views`)."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired_runs: need the same number (>= 1) of runs per method, got {len(before)} and "
                         f"{len(after)}")
    for i, (b, a) in enumerate(zip(before, after)):
        if len(b) != len(a) or not b:
            raise ValueError(f"paired_runs: run {i} has {len(b)} views before and {len(a)} after")
    acc_b = [float(np.mean(b)) for b in before]
    acc_a = [float(np.mean(a)) for a in after]
    deltas = [a - b for a, b in zip(acc_a, acc_b)]
    n = len(deltas)
    mean = float(np.mean(deltas))
    if n > 1:
        from scipy.stats import t as student_t
        q = float(student_t.ppf(1 - (1 - math.erf(z / math.sqrt(2))) / 2, n - 1))
        half = q * float(np.std(deltas, ddof=1)) / math.sqrt(n)
    else:
        half = 0.0
    pooled = paired_views([v for b in before for v in b], [v for a in after for v in a], z)
    return {"runs": n, "before_accuracy": acc_b, "after_accuracy": acc_a, "deltas": deltas,
            "mean_before": float(np.mean(acc_b)), "mean_after": float(np.mean(acc_a)), "mean_delta": mean,
            "ci95": [mean - half, mean + half], "sign_flip_p": sign_flip_p(deltas), "views": pooled}


__all__ = ["MIN_VIEWS", "evaluation_azimuths", "check_all_around", "multiview_accuracy", "paired_views",
           "sign_flip_p", "paired_runs"]
