"""Paired before/after statistics against independent references: scipy's exact binomial test and Wilson
interval, and the paired-difference interval computed in float64 numpy from the per-sample differences."""
import numpy as np
import pytest
from scipy import stats

from diffalign.eval.paired import Z95, mcnemar_exact_p, paired_change, wilson_interval


@pytest.mark.parametrize("fixed,broken", [(0, 0), (5, 0), (0, 5), (11, 6), (30, 12), (3, 3), (1, 40)])
def test_mcnemar_matches_scipy_two_sided_binomial(fixed, broken):
    expected = 1.0 if fixed + broken == 0 else stats.binomtest(fixed, fixed + broken, 0.5).pvalue
    assert mcnemar_exact_p(fixed, broken) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 17), (48, 96), (90, 96)])
def test_wilson_interval_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_paired_change_against_float64_reference():
    rng = np.random.default_rng(0)
    before = rng.random(288) < 0.3
    after = np.where(rng.random(288) < 0.25, ~before, before) | (rng.random(288) < 0.1)
    out = paired_change(before.tolist(), after.tolist())
    d = after.astype(np.float64) - before.astype(np.float64)
    half = Z95 * d.std() / np.sqrt(d.size)  # numpy's std divides by n, as the module's does
    assert out["delta"] == pytest.approx(d.mean(), abs=1e-15)
    assert out["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-12)
    assert out["fixed"] == int(((~before) & after).sum()) and out["broken"] == int((before & ~after).sum())
    assert out["before"] == pytest.approx(before.mean()) and out["after"] == pytest.approx(after.mean())
    assert out["mcnemar_p"] == pytest.approx(stats.binomtest(out["fixed"], out["fixed"] + out["broken"]).pvalue)
    assert out["before_ci95"][0] < out["before"] < out["before_ci95"][1]


def test_paired_change_without_changes_and_bad_input():
    same = [True, False, True]
    out = paired_change(same, same)
    assert out["delta"] == 0 and out["ci95"] == [0.0, 0.0] and out["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="3 'before' outcomes but 2"):
        paired_change(same, same[:2])
    with pytest.raises(ValueError, match="no samples"):
        paired_change([], [])
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact_p(-1, 2)
