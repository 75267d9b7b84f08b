"""Risk and performance metrics of hedging strategies, from per-path terminal PnL samples.

Conventions.  Every function takes samples of X = terminal PnL, one value per simulated path,
shape [B] (numpy arrays, lists or eager TensorFlow tensors; converted with ``np.asarray`` to
float64).  Risk measures are *loss numbers*: positive when the strategy loses money.

* Value at risk, ``VaR_alpha(X) = -q_{1-alpha}(X)``, where q is the lower empirical quantile
  ``x_(ceil(B (1 - alpha)))`` of the sorted sample x_(1) <= ... <= x_(B) (numpy's
  ``method="inverted_cdf"``).
* Expected shortfall, ``ES_alpha(X)``: minus the mean of the worst (1 - alpha) fraction of the
  outcomes.  With m = B (1 - alpha) and k = floor(m),
  ``ES = -(x_(1) + ... + x_(k) + (m - k) x_(k+1)) / m``, i.e. the boundary outcome enters with its
  fractional weight.  This is minus the average of the same quantile function VaR reads, over
  levels up to 1 - alpha, so ``ES_alpha >= VaR_alpha`` always holds, and it equals the
  Rockafellar-Uryasev form ``min_c c + mean((-X - c)^+) / (1 - alpha)``.
* Entropic risk with risk aversion a > 0: ``(1/a) log mean exp(-a X)``, computed with
  ``scipy.special.logsumexp`` so it stays finite for PnL of any size.

Products B (1 - alpha) that are integers up to floating-point error (1000 * (1 - 0.95) is
50.000000000000043) are snapped to the integer, so the tail holds exactly 50 outcomes.

Two-sample tests: :func:`paired_t_test` for two strategies evaluated on the *same* paths,
:func:`welch_t_test` for independent samples (see their docstrings for when to use which).

    >>> x = [-3.0, -2.0, -1.0, 0.0]
    >>> value_at_risk(x, 0.5), expected_shortfall(x, 0.5)      # the worst half: -3, -2
    (2.0, 2.5)
    >>> table = metrics_table({"a": x, "b": [-1.0, -1.0, 0.0, 0.0]}, levels=(0.5,))
    >>> float(table.loc["b", "es_50"])
    1.0
    >>> round(paired_t_test(x, [-1.0, -1.0, 0.0, 0.0])["mean_diff"], 3)
    -1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import pandas as pd
from scipy import special, stats

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.validation import check_real

__all__ = [
    "DEFAULT_LEVELS",
    "entropic_risk",
    "entropic_risk_se",
    "expected_shortfall",
    "metrics_table",
    "paired_entropic_difference",
    "paired_t_test",
    "strategy_metrics",
    "value_at_risk",
    "welch_t_test",
]

DEFAULT_LEVELS = (0.90, 0.95, 0.99)

# Relative tolerance under which B (1 - alpha) is taken to be the nearest integer.
_SNAP_RTOL = 1e-9

# Keys of a strategies[name] mapping accepted by metrics_table.
_STRATEGY_KEYS = ("pnl", "costs", "turnover")


# --------------------------------------------------------------------------------------------
# validation


def _as_samples(values, name: str, *, min_size: int = 1) -> np.ndarray:
    """Checked float64 copy of a [B] sample; raises DeepHedgeError (a ValueError) naming `name`."""
    if values is None:
        raise DeepHedgeError(f"'{name}' is required; got None")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DeepHedgeError(f"'{name}' must be numeric; got {type(values).__name__}: {e}") from e
    if arr.ndim != 1:
        raise DeepHedgeError(f"'{name}' must be a 1-D array of per-path values, shape [B]; "
                             f"got shape {arr.shape}")
    if arr.size < min_size:
        what = "non-empty" if min_size == 1 else f"of at least {min_size} values"
        raise DeepHedgeError(f"'{name}' must be {what}; got {arr.size} values")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DeepHedgeError(f"'{name}' must be finite; {int(bad.sum())} of {arr.size} values are "
                             f"NaN or inf (first at index {first}: {arr[first]!r})")
    return arr


def _check_alpha(alpha, owner: str) -> float:
    return check_real(owner, "'alpha'", alpha, low=0.0, high=1.0, high_open=True)


def _check_risk_aversion(a, owner: str, name: str) -> float:
    return check_real(owner, f"'{name}'", a, low=0.0, low_open=True)


def _check_levels(levels) -> tuple[tuple[float, str], ...]:
    """(level, key suffix) pairs, e.g. (0.975, '97_5'); raises naming 'levels'."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise DeepHedgeError(f"'levels' must be a non-empty sequence of numbers in (0, 1); "
                             f"got {levels!r}")
    out = []
    for level in levels:
        try:
            x = float(level)
        except (TypeError, ValueError) as e:
            raise DeepHedgeError(f"'levels' must hold numbers in (0, 1); got {level!r}") from e
        if not 0.0 < x < 1.0:
            raise DeepHedgeError(f"'levels' must hold numbers in (0, 1); got {level!r}")
        out.append((x, f"{100.0 * x:g}".replace(".", "_")))
    suffixes = [s for _, s in out]
    if len(set(suffixes)) != len(suffixes):
        raise DeepHedgeError(f"'levels' must be distinct (as percentages); got {list(levels)!r}")
    return tuple(out)


