"""Floating-grid Heston premium tables against the direct Fourier pricer."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from deephedge_tf.pricing.heston import heston_price
from deephedge_tf.pricing.tables import HestonPremiumTable, default_v_max

# DH-KFAC reference model.
MODEL = dict(kappa=8.0, theta=0.0625, xi=1.0, rho=-0.7)
V0 = 0.0625
TAUS = np.array([10, 20, 40, 80, 120]) / 250.0
MONEYNESS = np.array([0.9, 0.97, 1.0, 1.03, 1.1])
M_GRID, TAU_GRID = (x.ravel() for x in np.meshgrid(MONEYNESS, TAUS))  # J = 25 options


@pytest.fixture(scope="module")
def table():
    return HestonPremiumTable(M_GRID, TAU_GRID, **MODEL, v0=V0)


def direct(variance):
    """[n] variances -> [n, J] premium / spot from the pricer itself."""
    v = np.asarray(variance, dtype=np.float64)[:, None]
    return heston_price(1.0, M_GRID[None, :], TAU_GRID[None, :], v, MODEL["kappa"], MODEL["theta"],
                        MODEL["xi"], MODEL["rho"], is_call=M_GRID[None, :] >= 1.0)


def test_interpolation_error_against_direct_pricer(table):
    """Random variances, half uniform in v and half uniform in sqrt(v) (where prices bend most),
    plus both ends.  Measured with the defaults (64 nodes, cubic in sqrt(v), v_max = 0.8635):
    max abs error of premium / spot 1.9e-8 (float64) and 2.3e-8 (float32); linear interpolation
    in sqrt(v) on the same nodes gives 1.7e-5 and would need ~270 nodes for 1e-6."""
    rng = np.random.default_rng(7)
    v_max = table.v_max
    v = np.concatenate([rng.uniform(0.0, v_max, 100), rng.uniform(0.0, np.sqrt(v_max), 100)**2,
                        [0.0, 1e-8, V0, v_max]])
    ref = direct(v)
    out64 = table(tf.constant(v, tf.float64))
    out32 = table(tf.constant(v, tf.float32))
    assert out64.dtype == tf.float64 and out32.dtype == tf.float32
    assert out64.shape == (v.size, 25)
    assert np.abs(out64.numpy() - ref).max() < 1e-7
    assert np.abs(out32.numpy() - ref).max() < 1e-7


def test_nodes_reproduce_table_and_put_call_choice(table):
    np.testing.assert_array_equal(table.is_call, M_GRID >= 1.0)
    assert table.values.shape == (64, 25) and table.values.dtype == np.float64
    assert table.variance_nodes[0] == 0.0 and table.variance_nodes[-1] == pytest.approx(table.v_max)
    np.testing.assert_allclose(np.diff(np.sqrt(table.variance_nodes)), np.sqrt(table.v_max) / 63)
    at_nodes = table(table.variance_nodes).numpy()
    np.testing.assert_allclose(at_nodes, table.values, rtol=0, atol=1e-15)
    # Out-of-the-money options: puts below the spot, calls at and above it.
    v = np.array([0.02, 0.2])
    calls = heston_price(1.0, M_GRID, TAU_GRID, v[:, None], **MODEL, is_call=True)
    puts = heston_price(1.0, M_GRID, TAU_GRID, v[:, None], **MODEL, is_call=False)
    expected = np.where(M_GRID >= 1.0, calls, puts)
    np.testing.assert_allclose(table(v).numpy(), expected, rtol=0, atol=1e-7)
    # Out of the money = the cheaper side of put-call parity (C - P = 1 - m at zero rates).
    np.testing.assert_allclose(expected, np.minimum(calls, puts), rtol=0, atol=1e-15)


def test_shapes_and_tf_function(table):
    v = tf.random.uniform([7, 3], 0.0, 0.3, dtype=tf.float32, seed=1)
    assert table(v).shape == (7, 3, 25)
    assert table(tf.constant(0.0625, tf.float64)).shape == (25,)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def premiums(variance):
        return table(variance)

    np.testing.assert_allclose(premiums(v).numpy(), table(v).numpy(), rtol=0, atol=1e-7)


def test_beyond_v_max_and_negative_variance(table):
    """Beyond v_max: linear in sqrt(v) with the last node's slope, clipped to the no-arbitrage
    bounds [0, 1] (calls) and [0, m] (puts).  Measured extrapolation error vs the pricer:
    3e-5 at 1.1 v_max, 1.5e-3 at 2 v_max (v_max is a 1e-6 stationary quantile)."""
    v_max = table.v_max
    s = np.sqrt(v_max) * np.array([1.0, 1.05, 1.2, 1.5])
    out = table(s**2).numpy()
    # Exactly linear in sqrt(v) past the last node.
    slope = (out[1] - out[0]) / (s[1] - s[0])
    linear = out[0] + slope * (s[2:, None] - s[0])
    np.testing.assert_allclose(out[2:], linear, rtol=1e-12, atol=1e-15)
    assert np.all(slope > 0)
    # Continuous at v_max, and close to the pricer just beyond.
    just_below = table(np.array([v_max * (1 - 1e-12)])).numpy()[0]
    np.testing.assert_allclose(just_below, out[0], atol=1e-12)
    assert np.abs(table(np.array([1.1 * v_max])).numpy() - direct([1.1 * v_max])).max() < 1e-4
    # Absurd variances stay within the bounds; negative variance reads as 0.
    huge = table(np.array([1e8])).numpy()[0]
    np.testing.assert_array_equal(huge, np.where(M_GRID >= 1.0, 1.0, M_GRID))
    np.testing.assert_array_equal(table(np.array([-1e-3])).numpy(), table(np.array([0.0])).numpy())


def test_default_v_max():
    # Stationary law of the reference model: Gamma(shape 2 kappa theta / xi^2 = 1, scale 1/16).
    expected = stats.gamma.ppf(1 - 1e-6, 1.0, scale=1.0 / 16.0)
    model = {k: MODEL[k] for k in ("kappa", "theta", "xi")}
    assert default_v_max(**model) == pytest.approx(expected)
    assert expected == pytest.approx(np.log(1e6) / 16.0)
    assert default_v_max(8.0, 0.0625, 1.0, v0=0.5) == pytest.approx(2.0)  # 4 * v0 wins
    small = HestonPremiumTable([1.0], [0.1], **MODEL, v_max=0.3, num_nodes=8)
    assert small.v_max == 0.3 and small.values.shape == (8, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(moneyness=[0.9, 1.0], maturities=[0.1]), "same length"),
        (dict(moneyness=[0.0, 1.0], maturities=[0.1, 0.1]), "'moneyness'.*> 0"),
        (dict(moneyness=[0.9, 1.0], maturities=[0.1, -0.1]), "'maturities'.*> 0"),
        (dict(moneyness=[0.9, 1.0], maturities=[0.1, 0.0]), "'maturities'.*> 0"),
        (dict(moneyness=[[1.0]], maturities=[[0.1]]), "1-D"),
        (dict(moneyness=[1.0], maturities=[0.1], num_nodes=3), "num_nodes"),
        (dict(moneyness=[1.0], maturities=[0.1], xi=0.0), "HestonPremiumTable: xi must be > 0.0"),
        (dict(moneyness=[1.0], maturities=[0.1], rho=-1.5), "HestonPremiumTable: rho must be >= -1.0 and <= 1.0"),
        (dict(moneyness=[1.0], maturities=[0.1], theta=0.0), "v_max"),
    ],
)
def test_errors(kwargs, match):
    args = dict(MODEL, **kwargs)
    with pytest.raises(ValueError, match=match):
        HestonPremiumTable(**args)


def test_rejects_integer_variance(table):
    with pytest.raises(ValueError, match="float32 or float64"):
        table(tf.constant([1], tf.int32))


# -- fixed-strike table (HestonStrikeTable) -------------------------------------------------------------------

STRIKE_MODELS = {  # Buehler et al.'s Heston (vol of vol 2) and the DH-KFAC reference model, 10 daily steps
    "buehler": dict(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7, steps=10, dt=1 / 365),
    "dhkfac": dict(s0=100.0, v0=0.0625, kappa=8.0, theta=0.0625, xi=1.0, rho=-0.7, steps=10, dt=1 / 250),
}
STRIKES = np.array([85.0, 95.0, 100.0, 105.0, 115.0])


@pytest.mark.parametrize("name", sorted(STRIKE_MODELS))
def test_strike_table_matches_fourier_on_simulated_paths(name):
    """A fixed grid's prices on simulated Heston paths (every step, five strikes), table against the Fourier
    pricer.  Max errors on S ~ 100 measured on these paths: 3.8e-4 (vol of vol 2) and 2.1e-6 (reference model);
    on 300 paths x 30 steps, 2.0e-3 and 9e-6 (2026-11-28).  Bounds: about 2.5x this test's."""
    from deephedge_tf.instruments.hedges import FixedGrid
    from deephedge_tf.market.models import Heston

    p = STRIKE_MODELS[name]
    market = Heston(**p, seed=11, dtype="float64")
    grid = FixedGrid(strikes=tuple(STRIKES), expiry_step=p["steps"]).for_market(market)
    assert type(grid.pricer).__name__ == "HestonStrikeTable"
    paths = market.simulate(24)
    tabled = grid.tensors(paths).premiums.numpy()                             # [T, B, J]
    exact = FixedGrid(strikes=tuple(STRIKES), expiry_step=p["steps"],
                      pricer=market.option_pricer()).for_market(market).tensors(paths).premiums.numpy()
    bound = {"buehler": 1e-3, "dhkfac": 5e-6}[name]
    assert np.abs(tabled - exact).max() < bound
    assert np.abs(tabled - exact).mean() < bound / 10


