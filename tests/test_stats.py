"""orchestrator.analysis.stats against scipy on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from orchestrator.analysis import stats


def scipy_t_ci(x, confidence=0.95):
    x = np.asarray(x, float)
    return sps.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sps.sem(x))


def scipy_boot(x, confidence=0.95):
    res = sps.bootstrap((np.asarray(x, float),), np.mean, confidence_level=confidence,
                        n_resamples=stats.N_RESAMPLES, method="BCa",
                        rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    return res.confidence_interval.low, res.confidence_interval.high


def test_finite_drops_nan_and_inf():
    assert stats.finite([1.0, np.nan, 2.0, np.inf, -np.inf]).tolist() == [1.0, 2.0]
    assert stats.finite(np.array([])).size == 0


def test_describe_matches_scipy():
    x = np.array([14.2, 15.1, 13.8, 14.9, 15.6])
    d = stats.describe(x)
    assert d["n_seeds"] == 5
    assert d["mean"] == pytest.approx(x.mean())
    assert d["std"] == pytest.approx(np.std(x, ddof=1))
    assert d["sem"] == pytest.approx(sps.sem(x))
    low, high = scipy_t_ci(x)
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    blow, bhigh = scipy_boot(x)
    assert (d["boot_low"], d["boot_high"]) == (pytest.approx(blow), pytest.approx(bhigh))
    assert d["note"] == ""


def test_known_t_interval_by_hand():
    # mean 2, std 1, n 3: half width = t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051
    low, high = stats.t_interval([1.0, 2.0, 3.0])
    assert high - 2.0 == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert low == pytest.approx(4.0 - high)


def test_n1_and_n0_give_no_ci_and_say_so():
    d = stats.describe([7.5])
    assert d["n_seeds"] == 1 and d["mean"] == 7.5
    for k in ("std", "sem", "ci_low", "ci_high", "boot_low", "boot_high"):
        assert math.isnan(d[k])
    assert "n=1" in d["note"] and "no CI" in d["note"]
    d0 = stats.describe([np.nan])
    assert d0["n_seeds"] == 0 and math.isnan(d0["mean"]) and "no completed" in d0["note"]


def test_nan_never_leaks_into_describe():
    d = stats.describe([1.0, np.nan, 3.0, np.inf, 2.0])
    assert d["n_seeds"] == 3 and d["mean"] == 2.0
    assert np.isfinite([d["ci_low"], d["ci_high"], d["boot_low"], d["boot_high"]]).all()


def test_bootstrap_degenerate_and_tiny():
    assert stats.bootstrap_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert all(math.isnan(v) for v in stats.bootstrap_interval([3.0]))
    low, high = stats.bootstrap_interval([1.0, 2.0])
    assert 1.0 <= low <= high <= 2.0


def test_t_interval_from_moments_vectorised():
    groups = [np.array([1.0, 2.0, 4.0]), np.array([5.0, 5.5]), np.array([9.0])]
    mean = np.array([g.mean() for g in groups])
    std = np.array([g.std(ddof=1) if g.size > 1 else np.nan for g in groups])
    n = np.array([g.size for g in groups])
    sem, low, high = stats.t_interval_from_moments(mean, std, n)
    for i in range(2):
        lo, hi = scipy_t_ci(groups[i])
        assert sem[i] == pytest.approx(sps.sem(groups[i]))
        assert (low[i], high[i]) == (pytest.approx(lo), pytest.approx(hi))
    assert np.isnan([sem[2], low[2], high[2]]).all()


def test_paired_comparison_matches_scipy():
    y = np.array([20.0, 21.0, 19.5, 20.4, 20.8])
    x = np.array([37.1, 40.2, 36.0, 39.9, 38.2])
    c = stats.paired_comparison(x, y)
    diff = x - y
    assert c["n_paired"] == 5
    assert c["mean_diff"] == pytest.approx(diff.mean())
    assert c["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert c["p_ttest"] == pytest.approx(sps.ttest_rel(x, y).pvalue)
    assert c["p_wilcoxon"] == pytest.approx(sps.wilcoxon(x, y).pvalue)
    ratio = x / y
    assert c["ratio_mean"] == pytest.approx(ratio.mean())
    lo, hi = scipy_t_ci(ratio)
    assert (c["ratio_ci_low"], c["ratio_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert c["note"] == ""


def test_paired_edge_cases():
    one = stats.paired_comparison([2.0], [1.0])
    assert one["n_paired"] == 1 and one["ratio_mean"] == 2.0 and one["mean_diff"] == 1.0
    assert math.isnan(one["p_ttest"]) and math.isnan(one["p_wilcoxon"]) and math.isnan(one["ratio_ci_low"])
    assert "no tests" in one["note"]
    none = stats.paired_comparison([], [])
    assert none["n_paired"] == 0 and math.isnan(none["ratio_mean"]) and none["note"] == "no paired seeds"
    same = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(same["p_wilcoxon"]) and math.isnan(same["p_ttest"]) and math.isnan(same["d_z"])
    assert "all differences zero" in same["note"] and "zero variance" in same["note"]
    shifted = stats.paired_comparison([2.0, 3.0, 5.0], [1.0, 2.0, 4.0])
    assert math.isnan(shifted["p_ttest"]) and shifted["p_wilcoxon"] == pytest.approx(
        sps.wilcoxon([1.0, 1.0, 1.0]).pvalue)
    with_nan = stats.paired_comparison([2.0, np.nan, 4.0, 5.0], [1.0, 1.0, np.inf, 1.5])
    assert with_nan["n_paired"] == 2 and with_nan["mean_diff"] == pytest.approx((1.0 + 3.5) / 2)


def test_pair_uses_common_seeds_only():
    x, y, seeds = stats.pair({1: 10.0, 2: 11.0, 3: 12.0, 4: np.nan}, {1: 5.0, 3: 6.0, 4: 7.0, 5: 8.0})
    assert seeds == [1, 3] and x.tolist() == [10.0, 12.0] and y.tolist() == [5.0, 6.0]


def test_holm_hand_computed():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone max 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert stats.holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.04]) == pytest.approx([0.04])
    out = stats.holm([0.01, np.nan, 0.02])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])
    assert stats.holm([]).size == 0 and np.isnan(stats.holm([np.nan])).all()


def holm_reference(p):
    """Holm's step-down written as a plain loop over the sorted p-values."""
    p = np.asarray(p, float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_properties(ps):
    adjusted = stats.holm(ps)
    p = np.asarray(ps)
    assert np.all(adjusted >= p - 1e-12) and np.all(adjusted <= 1.0)
    assert adjusted == pytest.approx(holm_reference(ps))
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-12)


