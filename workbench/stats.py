"""Intervals and tests for the numbers a run reports (docs/statistics.md).

- :func:`wilson_interval`, :func:`exact_interval`: a 95 % interval for an accuracy k/n;
- :func:`bootstrap_interval`: percentile bootstrap over examples for any statistic of one
  or several per-example arrays resampled jointly (CKA: both models' features);
- :func:`mcnemar`: exact McNemar test on paired per-example correctness (two-sided);
- :func:`binomial_excess`: one-sided exact binomial test that k of n exceeds a rate;
- :func:`holm`: Holm's step-down adjustment of a family of p-values;
- :func:`paired_test`: a difference of means between two models measured on the same
  examples: two-sided sign-flip permutation p-value (:func:`sign_flip_pvalues`, exact for
  n ≤ 16) and a percentile bootstrap interval;
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


#: up to this many paired examples the sign-flip test enumerates all 2ⁿ sign vectors (exact)
SIGN_FLIP_EXACT_N = 16
#: random sign vectors of the Monte-Carlo sign-flip test above that n
SIGN_FLIP_SAMPLES = 10_000


def _all_signs(n: int) -> np.ndarray:
    """Every ±1 vector of length n, (2ⁿ, n)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    return 1.0 - 2.0 * bits


def sign_flip_pvalues(d: np.ndarray, *, samples: int = SIGN_FLIP_SAMPLES, seed: int = 0) -> np.ndarray:
    """Two-sided paired sign-flip (permutation) test that the mean of the differences is 0.

    ``d``: paired differences, (n,) or a batch (m, n) of independent tests (rows share the
    random sign vectors). Under H0 each difference is as likely to have either sign (the two
    measurements of an example are exchangeable), so the statistic |Σ dᵢ| is compared with
    |Σ sᵢdᵢ| over sign vectors s: all 2ⁿ of them for n ≤ :data:`SIGN_FLIP_EXACT_N` (exact),
    else ``samples`` random ones, with p = (1 + #{|Σ sᵢdᵢ| ≥ |Σ dᵢ|}) / (1 + samples), a
    valid p-value for any number of samples. Either way P(p ≤ α) ≤ α under H0 at every n,
    which the percentile bootstrap does not give at small n (docs/statistics.md). Returns a
    float for 1-D input, else an (m,) array; NaN where n < 1. Exact ties count as at least
    as extreme (a relative tolerance of 1e-9 absorbs float summation order)."""
    d = np.asarray(d, dtype=float)
    single = d.ndim == 1
    d2 = np.atleast_2d(d)
    m, n = d2.shape
    if n < 1:
        out = np.full(m, np.nan)
        return float(out[0]) if single else out
    t_obs = np.abs(d2.sum(1))
    tol = 1e-9 * np.abs(d2).sum(1)
    exact = n <= SIGN_FLIP_EXACT_N
    if exact:
        signs = _all_signs(n)
    else:
        signs = np.where(np.random.default_rng(seed).random((int(samples), n)) < 0.5, -1.0, 1.0)
    hits = np.zeros(m)
    step = max(1, 4_000_000 // max(m, 1))  # bounded memory: step × m statistics at a time
    for i in range(0, len(signs), step):
        hits += (np.abs(signs[i:i + step] @ d2.T) >= t_obs - tol).sum(0)
    p = hits / len(signs) if exact else (1.0 + hits) / (1.0 + len(signs))
    p = np.minimum(p, 1.0)
    return float(p[0]) if single else p


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    permutations: int = SIGN_FLIP_SAMPLES,
) -> dict[str, float]:
    """Difference of means ``mean(b) − mean(a)`` of two per-example arrays measured on the
    same examples (pairs with a non-finite entry are dropped): the two-sided sign-flip
    p-value (:func:`sign_flip_pvalues`, ``permutations`` random sign vectors above n = 16)
    and the percentile bootstrap interval of the difference (``samples`` resamples). The
    p-value is not read off the bootstrap distribution: that inversion rejects a true null
    too often at small n (7.7 % at α = 0.05 and n = 16, issue 19)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 2:
        return {"n": n, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    d_obs = b - a
    rng = np.random.default_rng(seed)
    d = np.empty(samples)
    step = max(1, 2_000_000 // n)  # vectorised a chunk of resamples at a time
    for i in range(0, samples, step):
        idx = rng.integers(0, n, (min(step, samples - i), n))
        d[i:i + len(idx)] = d_obs[idx].mean(1)
    q = (1 - level) / 2
    return {
        "n": n,
        "diff": float(d_obs.mean()),
        "ci_low": float(np.quantile(d, q)),
        "ci_high": float(np.quantile(d, 1 - q)),
        "p_value": sign_flip_pvalues(d_obs, samples=permutations, seed=seed),
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
    # scipy takes a second to import; only this computation needs it
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    if n < 4 or abs(rho) >= 1:
        lo = hi = rho if abs(rho) >= 1 else math.nan
        return {"n": n, "rho": rho, "ci_low": lo, "ci_high": hi}
    se = math.sqrt(1.06 / (n - 3))
    z = math.atanh(rho)
    h = _z(level) * se
    return {"n": n, "rho": rho, "ci_low": math.tanh(z - h), "ci_high": math.tanh(z + h)}
