"""Paired before/after comparison of per-sample pass/fail outcomes (the same prompts and seeds judged twice).

Used for the demo's headline: did alignment change held-out accuracy beyond what sampling noise explains?

- McNemar's exact test: only the discordant samples carry information; under "no change" the n_fixed samples
  that went fail -> pass and the n_broken that went pass -> fail are a Binomial(n_fixed + n_broken, 1/2)
  split. The two-sided p-value is min(1, 2 P(X <= min(n_fixed, n_broken))).
- The 95% confidence interval of the accuracy change d = after - before: the mean of the per-sample
  differences d_i in {-1, 0, 1} plus or minus z * sd(d_i) / sqrt(n), sd with divisor n (the Wald interval for
  paired proportions). Kinds with equal sample counts make the plain mean the kinds' mean, as the demo's
  evaluation does.
- Each accuracy's own interval is Wilson's score interval, which stays inside [0, 1] at small n.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def mcnemar_exact_p(n_fixed: int, n_broken: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when nothing changed)."""
    if n_fixed < 0 or n_broken < 0:
        raise ValueError(f"discordant counts must be >= 0, got {n_fixed} and {n_broken}")
    n = n_fixed + n_broken
    if n == 0:
        return 1.0
    k = min(n_fixed, n_broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple:
    """Wilson's score interval of a proportion (``(0, 1)`` when n = 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_change(before: Sequence[bool], after: Sequence[bool], z: float = Z95) -> Dict[str, float]:
    """Accuracy before and after, their change with its confidence interval, and McNemar's exact test.

    ``before[i]`` and ``after[i]`` judge the same sample (prompt and seed). Returns ``n``, ``before``, ``after``,
    ``delta``, ``ci95`` ([low, high] of delta), ``before_ci95``, ``after_ci95`` (Wilson), ``fixed`` (fail ->
    pass), ``broken`` (pass -> fail) and ``mcnemar_p``."""
    if len(before) != len(after):
        raise ValueError(f"paired_change: {len(before)} 'before' outcomes but {len(after)} 'after' outcomes")
    n = len(before)
    if n == 0:
        raise ValueError("paired_change: no samples")
    b = [bool(v) for v in before]
    a = [bool(v) for v in after]
    fixed = sum(1 for x, y in zip(b, a) if not x and y)
    broken = sum(1 for x, y in zip(b, a) if x and not y)
    delta = (fixed - broken) / n
    var = ((fixed + broken) / n - delta * delta) / n  # of the mean of d_i, divisor n
    half = z * math.sqrt(max(var, 0.0))
    return {"n": n, "before": sum(b) / n, "after": sum(a) / n, "delta": delta, "ci95": [delta - half, delta + half],
            "before_ci95": list(wilson_interval(sum(b), n, z)), "after_ci95": list(wilson_interval(sum(a), n, z)),
            "fixed": fixed, "broken": broken, "mcnemar_p": mcnemar_exact_p(fixed, broken)}
