"""Intervals and tests for the numbers a run reports (docs/statistics.md).

- :func:`wilson_interval`, :func:`exact_interval`: a 95 % interval for an accuracy k/n;
- :func:`bootstrap_interval`: percentile bootstrap over examples for any statistic of one
  or several per-example arrays resampled jointly (CKA: both models' features);
- :func:`mcnemar`: exact McNemar test on paired per-example correctness (two-sided);
- :func:`binomial_excess`: one-sided exact binomial test that k of n exceeds a rate;
- :func:`holm`: Holm's step-down adjustment of a family of p-values;
- :func:`paired_bootstrap`: two-sided bootstrap p-value and interval for a difference of a
  statistic between two models measured on the same examples;
- :func:`spearman`: Spearman's ρ with a Fisher-z interval.

Every resampling takes a seed and draws from its own ``numpy.random.Generator``: reruns are
identical, and no global random state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 1000


def _special():
    # scipy.special's distribution functions (the ones scipy.stats calls): importing
    # scipy.stats takes four times as long, which every run would pay for a few quantiles
    from scipy import special

    return special


def _z(level: float) -> float:
    return float(_special().ndtri(0.5 + level / 2))


def wilson_interval(k, n, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray] | tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (arrays broadcast; NaN where n = 0).

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps close to its nominal
    coverage at accuracies near 0 or 1, which is where robust accuracies often sit."""
    k_a, n_a = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = _z(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k_a / n_a
        denom = 1 + z * z / n_a
        centre = (p + z * z / (2 * n_a)) / denom
        half = z * np.sqrt(p * (1 - p) / n_a + z * z / (4 * n_a * n_a)) / denom
        low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    low, high = np.where(n_a > 0, low, np.nan), np.where(n_a > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def exact_interval(k, n, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval (at least the nominal coverage; wider than Wilson's)."""
    k, n = int(k), int(n)
    if n == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(_special().betaincinv(k, n - k + 1, a))
    high = 1.0 if k == n else float(_special().betaincinv(k + 1, n - k, 1 - a))
    return low, high


def bootstrap_interval(
    arrays: np.ndarray | Sequence[np.ndarray],
    statistic: Callable[..., float] = np.mean,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over examples.

    ``arrays``: one array, or several whose first axis is the example (all resampled with
    the same indices, e.g. the features of two models for CKA). Non-finite entries of a
    single 1-D array are dropped first (NaN marks an excluded example). NaN when fewer than
    two examples are left."""
    single = isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple))
    arrs = [np.asarray(arrays)] if single else [np.asarray(a) for a in arrays]
    if single and arrs[0].ndim == 1:
        arrs[0] = arrs[0][np.isfinite(arrs[0])]
    n = len(arrs[0])
    if n < 2 or any(len(a) != n for a in arrs):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    if statistic is np.mean and len(arrs) == 1 and arrs[0].ndim == 1 and n * samples <= 50_000_000:
        vals = arrs[0][rng.integers(0, n, (samples, n))].mean(1)  # the common case, vectorised
    else:
        vals = np.empty(samples)
        for i in range(samples):
            idx = rng.integers(0, n, n)
            vals[i] = statistic(*(a[idx] for a in arrs))
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, float]:
    """Difference ``statistic(b) − statistic(a)`` of two per-example arrays measured on the
    same examples, its percentile interval and a two-sided p-value (twice the smaller share
    of resampled differences on either side of zero, at least 1/samples)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 2:
        return {"n": n, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    rng = np.random.default_rng(seed)
    d = np.empty(samples)
    if statistic is np.mean:  # the common case, vectorised a chunk of resamples at a time (same draws)
        step = max(1, 2_000_000 // n)
        for i in range(0, samples, step):
            idx = rng.integers(0, n, (min(step, samples - i), n))
            d[i:i + len(idx)] = b[idx].mean(1) - a[idx].mean(1)
    else:
        for i in range(samples):
            idx = rng.integers(0, n, n)
            d[i] = statistic(b[idx]) - statistic(a[idx])
    q = (1 - level) / 2
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    return {
        "n": n,
        "diff": float(statistic(b) - statistic(a)),
        "ci_low": float(np.quantile(d, q)),
        "ci_high": float(np.quantile(d, 1 - q)),
        "p_value": float(min(1.0, max(p, 1.0 / samples))),
    }


def discordant(first: np.ndarray, second: np.ndarray) -> tuple[int, int]:
    """(b, c) for paired booleans: b = first right and second wrong, c = the reverse."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    return int((first & ~second).sum()), int((~first & second).sum())


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts: under H0 each discordant
    pair goes either way with probability 1/2, so min(b, c) is Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * _special().bdtr(min(b, c), n, 0.5)))


def binomial_excess(k: int, n: int, rate: float) -> float:
    """One-sided exact p-value P(X ≥ k) for X ~ Binomial(n, rate): evidence that the true
    rate exceeds ``rate``. With rate 1/2 on discordant pairs (k = b, n = b + c) it is the
    one-sided McNemar test that the second of two paired attacks breaks more examples."""
    if n == 0 or k <= 0:
        return 1.0
    if rate <= 0:
        return 0.0
    return float(_special().bdtrc(k - 1, n, rate))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, no independence
    assumption); NaN entries stay NaN and do not count towards the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def spearman(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Spearman's ρ with a Fisher-z interval (standard error √(1.06 / (n − 3)), Fieller et al.
    1957); NaN interval below four points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "rho": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    if n < 4 or abs(rho) >= 1:
        lo = hi = rho if abs(rho) >= 1 else math.nan
        return {"n": n, "rho": rho, "ci_low": lo, "ci_high": hi}
    se = math.sqrt(1.06 / (n - 3))
    z = math.atanh(rho)
    h = _z(level) * se
    return {"n": n, "rho": rho, "ci_low": math.tanh(z - h), "ci_high": math.tanh(z + h)}