# --------------------------------------------------------------------------------------------
# risk measures


def _tail_mass(n: int, alpha: float) -> float:
    """m = n (1 - alpha), snapped to the nearest integer when it is one up to rounding error."""
    m = n * (1.0 - alpha)
    r = round(m)
    if r >= 1 and abs(m - r) <= _SNAP_RTOL * max(1.0, m):
        return float(r)
    return m


def _var_sorted(xs: np.ndarray, alpha: float) -> float:
    m = _tail_mass(xs.size, alpha)
    return -float(xs[math.ceil(m) - 1])


def _es_sorted(xs: np.ndarray, alpha: float) -> float:
    m = _tail_mass(xs.size, alpha)
    k = math.floor(m)
    frac = m - k
    total = float(np.sum(xs[:k]))
    if frac > 0.0:
        total += frac * float(xs[k])
    return -total / m


def value_at_risk(pnl, alpha: float = 0.95) -> float:
    """Historical value at risk of PnL samples at level `alpha`.

    Args:
      pnl: [B] terminal PnL per path (currency units).
      alpha: confidence level in [0, 1), e.g. 0.95.

    Returns:
      ``-x_(ceil(B (1 - alpha)))``, the loss (currency units, positive = loss) that is exceeded
      with empirical probability at most 1 - alpha.  Equals
      ``-np.quantile(pnl, 1 - alpha, method="inverted_cdf")`` away from the rounding snap
      described in the module docstring.
    """
    alpha = _check_alpha(alpha, "value_at_risk")
    return _var_sorted(np.sort(_as_samples(pnl, "pnl")), alpha)


def expected_shortfall(pnl, alpha: float = 0.95) -> float:
    """Expected shortfall (CVaR) of PnL samples at level `alpha`.

    Args:
      pnl: [B] terminal PnL per path (currency units).
      alpha: confidence level in [0, 1); alpha = 0 gives minus the mean.

    Returns:
      Minus the mean of the worst (1 - alpha) fraction of outcomes, with the boundary outcome
      weighted fractionally (currency units, positive = loss).  E.g. ES at 50% of
      ``[0, -1, -2, -3]`` is 2.5.  Always >= :func:`value_at_risk` at the same level.
    """
    alpha = _check_alpha(alpha, "expected_shortfall")
    return _es_sorted(np.sort(_as_samples(pnl, "pnl")), alpha)


def expected_shortfall_se(pnl, alpha: float = 0.95) -> float:
    """Standard error of :func:`expected_shortfall` from its influence function: the standard deviation of
    ``v + (L - v)^+ / (1 - alpha)`` (losses ``L = -pnl``, ``v`` their value at risk) over ``sqrt(B)``.
    Valid for a continuous loss distribution and a tail of many samples (``B (1 - alpha)`` >> 1).

        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(0.0, 1.0, size=200_000)
        >>> round(expected_shortfall_se(x, alpha=0.0) * math.sqrt(x.size), 2)   # alpha 0: the mean's s.e.
        1.0
    """
    alpha = _check_alpha(alpha, "expected_shortfall_se")
    x = _as_samples(pnl, "pnl", min_size=2)
    losses = -x
    var = _var_sorted(np.sort(x), alpha)
    influence = np.maximum(losses - var, 0.0) / (1.0 - alpha)
    return float(influence.std(ddof=1) / math.sqrt(x.size))


def _entropic(x: np.ndarray, a: float) -> float:
    return float((special.logsumexp(-a * x) - math.log(x.size)) / a)


