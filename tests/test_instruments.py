"""Derivative payoffs and hedging-instrument tensors against independent numpy computations."""

import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.instruments.derivatives import CallSpread, Cliquet, EuropeanOption, LookbackCall, VarianceSwap
from deephedge_tf.instruments.hedges import (
    BlackScholesPremiums, FixedGrid, FloatingGrid, HedgeTensors, Spot, VarianceSwapHedge, black_scholes_pricer,
    hedge_tensors, option_is_call, variance_swap_weights)
from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.pricing.black_scholes import bs_price


def make_paths(spot, variance=None, dt=0.01):
    spot = np.asarray(spot, np.float64)
    variance = np.full_like(spot, 0.04) if variance is None else np.asarray(variance, np.float64)
    iv = np.concatenate([np.zeros_like(spot[:1]), np.cumsum(0.5 * (variance[1:] + variance[:-1]) * dt, 0)])
    return MarketPaths(dt=dt, spot=tf.constant(spot), variance=tf.constant(variance),
                       integrated_variance=tf.constant(iv))


@pytest.fixture
def random_paths():
    rng = np.random.default_rng(0)
    steps, b = 12, 7
    lr = rng.normal(0, 0.05, (steps, b))
    spot = np.vstack([np.ones((1, b)), np.exp(np.cumsum(lr, 0))])
    var = rng.uniform(0.01, 0.2, (steps + 1, b))
    return make_paths(spot, var)


def test_european_and_spread_and_lookback(random_paths):
    s = random_paths.spot.numpy()
    np.testing.assert_allclose(EuropeanOption(1.0).payoff(random_paths), np.maximum(s[-1] - 1, 0))
    np.testing.assert_allclose(EuropeanOption(1.02, is_call=False, maturity_steps=5).payoff(random_paths),
                               np.maximum(1.02 - s[5], 0))
    np.testing.assert_allclose(CallSpread(0.95, 1.05).payoff(random_paths),
                               np.clip(s[-1] - 0.95, 0, 0.1))
    np.testing.assert_allclose(LookbackCall(1.03, maturity_steps=8).payoff(random_paths),
                               np.maximum(s[:9].max(0) - 1.03, 0))


def test_cliquet_against_loop(random_paths):
    s = random_paths.spot.numpy()
    c = Cliquet(reset_every=4, local_cap=0.03, local_floor=-0.02, global_floor=0.01)
    expected = np.zeros(s.shape[1])
    for b in range(s.shape[1]):
        total = 0.0
        for i in range(1, 4):
            r = s[4 * i, b] / s[4 * (i - 1), b] - 1
            total += min(max(r, -0.02), 0.03)
        expected[b] = max(total, 0.01)
    np.testing.assert_allclose(c.payoff(random_paths), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="does not divide"):
        Cliquet(reset_every=5, local_cap=0.1).payoff(random_paths)


def test_variance_swap_payoff(random_paths):
    s = random_paths.spot.numpy()
    realised = (np.log(s[1:] / s[:-1]) ** 2).sum(0) / (12 * 0.01)
    np.testing.assert_allclose(VarianceSwap(0.04).payoff(random_paths), realised - 0.04, rtol=1e-12)


def test_maturity_outside_paths_is_an_error(random_paths):
    with pytest.raises(ValueError, match="outside"):
        EuropeanOption(1.0, maturity_steps=13).payoff(random_paths)


def test_spot_returns_equal_holdings_pnl(random_paths):
    h = Spot(cost=2e-4).tensors(random_paths)
    s = random_paths.spot.numpy()
    assert h.returns.shape == (12, 7, 1) and h.names == ("spot",)
    np.testing.assert_allclose(h.premiums[..., 0], s[:-1])
    np.testing.assert_allclose(h.cost_rates, 2e-4)
    # trades u_k held to T == holdings delta_k = cumsum(u) rebalanced each step
    u = np.random.default_rng(1).normal(size=(12, 7))
    trades_pnl = (u * h.returns[..., 0].numpy()).sum(0)
    holdings_pnl = (np.cumsum(u, 0) * np.diff(s, axis=0)).sum(0)
    np.testing.assert_allclose(trades_pnl, holdings_pnl, rtol=1e-10)


