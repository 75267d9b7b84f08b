"""Under the pricing model every hedging instrument's return is a martingale increment: its mean is
zero within Monte Carlo error (3 standard errors, fixed seeds, float64)."""

import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.instruments.hedges import (
    BlackScholesPremiums, FixedGrid, FloatingGrid, Spot, VarianceSwapHedge, black_scholes_pricer)
from deephedge_tf.market.gbm import simulate_gbm
from deephedge_tf.market.heston import simulate_heston
from deephedge_tf.pricing.tables import HestonPremiumTable

HESTON = dict(v0=0.0625, kappa=8.0, theta=0.0625, xi=1.0, rho=-0.7)
DT = 1 / 250


def assert_zero_mean(returns, mask, label):
    """Per instrument: mean of per-path averages of the available trades, within 3 s.e. of 0."""
    r, m = np.asarray(returns), np.asarray(mask)
    for n in range(r.shape[-1]):
        avail = m[..., n].sum(0)
        assert avail.min() > 0, f"{label}[{n}] never tradable"
        per_path = (r[..., n] * m[..., n]).sum(0) / avail
        mean, se = per_path.mean(), per_path.std(ddof=1) / np.sqrt(per_path.size)
        assert abs(mean) < 3 * se, f"{label}[{n}]: mean {mean:.3e} vs s.e. {se:.3e}"
        # and at the first decision time alone
        mean0, se0 = r[0, :, n].mean(), r[0, :, n].std(ddof=1) / np.sqrt(r.shape[1])
        assert abs(mean0) < 3 * se0, f"{label}[{n}] at t0: mean {mean0:.3e} vs s.e. {se0:.3e}"


def test_gbm_spot_and_floating_grid_and_fixed_grid():
    paths = simulate_gbm(40000, 20, DT, sigma=0.3, seed=11, dtype=tf.float64)
    moneyness, maturities = (0.95, 1.0, 1.05, 1.0), (5, 5, 10, 20)
    grid = FloatingGrid(moneyness, maturities, BlackScholesPremiums(moneyness, [t * DT for t in maturities]))
    fixed = FixedGrid(strikes=(0.9, 1.0, 1.1), expiry_step=20, pricer=black_scholes_pricer, call_from=1.0)
    for inst in (Spot(), grid, fixed):
        h = inst.tensors(paths)
        assert_zero_mean(h.returns, h.mask, type(inst).__name__)


def test_gbm_floating_grid_detects_a_wrong_premium():
    """The check has power: premiums at a 10% wrong volatility give a clearly non-zero mean."""
    paths = simulate_gbm(40000, 20, DT, sigma=0.3, seed=11, dtype=tf.float64)
    wrong = FloatingGrid((1.0,), (10,), lambda v: BlackScholesPremiums((1.0,), (10 * DT,))(v * 1.21))
    h = wrong.tensors(paths)
    with pytest.raises(AssertionError):
        assert_zero_mean(h.returns, h.mask, "wrong")


def test_heston_floating_grid_and_variance_swap():
    paths = simulate_heston(40000, 30, DT, seed=5, dtype=tf.float64, **HESTON)
    moneyness, maturities = (0.97, 1.0, 1.03, 0.91, 1.09), (10, 10, 10, 30, 30)
    table = HestonPremiumTable(moneyness, [t * DT for t in maturities], kappa=8.0, theta=0.0625, xi=1.0,
                               rho=-0.7, v0=0.0625)
    for inst in (Spot(), FloatingGrid(moneyness, maturities, table),
                 VarianceSwapHedge(kappa=8.0, theta=0.0625)):
        h = inst.tensors(paths)
        assert_zero_mean(h.returns, h.mask, type(inst).__name__)


def test_buehler_variance_swap_is_a_martingale():
    paths = simulate_heston(40000, 30, 1 / 365, s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7,
                            seed=3, dtype=tf.float64)
    h = VarianceSwapHedge(kappa=1.0, theta=0.04).tensors(paths)
    assert_zero_mean(h.returns, h.mask, "S2")