@pytest.mark.parametrize("d, n", [(1.0, 10), (0.5, 34), (0.2, 199)])
def test_seeds_needed_matches_published_paired_t_sample_sizes(d, n):
    """G*Power's a-priori sizes for a two-sided paired t-test, alpha 0.05, power 0.8."""
    assert stats.seeds_needed(std=0.02 / d, effect=0.02) == n
    assert stats.paired_t_power(n, d) >= 0.8 > stats.paired_t_power(n - 1, d)


def test_seeds_needed_reaches_the_power_in_simulation():
    """Simulated paired t-tests at the returned n reject about 80% of the time."""
    rng = np.random.default_rng(5)
    sd = 0.03
    n = int(stats.seeds_needed(sd, effect=0.02))
    diffs = rng.normal(0.02, sd, size=(20_000, n))
    p = sps.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert abs((p < 0.05).mean() - 0.8) < 0.02
    assert stats.paired_t_power(n, 0.02 / sd) == pytest.approx((p < 0.05).mean(), abs=0.02)


def test_seeds_needed_edge_cases():
    assert math.isnan(stats.seeds_needed(0.0)) and math.isnan(stats.seeds_needed(float("nan")))
    assert stats.seeds_needed(1e-6) == 2  # a huge effect still needs two pairs for a t-test
    assert stats.seeds_needed(100.0) == float("inf")  # beyond the cap


def test_fewer_than_three_values_get_no_bootstrap_or_wilcoxon():
    two = stats.describe([1.0, 2.0])
    assert math.isnan(two["boot_low"]) and math.isnan(two["boot_high"]) and "no bootstrap" in two["note"]
    assert np.isfinite([two["ci_low"], two["ci_high"]]).all()
    c = stats.paired_comparison([2.0, 3.5], [1.0, 2.0])
    assert math.isnan(c["p_wilcoxon"]) and np.isfinite(c["p_ttest"]) and "no Wilcoxon" in c["note"]
    assert c["ratio_std"] == pytest.approx(np.std([2.0, 1.75], ddof=1))