def test_strike_table_edges_intrinsic_and_unknown_maturities():
    from deephedge_tf.pricing.tables import HestonStrikeTable

    table = HestonStrikeTable([5 / 365, 10 / 365], kappa=1.0, theta=0.04, xi=2.0, rho=-0.7, v0=0.04)
    spot = np.array([[90.0], [100.0], [110.0]])
    is_call = np.array([True, False])
    expired = table(spot, np.array([100.0, 100.0]), np.zeros((3, 1)), np.full((3, 1), 0.04), is_call).numpy()
    np.testing.assert_allclose(expired, [[0.0, 10.0], [0.0, 0.0], [10.0, 0.0]])
    # Variances beyond the grid, zero and negative: finite, inside the no-arbitrage bounds, puts by parity.
    v = np.array([[-0.01], [0.0], [3.0 * table.v_max]])
    prices = table(np.full((3, 1), 100.0), np.array([100.0, 100.0]), np.full((3, 1), 10 / 365), v, is_call).numpy()
    assert np.all(np.isfinite(prices)) and np.all(prices >= 0) and np.all(prices[:, 0] <= 100.0)
    np.testing.assert_allclose(prices[:, 0], prices[:, 1], atol=1e-9)          # ATM: call = put at zero rates
    with pytest.raises(tf.errors.InvalidArgumentError, match="neither 0 nor one of the table's maturities"):
        table(spot, np.array([100.0]), np.full((3, 1), 7 / 365), np.full((3, 1), 0.04), np.array([True]))


