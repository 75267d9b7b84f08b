"""Black-Scholes prices and Greeks at zero interest rate, vectorised in TensorFlow.

All functions broadcast over their arguments (Python numbers, numpy arrays or tensors) and return a
``tf.Tensor``.  Dtype: the dtype of the first tensor argument if any, otherwise float64 (pricing from
plain numbers should be exact to float64 precision); pass ``dtype=`` to force one.

Units: ``tau`` in years, ``vol`` annualised; Greeks per unit of spot (delta, gamma), per unit of
volatility (vega) and per year (theta, the derivative with respect to calendar time).

Limits ``tau * vol**2 -> 0`` are handled without NaNs: the price tends to intrinsic value, delta to
the indicator of being in the money (1/2 for a call exactly at the money), gamma and vega to 0.

    >>> round(float(bs_price(100.0, 100.0, 30 / 365, 0.2)), 4)          # ATM call, 30 days
    2.2872
    >>> round(float(bs_delta(100.0, 100.0, 30 / 365, 0.2, is_call=False)), 4)
    -0.4886
    >>> round(float(bs_implied_vol(bs_price(100.0, 95.0, 0.5, 0.3), 100.0, 95.0, 0.5)), 6)
    0.3
"""

from __future__ import annotations

import math

import tensorflow as tf

from deephedge_tf.dtypes import as_float_dtype, to_float


def _infer_dtype(args, dtype):
    if dtype is not None:
        return as_float_dtype(dtype)
    for a in args:
        if isinstance(a, (tf.Tensor, tf.Variable)) and a.dtype.is_floating:
            return as_float_dtype(a.dtype)
    return tf.float64


def _prepare(spot, strike, tau, vol, dtype):
    dt = _infer_dtype((spot, strike, tau, vol), dtype)
    return to_float(spot, dt), to_float(strike, dt), to_float(tau, dt), to_float(vol, dt)


def _d1_d2(spot, strike, tau, vol):
    """d1, d2 and total standard deviation; safe where the standard deviation is 0."""
    std = vol * tf.sqrt(tf.maximum(tau, 0.0))
    positive = std > 0
    safe_std = tf.where(positive, std, tf.ones_like(std))
    log_m = tf.math.log(spot / strike)
    d1 = log_m / safe_std + 0.5 * safe_std
    # Where std == 0 the sign of log-moneyness decides (+-inf); exactly ATM gives d1 = 0 -> delta 1/2.
    limit = tf.where(log_m > 0, tf.constant(math.inf, d1.dtype), tf.constant(-math.inf, d1.dtype))
    limit = tf.where(log_m == 0, tf.zeros_like(limit), limit)
    d1 = tf.where(positive, d1, limit)
    d2 = tf.where(positive, d1 - safe_std, limit)
    return d1, d2, std, positive


def _norm_cdf(x):
    return 0.5 * tf.math.erfc(-x / math.sqrt(2.0))


def _norm_pdf(x):
    return tf.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _call_mask(is_call, like):
    return tf.broadcast_to(tf.cast(is_call, tf.bool), tf.shape(like))


def bs_price(spot, strike, tau, vol, is_call=True, dtype=None) -> tf.Tensor:
    """Black-Scholes price of a European call (or put) at r = 0."""
    spot, strike, tau, vol = _prepare(spot, strike, tau, vol, dtype)
    d1, d2, std, positive = _d1_d2(spot, strike, tau, vol)
    call = spot * _norm_cdf(d1) - strike * _norm_cdf(d2)
    # At std == 0, N(+-inf) gives the intrinsic value except exactly ATM, where it is 0 as well.
    call = tf.where(positive, call, tf.maximum(spot - strike, 0.0))
    put = call - spot + strike  # put-call parity at r = 0
    mask = _call_mask(is_call, call)
    return tf.where(mask, call, put)


