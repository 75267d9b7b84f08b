"""Black-Scholes pricer against published values (pfhedge's test suite), scipy and identities."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from deephedge_tf.pricing.black_scholes import (
    bs_delta, bs_gamma, bs_implied_vol, bs_price, bs_theta, bs_vega)


def scipy_call(s, k, t, v):
    d1 = (np.log(s / k) + 0.5 * v * v * t) / (v * np.sqrt(t))
    return s * stats.norm.cdf(d1) - k * stats.norm.cdf(d1 - v * np.sqrt(t))


def test_published_atm_values():
    # pfhedge publishes these from float32 computations: they agree with the exact values to ~1e-7.
    assert float(bs_price(1.0, 1.0, 1.0, 0.2)) == pytest.approx(0.0796557924, abs=1e-6)
    assert float(bs_price(1.0, 1.0, 1.0, 0.2, is_call=False)) == pytest.approx(0.0796557924, abs=1e-6)
    assert float(bs_delta(1.0, 1.0, 1.0, 0.2)) == pytest.approx(0.5398278962, abs=1e-6)
    assert float(bs_delta(1.0, 1.0, 1.0, 0.2, is_call=False)) == pytest.approx(-0.4601721, abs=1e-6)
    assert float(bs_gamma(1.0, 1.0, 1.0, 0.2)) == pytest.approx(1.9847627374, abs=1e-6)
    # Exact ATM closed forms at float64 precision: price 2N(s/2) - 1, delta N(s/2), s = sigma sqrt(T).
    assert float(bs_price(1.0, 1.0, 1.0, 0.2)) == pytest.approx(2 * stats.norm.cdf(0.1) - 1, abs=1e-14)
    assert float(bs_delta(1.0, 1.0, 1.0, 0.2)) == pytest.approx(stats.norm.cdf(0.1), abs=1e-14)
    assert float(bs_gamma(1.0, 1.0, 1.0, 0.2)) == pytest.approx(stats.norm.pdf(0.1) / 0.2, abs=1e-12)


def test_published_vega_and_theta():
    taus = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(bs_vega(1.0, 1.0, taus, 0.2).numpy(), [0.1261, 0.1782, 0.2182], atol=1e-3)
    np.testing.assert_allclose(
        bs_theta(100.0, 100.0, taus, 0.2).numpy(), [-12.6094, -8.9117, -7.2727], atol=1e-3)


def test_limits_published():
    e = math.e
    # log-moneyness +-1 with tau -> 0 or vol = 0
    assert float(bs_price(e, 1.0, 0.0, 0.2)) == pytest.approx(e - 1, abs=1e-6)
    assert float(bs_price(e, 1.0, 1.0, 0.0)) == pytest.approx(e - 1, abs=1e-6)
    assert float(bs_price(1 / e, 1.0, 0.0, 0.2, is_call=False)) == pytest.approx(1 - 1 / e, abs=1e-6)
    # ATM at tau = 0: price 0, delta +-1/2, no NaN anywhere
    assert float(bs_price(1.0, 1.0, 0.0, 0.2)) == 0.0
    assert float(bs_delta(1.0, 1.0, 0.0, 0.2)) == 0.5
    assert float(bs_delta(1.0, 1.0, 0.0, 0.2, is_call=False)) == -0.5
    for f in (bs_gamma, bs_vega, bs_theta):
        assert np.isfinite(f(1.0, 1.0, 0.0, 0.2).numpy())


def test_against_scipy_and_put_call_parity():
    rng = np.random.default_rng(0)
    s = rng.uniform(50, 150, 200)
    k = rng.uniform(50, 150, 200)
    t = rng.uniform(0.01, 3, 200)
    v = rng.uniform(0.05, 1.0, 200)
    call = bs_price(s, k, t, v).numpy()
    put = bs_price(s, k, t, v, is_call=False).numpy()
    np.testing.assert_allclose(call, scipy_call(s, k, t, v), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(call - put, s - k, atol=1e-9)


def test_greeks_match_finite_differences_and_vega_identity():
    s, k, t, v = 1.1, 1.0, 0.5, 0.3
    h = 1e-5
    p = lambda **kw: float(bs_price(**{**dict(spot=s, strike=k, tau=t, vol=v), **kw}))  # noqa: E731
    assert float(bs_delta(s, k, t, v)) == pytest.approx((p(spot=s + h) - p(spot=s - h)) / (2 * h), rel=1e-7)
    assert float(bs_gamma(s, k, t, v)) == pytest.approx(
        (p(spot=s + 1e-4) - 2 * p() + p(spot=s - 1e-4)) / 1e-8, rel=1e-5)
    assert float(bs_vega(s, k, t, v)) == pytest.approx((p(vol=v + h) - p(vol=v - h)) / (2 * h), rel=1e-7)
    assert float(bs_theta(s, k, t, v)) == pytest.approx(-(p(tau=t + h) - p(tau=t - h)) / (2 * h), rel=1e-7)
    # vega = S^2 sigma T gamma
    assert float(bs_vega(s, k, t, v)) == pytest.approx(s * s * v * t * float(bs_gamma(s, k, t, v)), rel=1e-12)


def test_dtype_follows_tensor_inputs():
    assert bs_price(1.0, 1.0, 1.0, 0.2).dtype == tf.float64
    assert bs_price(tf.constant([1.0]), 1.0, 1.0, 0.2).dtype == tf.float32
    assert bs_price(tf.constant([1.0], tf.float64), 1.0, 1.0, 0.2, dtype="float32").dtype == tf.float32


def test_gradients_are_finite_at_zero_maturity():
    spot = tf.Variable([0.9, 1.0, 1.1], dtype=tf.float64)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(bs_price(spot, 1.0, 0.0, 0.2))
    assert np.all(np.isfinite(tape.gradient(y, spot).numpy()))


def test_implied_vol_roundtrip_and_bounds():
    rng = np.random.default_rng(1)
    s = np.full(100, 100.0)
    k = rng.uniform(70, 140, 100)
    t = rng.uniform(0.02, 2, 100)
    v = rng.uniform(0.05, 1.5, 100)
    is_call = k >= s
    price = bs_price(s, k, t, v, is_call=is_call)
    iv = bs_implied_vol(price, s, k, t, is_call=is_call).numpy()
    np.testing.assert_allclose(iv, v, rtol=1e-6)
    bad = bs_implied_vol([-1.0, 0.5, 150.0], 100.0, 100.0, 1.0).numpy()
    assert np.isnan(bad[0]) and np.isfinite(bad[1]) and np.isnan(bad[2])