def test_floating_grid_against_loop(random_paths):
    moneyness, maturities = (0.95, 1.0, 1.05), (3, 5, 12)
    prem = BlackScholesPremiums(moneyness, [m * 0.01 for m in maturities])
    grid = FloatingGrid(moneyness, maturities, prem, cost=0.01)
    h = grid.tensors(random_paths)
    assert h.names == ("P0.95x3", "C1x5", "C1.05x12")
    s, v = random_paths.spot.numpy(), random_paths.variance.numpy()
    steps = 12
    for j, (m, tau) in enumerate(zip(moneyness, maturities)):
        for k in range(steps):
            for b in range(7):
                call = m >= 1
                premium = s[k, b] * float(bs_price(1.0, m, tau * 0.01, np.sqrt(v[k, b]), is_call=call))
                assert float(h.premiums[k, b, j]) == pytest.approx(premium, rel=1e-12)
                if k + tau <= steps:
                    strike = m * s[k, b]
                    payoff = max(s[k + tau, b] - strike, 0) if call else max(strike - s[k + tau, b], 0)
                    assert h.mask[k, b, j] == 1
                    assert float(h.returns[k, b, j]) == pytest.approx(payoff - premium, rel=1e-12, abs=1e-15)
                else:
                    assert h.mask[k, b, j] == 0 and h.returns[k, b, j] == 0


def test_floating_grid_put_call_convention_and_errors():
    np.testing.assert_array_equal(option_is_call([0.9, 0.999, 1.0, 1.1]), [False, False, True, True])
    with pytest.raises(ValueError, match="same, non-zero length"):
        FloatingGrid((1.0,), (1, 2), BlackScholesPremiums([1.0], [0.1]))
    with pytest.raises(ValueError, match="> 0"):
        FloatingGrid((0.0,), (1,), BlackScholesPremiums([1.0], [0.1]))


def test_fixed_grid_against_loop(random_paths):
    grid = FixedGrid(strikes=(0.9, 1.1), expiry_step=8, pricer=black_scholes_pricer, call_from=1.0)
    h = grid.tensors(random_paths)
    s, v = random_paths.spot.numpy(), random_paths.variance.numpy()
    for k in range(12):
        for j, (strike, call) in enumerate(((0.9, False), (1.1, True))):
            if k < 8:
                price = bs_price(s[k], strike, (8 - k) * 0.01, np.sqrt(v[k]), is_call=call).numpy()
                payoff = np.maximum(s[8] - strike, 0) if call else np.maximum(strike - s[8], 0)
                np.testing.assert_allclose(h.premiums[k, :, j], price, rtol=1e-12)
                np.testing.assert_allclose(h.returns[k, :, j], payoff - price, rtol=1e-10, atol=1e-15)
                assert np.all(h.mask[k, :, j] == 1)
            else:
                assert np.all(h.mask[k, :, j] == 0) and np.all(h.returns[k, :, j] == 0)


def test_variance_swap_weights_converge_to_continuous_L():
    """Discrete L(t, v) of the trapezoid scheme -> Buehler et al.'s
    L(t, v) = (v - b)/alpha (1 - exp(-alpha (T - t))) + b (T - t) as dt -> 0."""
    kappa, theta, v, horizon = 1.0, 0.04, 0.09, 30 / 365
    for steps, tol in ((30, 1e-5), (3000, 1e-9)):
        dt = horizon / steps
        w = variance_swap_weights(steps, dt, kappa)
        discrete = steps * dt * theta + (v - theta) * dt * w[steps]
        cont = (v - theta) / kappa * (1 - np.exp(-kappa * horizon)) + theta * horizon
        assert discrete == pytest.approx(cont, abs=tol)


def test_variance_swap_hedge_terminal_value(random_paths):
    h = VarianceSwapHedge(kappa=2.0, theta=0.05).tensors(random_paths)
    iv = random_paths.integrated_variance.numpy()
    # R_0 + P_0 = S2_T = integrated variance at the horizon
    np.testing.assert_allclose(h.returns[0, :, 0] + h.premiums[0, :, 0], iv[-1], rtol=1e-12)
    # At k = 0 the premium is v-dependent expectation of total integrated variance
    w = variance_swap_weights(12, 0.01, 2.0)
    v0 = random_paths.variance.numpy()[0]
    np.testing.assert_allclose(h.premiums[0, :, 0], 0.01 * (12 * 0.05 + (v0 - 0.05) * w[12]), rtol=1e-12)


def test_concat_stacks_instruments(random_paths):
    prem = BlackScholesPremiums([1.0], [0.05])
    h = hedge_tensors([Spot(), FloatingGrid((1.0,), (5,), prem)], random_paths)
    assert isinstance(h, HedgeTensors) and h.num_instruments == 2
    for t in (h.premiums, h.returns, h.mask, h.cost_rates):
        assert t.shape == (12, 7, 2)
    np.testing.assert_allclose(h.cost_rates[..., 0], 1e-4)
    np.testing.assert_allclose(h.cost_rates[..., 1], 1e-2)