def bs_delta(spot, strike, tau, vol, is_call=True, dtype=None) -> tf.Tensor:
    """dPrice/dSpot."""
    spot, strike, tau, vol = _prepare(spot, strike, tau, vol, dtype)
    d1, _, _, _ = _d1_d2(spot, strike, tau, vol)
    call = _norm_cdf(d1)
    return tf.where(_call_mask(is_call, call), call, call - 1.0)


def bs_gamma(spot, strike, tau, vol, dtype=None) -> tf.Tensor:
    """d2Price/dSpot2 (same for calls and puts); 0 where tau * vol**2 == 0."""
    spot, strike, tau, vol = _prepare(spot, strike, tau, vol, dtype)
    d1, _, std, positive = _d1_d2(spot, strike, tau, vol)
    safe_std = tf.where(positive, std, tf.ones_like(std))
    return tf.where(positive, _norm_pdf(d1) / (spot * safe_std), tf.zeros_like(d1))


def bs_vega(spot, strike, tau, vol, dtype=None) -> tf.Tensor:
    """dPrice/dVol (per unit of volatility, not per vol point)."""
    spot, strike, tau, vol = _prepare(spot, strike, tau, vol, dtype)
    d1, _, _, positive = _d1_d2(spot, strike, tau, vol)
    return tf.where(positive, spot * _norm_pdf(d1) * tf.sqrt(tf.maximum(tau, 0.0)), tf.zeros_like(d1))


def bs_theta(spot, strike, tau, vol, dtype=None) -> tf.Tensor:
    """dPrice/dt per year (calendar time; = -dPrice/dtau); same for calls and puts at r = 0."""
    spot, strike, tau, vol = _prepare(spot, strike, tau, vol, dtype)
    d1, _, _, positive = _d1_d2(spot, strike, tau, vol)
    safe_tau = tf.where(positive, tau, tf.ones_like(tau))
    theta = -spot * _norm_pdf(d1) * vol / (2.0 * tf.sqrt(safe_tau))
    return tf.where(positive, theta, tf.zeros_like(theta))


def bs_implied_vol(price, spot, strike, tau, is_call=True, dtype=None, max_vol=10.0,
                   iterations=100) -> tf.Tensor:
    """Implied volatility by bisection on [0, max_vol] (robust, vectorised, no starting guess).

    Bisection halves the bracket each iteration, so 100 iterations reach the float64 resolution of
    the price for any vol below ``max_vol``.  Prices outside the no-arbitrage bounds (below intrinsic
    value, above ``spot`` for a call or ``strike`` for a put), ``tau <= 0``, or needing a volatility
    above ``max_vol`` give NaN.
    """
    dt = _infer_dtype((price, spot, strike, tau), dtype)
    price = to_float(price, dt)
    spot, strike, tau, _ = _prepare(spot, strike, tau, 0.0, dt)
    shape = tf.broadcast_dynamic_shape(
        tf.broadcast_dynamic_shape(tf.shape(price), tf.shape(spot)),
        tf.broadcast_dynamic_shape(tf.shape(strike), tf.shape(tau)),
    )
    is_call_b = tf.broadcast_to(tf.cast(is_call, tf.bool), shape)
    # Work with the call price: bisection on a function increasing in vol.
    call_price = tf.where(is_call_b, price, price + spot - strike)
    call_price = tf.broadcast_to(call_price, shape)
    lo = tf.zeros(shape, dt)
    hi = tf.fill(shape, to_float(max_vol, dt))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = bs_price(spot, strike, tau, mid, True, dtype=dt) > call_price
        hi = tf.where(above, mid, hi)
        lo = tf.where(above, lo, mid)
    vol = 0.5 * (lo + hi)
    lower = tf.maximum(spot - strike, 0.0)
    upper = bs_price(spot, strike, tau, to_float(max_vol, dt), True, dtype=dt)
    valid = (call_price >= lower) & (call_price <= upper) & (tau > 0)
    return tf.where(valid, vol, tf.constant(math.nan, dt))
