"""What the hedger observes, and the training batch built from paths.

:func:`make_batch` turns MarketPaths, the derivative and the hedging instruments into one dict of
tensors, the element of every dataset the hedger trains on.  Shown time-major, as the hedger uses
them; at the Keras boundary (datasets, ``fit``, ``predict``) they travel batch-major ``[B, T, ...]``
(see :func:`make_batch`)::

    batch = {
        "obs": {                                  # per decision time t_k, k = 0 .. T-1
            "features": [T, B, F],                # network inputs, see FEATURE_NAMES / feature_names()
            "spot": [T, B], "variance": [T, B],
            "tau": [T, B],                        # years to the derivative's maturity (>= 0)
            "bs_delta": [T, B], "bs_gamma": [T, B],   # Black-Scholes Greeks of the liability
        },
        "premiums": [T, B, N], "returns": [T, B, N], "mask": [T, B, N], "cost_rates": [T, B, N],
        "payoff": [B],                            # the liability's payoff (we are short it)
    }

Network features (all O(1) in size, so no normalisation layer is needed):
  * ``time``: fraction of the horizon elapsed, ``k / T``;
  * ``log_spot``: ``log(S_k / S_0)``, or for options with a strike (European, call spread, lookback)
    ``log_moneyness``: ``log(S_k / K)`` in its place.  Not both: with ``S_0`` the same on every path
    they differ by the constant ``log(S_0 / K)``, so together with a bias they would make the inputs
    linearly dependent (a singular curvature factor for second-order optimizers, nothing gained);
  * ``vol``: ``sqrt(v_k)``, the observed (model or realised) volatility;
  * cliquet only: ``log_period``: ``log(S_k / S_last_reset)`` and ``payoff_now``: the payoff if the
    cliquet matured now (capped returns of completed periods plus the current one, floored).
"""

from __future__ import annotations

import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.instruments.derivatives import CallSpread, Cliquet, EuropeanOption, LookbackCall
from deephedge_tf.instruments.hedges import hedge_tensors
from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.pricing.black_scholes import bs_delta, bs_gamma


def feature_names(derivative) -> tuple[str, ...]:
    """Names of the network features, in column order, for ``derivative``."""
    spot = "log_spot" if _reference_strike(derivative) is None else "log_moneyness"
    names = ("time", spot, "vol")
    if isinstance(derivative, Cliquet):
        names += ("log_period", "payoff_now")
    return names


def _reference_strike(derivative):
    if isinstance(derivative, (EuropeanOption, LookbackCall)):
        return derivative.strike
    if isinstance(derivative, CallSpread):
        return derivative.strike_low
    return None


def _cliquet_features(spot, c: Cliquet, steps: int):
    """``log(S_k / S_last_reset)`` and the payoff if the cliquet matured at ``t_k``, each [T, B]."""
    period = c.reset_every
    k = tf.range(steps)
    last_reset = (k // period) * period  # [T]
    s_reset = tf.gather(spot, last_reset)  # [T, B]
    s_k = spot[:-1]
    current = s_k / s_reset - 1.0

    def clip(r):
        r = tf.minimum(r, to_float(c.local_cap, r.dtype))
        return r if c.local_floor is None else tf.maximum(r, to_float(c.local_floor, r.dtype))

    # Completed periods' capped returns, accumulated and then held constant within each period.
    resets = spot[0: steps + 1: period]
    done = tf.concat([tf.zeros_like(resets[:1]), tf.cumsum(clip(resets[1:] / resets[:-1] - 1.0), axis=0)], 0)
    accumulated = tf.gather(done, k // period)
    payoff_now = tf.maximum(accumulated + clip(current), to_float(c.global_floor, spot.dtype))
    return tf.math.log(s_k / s_reset), payoff_now


def observations(paths: MarketPaths, derivative) -> dict:
    """The ``obs`` part of a batch (see module docstring); tensors ``[T, B]`` and ``[T, B, F]``."""
    steps = paths.num_steps
    s, v = paths.spot[:-1], paths.variance[:-1]
    dtype = s.dtype
    k = tf.cast(tf.range(steps), dtype)[:, None]
    maturity = derivative.maturity_steps or steps
    tau = tf.maximum(tf.cast(maturity, dtype) - k, 0.0) * to_float(paths.dt, dtype) * tf.ones_like(s)
    vol = tf.sqrt(tf.maximum(v, 0.0))
    strike = _reference_strike(derivative)
    reference = paths.spot[0] if strike is None else to_float(strike, dtype)
    cols = [k / steps * tf.ones_like(s), tf.math.log(s / reference), vol]
    if isinstance(derivative, Cliquet):
        cols.extend(_cliquet_features(paths.spot, derivative, steps))
    delta, gamma = liability_greeks(derivative, s, tau, vol)
    return {"features": tf.stack(cols, axis=-1), "spot": s, "variance": v, "tau": tau,
            "bs_delta": delta, "bs_gamma": gamma}


def liability_greeks(derivative, spot, tau, vol):
    """Black-Scholes delta and gamma of the liability at volatility ``vol`` (zeros where undefined).

    Defined for European options and call spreads; after maturity both are 0.
    """
    zeros = tf.zeros_like(spot)
    if isinstance(derivative, EuropeanOption):
        d = bs_delta(spot, derivative.strike, tau, vol, is_call=derivative.is_call, dtype=spot.dtype)
        g = bs_gamma(spot, derivative.strike, tau, vol, dtype=spot.dtype)
    elif isinstance(derivative, CallSpread):
        d = (bs_delta(spot, derivative.strike_low, tau, vol, dtype=spot.dtype)
             - bs_delta(spot, derivative.strike_high, tau, vol, dtype=spot.dtype))
        g = (bs_gamma(spot, derivative.strike_low, tau, vol, dtype=spot.dtype)
             - bs_gamma(spot, derivative.strike_high, tau, vol, dtype=spot.dtype))
    else:
        return zeros, zeros
    live = tau > 0
    return tf.where(live, d, zeros), tf.where(live, g, zeros)


def make_batch(paths: MarketPaths, derivative, instruments) -> dict:
    """One training/evaluation batch (see module docstring) from paths, **batch-major**.

    Keras slices, shuffles and (under tf.distribute) shards data along axis 0, so batches cross the
    ``fit`` boundary batch-first: every ``[T, B, ...]`` tensor of the module docstring is delivered
    as ``[B, T, ...]``.  The hedger turns them back to time-major (:func:`time_major`).
    """
    h = hedge_tensors(instruments, paths)
    batch = {"obs": observations(paths, derivative), "premiums": h.premiums, "returns": h.returns,
             "mask": h.mask, "cost_rates": h.cost_rates}
    batch = tf.nest.map_structure(_swap_batch_time, batch)
    batch["payoff"] = derivative.payoff(paths)
    return batch


def _swap_batch_time(x):
    perm = [1, 0] + list(range(2, x.shape.rank))
    return tf.transpose(x, perm)


def time_major(batch: dict) -> dict:
    """Inverse of the layout change in :func:`make_batch`: ``[B, T, ...]`` -> ``[T, B, ...]``."""
    payoff = batch["payoff"]
    rest = {k: v for k, v in batch.items() if k != "payoff"}
    out = tf.nest.map_structure(_swap_batch_time, rest)
    out["payoff"] = payoff
    return out