def entropic_risk(pnl, a: float = 1.0) -> float:
    """Entropic risk ``(1/a) log mean exp(-a X)`` of PnL samples.

    Args:
      pnl: [B] terminal PnL per path (currency units).
      a: risk aversion > 0 (1 / currency units).  Small a approaches minus the mean; large a
        approaches minus the worst outcome.

    Returns:
      The entropic risk (currency units, positive = loss), finite for any finite PnL: the
      log-mean-exp is evaluated with logsumexp, never exp(-a X) itself.
    """
    a = _check_risk_aversion(a, "entropic_risk", "a")
    return _entropic(_as_samples(pnl, "pnl"), a)


def _paired_samples(pnl_a, pnl_b, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``[B]`` samples of two strategies on the same paths (``B >= 2``, one value per path each)."""
    a = _as_samples(pnl_a, "pnl_a", min_size=2)
    b = _as_samples(pnl_b, "pnl_b", min_size=2)
    if a.size != b.size:
        raise DeepHedgeError(f"'pnl_b' must have one value per path of 'pnl_a' for {what} ({a.size}); got {b.size} "
                             "(use welch_t_test for independent samples)")
    return a, b


def _entropic_weights(x: np.ndarray, a: float) -> np.ndarray:
    """``W_i = exp(-a X_i) / mean exp(-a X)`` (mean one): the entropic risk's influence terms, times a."""
    z = -a * x
    w = np.exp(z - z.max())
    return w / w.mean()


def entropic_risk_se(pnl, a: float = 1.0) -> float:
    """Standard error of :func:`entropic_risk` by the delta method, ``std(W) / (a sqrt(B))`` with
    ``W_i = exp(-a X_i) / mean exp(-a X)``.

        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(0.0, 0.1, size=100_000)
        >>> round(entropic_risk_se(x, a=1.0) / (0.1 / math.sqrt(x.size)), 2)   # small a: the mean's s.e.
        1.0
    """
    a = _check_risk_aversion(a, "entropic_risk_se", "a")
    x = _as_samples(pnl, "pnl", min_size=2)
    return float(_entropic_weights(x, a).std(ddof=1) / (a * math.sqrt(x.size)))


def paired_entropic_difference(pnl_a, pnl_b, a: float = 1.0) -> tuple[float, float]:
    """``(rho(A) - rho(B), its standard error)`` for entropic risks of two strategies on the **same**
    paths (delta method on the pair: ``std(W_A - W_B) / (a sqrt(B))``, much smaller than either risk's
    own standard error when both carry the same payoff noise).

        >>> diff, se = paired_entropic_difference([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0])
        >>> diff, se
        (0.0, 0.0)
    """
    a = _check_risk_aversion(a, "paired_entropic_difference", "a")
    xa, xb = _paired_samples(pnl_a, pnl_b, "a paired difference")
    d = _entropic_weights(xa, a) - _entropic_weights(xb, a)
    return _entropic(xa, a) - _entropic(xb, a), float(d.std(ddof=1) / (a * math.sqrt(d.size)))


# --------------------------------------------------------------------------------------------
# summaries


def _mean_se(x: Optional[np.ndarray]) -> tuple[float, float]:
    """(mean, standard error of the mean); se is NaN with fewer than 2 values."""
    if x is None:
        return math.nan, math.nan
    mean = float(np.mean(x))
    se = float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size >= 2 else math.nan
    return mean, se


def _metrics(pnl, costs, turnover, entropic_a, levels, label) -> dict:
    """strategy_metrics with argument names in errors produced by `label(arg)`."""
    a = _check_risk_aversion(entropic_a, "strategy metrics", label("entropic_a"))
    level_keys = _check_levels(levels)
    x = _as_samples(pnl, label("pnl"))
    extra = {}
    for name, values in (("costs", costs), ("turnover", turnover)):
        if values is None:
            extra[name] = None
            continue
        arr = _as_samples(values, label(name))
        if arr.size != x.size:
            raise DeepHedgeError(f"'{label(name)}' must have one value per path like "
                                 f"'{label('pnl')}' ({x.size}); got {arr.size}")
        extra[name] = arr

    n = x.size
    xs = np.sort(x)
    mean, mean_se = _mean_se(x)
    std = float(np.std(x, ddof=1)) if n >= 2 else math.nan
    # Moments of a constant sample are 0/0; report NaN rather than scipy's warning + NaN.
    if n >= 2 and xs[0] != xs[-1]:
        skew = float(stats.skew(x))
        kurt = float(stats.kurtosis(x))
    else:
        skew = kurt = math.nan

    out = {"n_paths": n, "pnl_mean": mean, "pnl_mean_se": mean_se, "pnl_std": std,
           "pnl_skew": skew, "pnl_kurtosis": kurt}
    for level, suffix in level_keys:
        out[f"var_{suffix}"] = _var_sorted(xs, level)
    for level, suffix in level_keys:
        out[f"es_{suffix}"] = _es_sorted(xs, level)
    out["entropic"] = _entropic(x, a)
    out["cost_mean"], out["cost_mean_se"] = _mean_se(extra["costs"])
    out["turnover_mean"], out["turnover_mean_se"] = _mean_se(extra["turnover"])
    return out


def strategy_metrics(pnl, costs=None, turnover=None, entropic_a: float = 1.0,
                     levels: Sequence[float] = DEFAULT_LEVELS) -> dict:
    """Summary statistics and risk measures of one strategy's per-path results.

    Args:
      pnl: [B] terminal PnL per path (currency units); must be finite.
      costs: optional [B] transaction costs per path (currency units).
      turnover: optional [B] turnover per path (whatever unit the caller uses, e.g. the sum over
        time and instruments of |trade| * price).
      entropic_a: risk aversion a > 0 of the entropic risk.
      levels: confidence levels of VaR and ES, each in (0, 1).

    Returns:
      A dict, in this (stable) key order:

      * ``n_paths``: B.
      * ``pnl_mean``, ``pnl_mean_se`` (standard error std / sqrt(B)), ``pnl_std`` (ddof = 1).
      * ``pnl_skew``: sample skewness g1 = m3 / m2^1.5 (``scipy.stats.skew``, biased form).
      * ``pnl_kurtosis``: excess kurtosis m4 / m2^2 - 3 (``scipy.stats.kurtosis``, biased form).
        Both moments are NaN for a constant sample or B = 1, as are std and standard errors.
      * ``var_<pct>`` for each level, then ``es_<pct>`` for each level, with pct = 100 * level
        in ``%g`` format and "." replaced by "_": ``var_90, var_95, var_99, es_90, ...`` by
        default, ``var_97_5`` for 0.975.
      * ``entropic``: entropic risk with a = `entropic_a`.
      * ``cost_mean``, ``cost_mean_se``, ``turnover_mean``, ``turnover_mean_se``: NaN when the
        input was not given.

    Raises:
      DeepHedgeError (a ValueError) naming the argument: empty or non-1-D arrays, NaN or inf
      values, costs / turnover of another length than pnl, bad levels or entropic_a.
    """
    return _metrics(pnl, costs, turnover, entropic_a, levels, lambda arg: arg)


def metrics_table(strategies: Mapping, entropic_a: float = 1.0,
                  levels: Sequence[float] = DEFAULT_LEVELS) -> pd.DataFrame:
    """One row of :func:`strategy_metrics` per strategy.

    Args:
      strategies: ``{name: {"pnl": [B], "costs": [B] (optional), "turnover": [B] (optional)}}``.
        A value may also be a bare [B] PnL array.  Different strategies may have different B.
      entropic_a, levels: as in :func:`strategy_metrics`.

    Returns:
      A DataFrame indexed by strategy name (index name ``"strategy"``, in the mapping's order),
      with the columns of :func:`strategy_metrics` in its documented key order.

    Raises:
      DeepHedgeError (a ValueError) naming the strategy and argument, e.g.
      ``strategies['delta']['pnl']``, or unknown keys such as a misspelled ``"cost"``.
    """
    if not isinstance(strategies, Mapping) or len(strategies) == 0:
        raise DeepHedgeError("'strategies' must be a non-empty mapping {name: {'pnl': ..., "
                             f"'costs': ..., 'turnover': ...}}; got {type(strategies).__name__}")
    rows = {}
    for name, entry in strategies.items():
        where = f"strategies[{name!r}]"
        if isinstance(entry, Mapping):
            unknown = sorted(set(map(str, entry)) - set(_STRATEGY_KEYS))
            if unknown:
                raise DeepHedgeError(f"'{where}' has unknown keys {unknown}; allowed: "
                                     f"{list(_STRATEGY_KEYS)}")
            if "pnl" not in entry:
                raise DeepHedgeError(f"'{where}' needs a 'pnl' entry")
            pnl, costs, turnover = entry["pnl"], entry.get("costs"), entry.get("turnover")
        else:
            pnl, costs, turnover = entry, None, None
        rows[name] = _metrics(
            pnl, costs, turnover, entropic_a, levels,
            lambda arg, where=where: arg if arg in ("entropic_a", "levels") else f"{where}['{arg}']")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "strategy"
    return table


# --------------------------------------------------------------------------------------------
# two-sample tests


def _test_result(t, p, mean_diff, se, df, n) -> dict:
    return {"t": float(t), "p_value": float(p), "mean_diff": float(mean_diff), "se": float(se),
            "df": float(df), "n": n}


def _degenerate(mean_diff: float, alternative: str) -> tuple[float, float]:
    """(t, p) when the standard error is 0: no evidence either way if the means agree, otherwise
    certainty in the direction of the difference (scipy would warn and may return NaN)."""
    if mean_diff == 0.0:
        return math.nan, math.nan
    t = math.copysign(math.inf, mean_diff)
    if alternative == "two-sided":
        return t, 0.0
    favoured = (alternative == "greater") == (mean_diff > 0)
    return t, 0.0 if favoured else 1.0


def _check_alternative(alternative) -> str:
    if alternative not in ("two-sided", "less", "greater"):
        raise DeepHedgeError(f"'alternative' must be 'two-sided', 'less' or 'greater'; "
                             f"got {alternative!r}")
    return alternative


def paired_t_test(pnl_a, pnl_b, alternative: str = "two-sided") -> dict:
    """Paired t-test of mean(pnl_a) = mean(pnl_b) for two strategies run on the SAME paths.

    Use this when path i of both samples is the same simulated market scenario (same seed,
    common random numbers): the test works on the differences d_i = a_i - b_i, from which the
    scenario noise common to both strategies cancels, so it detects far smaller differences than
    an unpaired test.  For samples from different paths use :func:`welch_t_test`; pairing
    unrelated paths is not valid.

    Args:
      pnl_a, pnl_b: [B] terminal PnL per path, B >= 2, same paths in the same order.
      alternative: "two-sided", "greater" (mean of a > mean of b) or "less".

    Returns:
      ``{"t", "p_value", "mean_diff", "se", "df", "n"}`` with mean_diff = mean(a - b),
      se = std(a - b, ddof=1) / sqrt(B), t = mean_diff / se, df = B - 1, n = B
      (``scipy.stats.ttest_rel``).  If se = 0, t and p_value are NaN when mean_diff = 0, and
      +-inf and 0 (or 1 for the disfavoured one-sided alternative) otherwise.
    """
    alternative = _check_alternative(alternative)
    a, b = _paired_samples(pnl_a, pnl_b, "a paired test")
    d = a - b
    mean_diff = float(np.mean(d))
    se = float(np.std(d, ddof=1) / math.sqrt(d.size))
    if se == 0.0:
        t, p = _degenerate(mean_diff, alternative)
    else:
        res = stats.ttest_rel(a, b, alternative=alternative)
        t, p = res.statistic, res.pvalue
    return _test_result(t, p, mean_diff, se, d.size - 1, d.size)


def welch_t_test(pnl_a, pnl_b, alternative: str = "two-sided") -> dict:
    """Welch's (unequal-variance) t-test of mean(pnl_a) = mean(pnl_b) for independent samples.

    Use this when the two strategies were evaluated on different, independently drawn paths
    (different seeds or different data), possibly of different sizes.  On paired data it is
    still valid but ignores the shared scenario noise, so it is much less powerful than
    :func:`paired_t_test`.

    Args:
      pnl_a: [B_a] terminal PnL per path, B_a >= 2.
      pnl_b: [B_b] terminal PnL per path, B_b >= 2.
      alternative: "two-sided", "greater" (mean of a > mean of b) or "less".

    Returns:
      ``{"t", "p_value", "mean_diff", "se", "df", "n"}`` with mean_diff = mean(a) - mean(b),
      se = sqrt(var(a)/B_a + var(b)/B_b) (ddof = 1), df the Welch-Satterthwaite degrees of
      freedom, n = B_a + B_b (``scipy.stats.ttest_ind(equal_var=False)``).  se = 0 is handled
      as in :func:`paired_t_test`, with df NaN.
    """
    alternative = _check_alternative(alternative)
    a = _as_samples(pnl_a, "pnl_a", min_size=2)
    b = _as_samples(pnl_b, "pnl_b", min_size=2)
    va, vb = np.var(a, ddof=1) / a.size, np.var(b, ddof=1) / b.size
    mean_diff = float(np.mean(a) - np.mean(b))
    se = float(math.sqrt(va + vb))
    if se == 0.0:
        t, p = _degenerate(mean_diff, alternative)
        df = math.nan  # Welch-Satterthwaite is 0 / 0 here
    else:
        res = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
        t, p, df = res.statistic, res.pvalue, res.df
    return _test_result(t, p, mean_diff, se, df, a.size + b.size)
