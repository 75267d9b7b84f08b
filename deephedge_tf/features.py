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
  * ``log_spot``: ``log(S_k / S_0)``, or for derivatives with a ``moneyness_strike`` (European, call
    spread, lookback) ``log_moneyness``: ``log(S_k / K)`` in its place.  Not both: with ``S_0`` the same
    on every path they differ by the constant ``log(S_0 / K)``, so together with a bias they would make
    the inputs linearly dependent (a singular curvature factor for second-order optimizers, nothing
    gained);
  * ``vol``: ``sqrt(v_k)``, the observed (model or realised) volatility;
  * then the derivative's own path features (``derivative.feature_names``, see
    :mod:`deephedge_tf.instruments.derivatives`): ``log_running_max`` of a lookback, ``log_period`` and
    ``payoff_now`` of a cliquet, any a user's :class:`~deephedge_tf.instruments.derivatives.PathDerivative`
    declares.
"""

from __future__ import annotations

import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.instruments.hedges import hedge_tensors
from deephedge_tf.market.paths import MarketPaths


def feature_names(derivative) -> tuple[str, ...]:
    """Names of the network features, in column order, for ``derivative``."""
    spot = "log_spot" if getattr(derivative, "moneyness_strike", None) is None else "log_moneyness"
    return ("time", spot, "vol") + tuple(getattr(derivative, "feature_names", ()))


def derivative_features(paths: MarketPaths, derivative) -> list:
    """The derivative's own path features (``derivative.features(paths)``), checked: the names it
    declares, each ``[T, B]``."""
    names = tuple(getattr(derivative, "feature_names", ()))
    if not names:
        return []
    values = derivative.features(paths)
    if tuple(values) != names:
        raise DeepHedgeError(f"{derivative!r}: features(paths) returned {list(values)}, but feature_names is "
                             f"{list(names)} (the same names, in the same order)")
    want = paths.spot[:-1]
    cols = []
    for name in names:
        x = tf.convert_to_tensor(values[name])
        if x.shape.rank != 2 or x.shape[0] != want.shape[0] or (x.shape[1] is not None and want.shape[1] is not None
                                                                 and x.shape[1] != want.shape[1]):
            raise DeepHedgeError(f"{derivative!r}: feature {name!r} has shape {x.shape}; expected [T, B] = "
                                 f"{want.shape} (one value per decision time t_0 .. t_(T-1) and path)")
        cols.append(tf.cast(x, want.dtype))
    return cols


def observations(paths: MarketPaths, derivative) -> dict:
    """The ``obs`` part of a batch (see module docstring); tensors ``[T, B]`` and ``[T, B, F]``."""
    steps = paths.num_steps
    s, v = paths.spot[:-1], paths.variance[:-1]
    dtype = s.dtype
    k = tf.cast(tf.range(steps), dtype)[:, None]
    maturity = getattr(derivative, "maturity_steps", None) or steps
    tau = tf.maximum(tf.cast(maturity, dtype) - k, 0.0) * to_float(paths.dt, dtype) * tf.ones_like(s)
    vol = tf.sqrt(tf.maximum(v, 0.0))
    strike = getattr(derivative, "moneyness_strike", None)
    reference = paths.spot[0] if strike is None else to_float(strike, dtype)
    cols = [k / steps * tf.ones_like(s), tf.math.log(s / reference), vol] + derivative_features(paths, derivative)
    delta, gamma = liability_greeks(derivative, paths, s, tau, vol)
    return {"features": tf.stack(cols, axis=-1), "spot": s, "variance": v, "tau": tau,
            "bs_delta": delta, "bs_gamma": gamma}


def has_greeks(derivative) -> bool:
    """Whether the derivative gives Black-Scholes Greeks (``greeks`` or ``path_greeks``)."""
    return getattr(derivative, "greeks", None) is not None or getattr(derivative, "path_greeks", None) is not None


def liability_greeks(derivative, paths, spot, tau, vol):
    """Black-Scholes delta and gamma of the liability at volatility ``vol`` (``derivative.path_greeks``
    of ``paths``, else ``derivative.greeks``; zeros for a derivative without them); after maturity
    both are 0."""
    zeros = tf.zeros_like(spot)
    path_greeks = getattr(derivative, "path_greeks", None)
    greeks = getattr(derivative, "greeks", None)
    if path_greeks is not None:
        d, g = path_greeks(paths, spot, tau, vol)
    elif greeks is not None:
        d, g = greeks(spot, tau, vol)
    else:
        return zeros, zeros
    live = tau > 0
    return tf.where(live, tf.cast(d, spot.dtype), zeros), tf.where(live, tf.cast(g, spot.dtype), zeros)


def make_batch(paths: MarketPaths, derivative, instruments) -> dict:
    """One training/evaluation batch (see module docstring) from paths, **batch-major**.

    Keras slices, shuffles and (under tf.distribute) shards data along axis 0, so batches cross the
    ``fit`` boundary batch-first: every ``[T, B, ...]`` tensor of the module docstring is delivered
    as ``[B, T, ...]``.  The hedger turns them back to time-major (:func:`time_major`).

    >>> import deephedge_tf as dh
    >>> market, call = dh.GBM(s0=100.0, steps=5, dt=1 / 365), dh.EuropeanOption(strike=100.0)
    >>> batch = make_batch(market.simulate(4), call, [dh.Spot()])
    >>> feature_names(call), tuple(batch["obs"]["features"].shape), tuple(batch["returns"].shape)
    (('time', 'log_moneyness', 'vol'), (4, 5, 3), (4, 5, 1))
    >>> tuple(time_major(batch)["returns"].shape)
    (5, 4, 1)
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