@pytest.mark.parametrize("kappa, theta", [(1.0, 0.0), (0.0, 0.04), (0.0, 0.0)])
def test_strike_table_without_mean_reversion_or_long_run_variance(kappa, theta):
    """kappa theta = 0 (a variance of 0 stays 0, where options have no time value): the table builds and
    agrees with the Fourier pricer (measured ~4e-6 on S = 100)."""
    from deephedge_tf.pricing.heston import heston_price_tf
    from deephedge_tf.pricing.tables import HestonStrikeTable

    mats = np.array([1, 5, 10]) / 365
    table = HestonStrikeTable(mats, kappa=kappa, theta=theta, xi=0.5, rho=-0.7, v0=0.04)
    spot, v = np.full((3, 1), 100.0), np.array([[0.0], [0.001], [0.04]])
    strikes = np.array([90.0, 100.0, 110.0])
    got = table(spot, strikes, np.full((3, 1), mats[1]), v, strikes >= 100).numpy()
    want = heston_price_tf(spot, strikes, mats[1], v, kappa, theta, 0.5, -0.7, strikes >= 100).numpy()
    assert np.abs(got - want).max() < 2e-5


def test_strike_table_names_itself_and_the_bad_argument():
    from deephedge_tf.errors import DeepHedgeError
    from deephedge_tf.pricing.tables import HestonStrikeTable

    model = dict(kappa=1.0, theta=0.04, xi=0.5, rho=-0.7)
    with pytest.raises(DeepHedgeError, match="HestonStrikeTable: 'maturities' must be finite and > 0"):
        HestonStrikeTable([0.0, 0.1], **model)
    with pytest.raises(DeepHedgeError, match="HestonStrikeTable: 'num_moneyness_nodes' must be an integer >= 4"):
        HestonStrikeTable([0.1], **model, num_moneyness_nodes=3)
    with pytest.raises(DeepHedgeError, match="HestonStrikeTable: v0 must be >= 0"):
        HestonStrikeTable([0.1], **model, v0=-0.01)
