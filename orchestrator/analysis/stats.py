"""Seed statistics for sweep results: pure functions on arrays, no I/O.

Every function drops non-finite values (NaN, +-inf) before it computes anything, so a NaN never
leaks into a mean. Where a figure cannot be computed (too few values, zero variance) it is NaN and
the accompanying ``note`` says why; callers write NaN as an empty cell.

- Confidence intervals are two-sided Student t intervals, ``mean +- t_{(1+c)/2, n-1} * sem`` with
  ``sem = std(ddof=1) / sqrt(n)``, and bootstrap intervals from ``scipy.stats.bootstrap`` (BCa, a
  fixed seed, percentile as the fallback where BCa is undefined).
- Paired comparisons use ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon`` on the seeds both
  sides have; the effect size is Cohen's d_z = mean(diff) / std(diff, ddof=1).
- ``holm`` is the Holm-Bonferroni step-down adjustment of a family of p-values.
- Fewer than ``MIN_SEEDS_FOR_RANKS`` (3) values get no bootstrap interval and no Wilcoxon test:
  with two values the bootstrap interval is just the two values and Wilcoxon p cannot go below
  0.5, so printing them would only mislead. The note says so.
- ``seeds_needed`` is the paired t-test sample size for a given ratio effect, from the observed
  standard deviation of the per-seed ratios (exact noncentral t power).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
MIN_SEEDS_FOR_RANKS = 3  # below this: no bootstrap interval, no Wilcoxon (see the module docstring)

NAN = float("nan")


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite values of ``values`` as a float array (NaN and +-inf removed)."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    arr = arr.ravel()
    return arr[np.isfinite(arr)]


def t_critical(n: np.ndarray | int, confidence: float = CONFIDENCE) -> np.ndarray | float:
    """Two-sided Student t critical value for ``n`` values (NaN where n < 2); vectorised."""
    n_arr = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        crit = np.where(n_arr >= 2, sps.t.ppf((1.0 + confidence) / 2.0, np.maximum(n_arr - 1, 1)), np.nan)
    return float(crit) if np.ndim(crit) == 0 else crit


def t_interval_from_moments(
    mean: np.ndarray, std: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sem, low, high) of the t interval from per-group mean, std (ddof=1) and count; vectorised.

    For grouped tables already reduced with ``groupby().agg(["mean", "std", "count"])``.
    Groups with n < 2 get NaN.
    """
    mean = np.asarray(mean, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.where(n >= 2, np.asarray(std, dtype=float) / np.sqrt(n), np.nan)
        half = t_critical(n, confidence) * sem
    return sem, mean - half, mean + half


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean; (NaN, NaN) with fewer than two values."""
    x = finite(values)
    if x.size < 2:
        return NAN, NAN
    _, low, high = t_interval_from_moments(x.mean(), x.std(ddof=1), x.size, confidence)
    return float(low), float(high)


def bootstrap_interval(
    values: Iterable[float],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    method: str = "BCa",
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean (``scipy.stats.bootstrap``, fixed seed).

    (NaN, NaN) with fewer than two values; (v, v) when every value is v. Where BCa is undefined
    (it needs some spread in the jackknife) the percentile interval is used instead.
    """
    x = finite(values)
    if x.size < 2:
        return NAN, NAN
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    methods = [method] + (["percentile"] if method != "percentile" else [])
    for m in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap(
                (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                method=m, rng=np.random.default_rng(seed), vectorized=True,
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return low, high
    return NAN, NAN


def describe(values: Iterable[float], confidence: float = CONFIDENCE, bootstrap: bool = True) -> dict:
    """n_seeds, mean, std, sem, ci_low/high (t), boot_low/high and a note for one cell's values."""
    x = finite(values)
    n = int(x.size)
    out = {"n_seeds": n, "mean": NAN, "std": NAN, "sem": NAN, "ci_low": NAN, "ci_high": NAN,
           "boot_low": NAN, "boot_high": NAN, "note": ""}
    if n == 0:
        out["note"] = "no completed seeds"
        return out
    out["mean"] = float(x.mean())
    if n == 1:
        out["note"] = "n=1: no CI"
        return out
    out["std"] = float(x.std(ddof=1))
    out["sem"] = out["std"] / np.sqrt(n)
    out["ci_low"], out["ci_high"] = t_interval(x, confidence)
    if n < MIN_SEEDS_FOR_RANKS:
        out["note"] = f"n={n}: no bootstrap CI"
    elif bootstrap:
        out["boot_low"], out["boot_high"] = bootstrap_interval(x, confidence)
    return out


def pair(values: Mapping, baseline: Mapping) -> tuple[np.ndarray, np.ndarray, list]:
    """Align two {seed: value} mappings on the seeds both have with finite values (sorted)."""
    seeds = sorted(
        s for s in set(values) & set(baseline)
        if np.isfinite(float(values[s])) and np.isfinite(float(baseline[s]))
    )
    x = np.array([float(values[s]) for s in seeds], dtype=float)
    y = np.array([float(baseline[s]) for s in seeds], dtype=float)
    return x, y, seeds


def paired_comparison(x: Iterable[float], y: Iterable[float], confidence: float = CONFIDENCE) -> dict:
    """Paired comparison of x against the baseline y (already aligned by seed).

    Returns n_paired, mean_diff (x - y) and its t interval (diff_ci_low/high), d_z, p_ttest,
    p_wilcoxon (only from MIN_SEEDS_FOR_RANKS pairs), ratio_mean and its t interval (ratio = x / y
    per seed), ratio_std (ddof=1) and a note. Pairs with a non-finite side are dropped.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    out = {"n_paired": n, "mean_diff": NAN, "diff_ci_low": NAN, "diff_ci_high": NAN, "d_z": NAN,
           "p_ttest": NAN, "p_wilcoxon": NAN, "ratio_mean": NAN, "ratio_ci_low": NAN,
           "ratio_ci_high": NAN, "ratio_std": NAN, "note": ""}
    if n == 0:
        out["note"] = "no paired seeds"
        return out
    diff = x - y
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = finite(x / y)
    out["mean_diff"] = float(diff.mean())
    if ratio.size:
        out["ratio_mean"] = float(ratio.mean())
        out["ratio_ci_low"], out["ratio_ci_high"] = t_interval(ratio, confidence)
        if ratio.size > 1:
            out["ratio_std"] = float(ratio.std(ddof=1))
    out["diff_ci_low"], out["diff_ci_high"] = t_interval(diff, confidence)
    if n < 2:
        out["note"] = "1 paired seed: no tests"
        return out
    notes = []
    sd = float(diff.std(ddof=1))
    if sd > 0:
        out["d_z"] = float(diff.mean() / sd)
        out["p_ttest"] = float(sps.ttest_rel(x, y).pvalue)
    else:
        notes.append("zero variance of differences: no t-test")
    if n < MIN_SEEDS_FOR_RANKS:
        notes.append(f"{n} paired seeds: no Wilcoxon")
    elif np.all(diff == 0):
        notes.append("all differences zero: no Wilcoxon")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(sps.wilcoxon(x, y).pvalue)
    out["note"] = "; ".join(notes)
    return out


def paired_t_power(n: int, effect_size: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs at standardised effect ``effect_size``
    (mean difference / its standard deviation), from the noncentral t distribution."""
    if n < 2 or not np.isfinite(effect_size):
        return NAN
    df = n - 1
    crit = sps.t.ppf(1.0 - alpha / 2.0, df)
    nc = abs(effect_size) * np.sqrt(n)
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def seeds_needed(std: float, effect: float = 0.02, power: float = 0.8, alpha: float = 0.05,
                 limit: int = 1_000_000) -> float:
    """The fewest paired seeds for which a paired t-test detects a mean difference ``effect``
    with ``power``, when the differences' standard deviation is ``std``.

    For ratios to the baseline, pass the std of the per-seed ratios and effect=0.02 (a 2%
    ratio). Starts at the normal approximation and walks to the exact noncentral-t answer.
    NaN when ``std`` is not a positive finite number; ``limit`` caps the answer (returned as inf).
    """
    if not (np.isfinite(std) and std > 0 and effect != 0):
        return NAN
    d = abs(effect) / std
    z = sps.norm.ppf(1.0 - alpha / 2.0) + sps.norm.ppf(power)
    n = max(2, int(np.ceil((z / d) ** 2)))
    if n > limit:
        return float("inf")
    while paired_t_power(n, d, alpha) < power:
        n += 1
    while n > 2 and paired_t_power(n - 1, d, alpha) >= power:
        n -= 1
    return float(n)


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaN entries stay NaN and are not part of the family.

    Sorted ascending, p_(i) is adjusted to max_{j<=i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(list(pvalues) if not isinstance(pvalues, np.ndarray) else pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adjusted
    out[ok] = res
    return out
