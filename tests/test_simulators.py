"""GBM and Heston simulators against closed forms and QuantLib, plus split invariance and validation.

Monte Carlo checks compare with independent references within 3 standard errors and no
discretisation allowance; the seeds are fixed, so the suite is deterministic.  With 8 x 100k paths
per case the pooled Heston call prices sat within 1 standard error of QuantLib (relative bias
< 0.15%), so the fixed-seed checks are not passing by luck of the seed.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.market.gbm import simulate_gbm
from deephedge_tf.market.heston import heston_expected_variance, simulate_heston
from deephedge_tf.market.paths import MarketPaths, validate_paths
from deephedge_tf.market.random import BLOCK_SIZE

F64 = tf.float64

# DH-KFAC's market (Feller condition 2 kappa theta >= xi^2 just binding) and Buehler et al.'s
# (Feller badly violated: xi^2 / (2 kappa theta) = 50, so QE lives mostly in its exponential branch).
# 50 steps of 1/250 = 0.2 y = 73/365 and 30 steps of 1/365 are whole days for QuantLib's Act/365.
DHKFAC = dict(params=dict(s0=1.0, v0=0.0625, kappa=8.0, theta=0.0625, xi=1.0, rho=-0.7),
              dt=1 / 250, steps=50, days=73)
BUEHLER = dict(params=dict(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7),
               dt=1 / 365, steps=30, days=30)


def within_3se(samples, expected, what):
    samples = np.asarray(samples, np.float64)
    se = samples.std(ddof=1) / math.sqrt(samples.size)
    err = samples.mean() - expected
    assert abs(err) <= 3 * se, f"{what}: mean {samples.mean():.6g} vs {expected:.6g} ({err / se:.2f} SE)"


def assert_same_paths(a: MarketPaths, b: MarketPaths):
    for name in ("spot", "variance", "integrated_variance"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy(), err_msg=name)


# -- split invariance and seeding ---------------------------------------------------------------
SIMULATORS = {
    "gbm": lambda **kw: simulate_gbm(steps=6, dt=0.01, sigma=0.3, mu=0.1, **kw),
    "heston_qe": lambda **kw: simulate_heston(steps=6, dt=0.01, **kw),
    "heston_qe_antithetic": lambda **kw: simulate_heston(steps=6, dt=0.01, antithetic=True, **kw),
    "heston_qe_sobol": lambda **kw: simulate_heston(steps=6, dt=0.01, sobol=True, **kw),
    "heston_qe_exponential_branch":
        lambda **kw: simulate_heston(steps=6, dt=0.01, **BUEHLER["params"], **kw),
    "heston_exact": lambda **kw: simulate_heston(steps=6, dt=0.01, scheme="exact", **kw),
}


def test_path_normals_are_the_documented_stream():
    """Block ``b`` is ``stateless_normal`` seeded with ``fold_in(seed, b)`` (``b`` a Python int): the stream
    every seeded result depends on, whatever the batch it is drawn for (drawing it in one graph once changed
    it through the dtype of ``b``)."""
    from deephedge_tf.market.random import as_seed, path_normals

    z = path_normals(7, 2100, 5, 2, start=1000)
    blocks = [tf.random.stateless_normal([5, BLOCK_SIZE, 2], tf.random.experimental.stateless_fold_in(as_seed(7), b))
              for b in (0, 1, 2, 3)]
    np.testing.assert_array_equal(z.numpy(), tf.concat(blocks, axis=1).numpy()[:, 1000:3100])


@pytest.mark.parametrize("start, num_paths", [(-1, 5), (0, 0)])
def test_path_normals_refuses_an_empty_or_negative_range(start, num_paths):
    from deephedge_tf.market.random import block_seeds, path_normals

    message = f"need start >= 0 and num_paths >= 1; got {start}, {num_paths}"
    with pytest.raises(ValueError, match=message):
        path_normals(0, num_paths, 3, 1, start=start)
    with pytest.raises(ValueError, match=message):
        list(block_seeds(0, start, num_paths))


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_split_invariance(name):
    sim = SIMULATORS[name]
    full = sim(num_paths=3000, seed=7)
    assert full.spot.shape == (7, 3000)
    # 1000 and 1500 are not block boundaries (BLOCK_SIZE = 1024); 2048 is.
    assert 1000 % BLOCK_SIZE and 1500 % BLOCK_SIZE and 2048 % BLOCK_SIZE == 0
    assert_same_paths(sim(num_paths=2000, start=1000, seed=7), full.slice_paths(1000, 3000))
    assert_same_paths(
        MarketPaths.concat([sim(num_paths=1500, seed=7), sim(num_paths=1500, start=1500, seed=7)]), full)
    assert_same_paths(sim(num_paths=952, start=2048, seed=7), full.slice_paths(2048, 3000))
    assert_same_paths(sim(num_paths=1, start=1234, seed=7), full.slice_paths(1234, 1235))


@pytest.mark.parametrize("name", ["gbm", "heston_qe", "heston_exact"])
def test_same_seed_same_paths_different_seed_different(name):
    sim = SIMULATORS[name]
    a, b, c = sim(num_paths=300, seed=1), sim(num_paths=300, seed=1), sim(num_paths=300, seed=2)
    assert_same_paths(a, b)
    assert not np.any(a.spot.numpy()[1:] == c.spot.numpy()[1:])
    if name == "heston_exact":  # the Poisson / gamma streams depend on the seed too
        assert not np.any(a.variance.numpy()[1:] == c.variance.numpy()[1:])
    # A pair seed works as well and differs from the int seed.
    d = sim(num_paths=300, seed=(1, 5))
    assert not np.any(a.spot.numpy()[1:] == d.spot.numpy()[1:])


# -- GBM ---------------------------------------------------------------------------------------
def test_gbm_moments_and_fields():
    s0, mu, sigma, steps, dt = 1.5, 0.05, 0.3, 20, 0.05
    t = steps * dt
    paths = simulate_gbm(100_000, steps, dt, s0=s0, mu=mu, sigma=sigma, seed=11, dtype=F64)
    validate_paths(paths)
    assert paths.dtype == F64 and paths.spot.shape == (steps + 1, 100_000)
    s_t = paths.spot[-1].numpy()
    within_3se(s_t, s0 * math.exp(mu * t), "E[S_T]")
    within_3se(np.log(s_t), math.log(s0) + (mu - 0.5 * sigma**2) * t, "E[log S_T]")
    # Var[S_T] via the mean of squared deviations from the exact mean (unbiased, iid samples).
    exact_var = s0**2 * math.exp(2 * mu * t) * (math.exp(sigma**2 * t) - 1)
    within_3se((s_t - s0 * math.exp(mu * t)) ** 2, exact_var, "Var[S_T]")
    np.testing.assert_array_equal(paths.spot[0].numpy(), s0)
    np.testing.assert_allclose(paths.variance.numpy(), sigma**2, rtol=1e-15)
    np.testing.assert_allclose(paths.integrated_variance.numpy(),
                               np.broadcast_to(sigma**2 * dt * np.arange(steps + 1)[:, None],
                                               paths.spot.shape), rtol=1e-14, atol=1e-17)


def test_gbm_antithetic_pairs_are_exact_mirrors():
    s0, mu, sigma, dt = 2.0, 0.1, 0.25, 0.1
    paths = simulate_gbm(2 * BLOCK_SIZE, 5, dt, s0=s0, mu=mu, sigma=sigma, antithetic=True, seed=3,
                         dtype=F64)
    # Centred log growth = sigma * sqrt(dt) * (sum of normals): path j and j + BLOCK_SIZE / 2 of a
    # block carry negated normals.
    centred = np.log(paths.spot.numpy() / s0) - (mu - 0.5 * sigma**2) * dt * np.arange(6)[:, None]
    half = BLOCK_SIZE // 2
    for j in (0, 17, BLOCK_SIZE + 300):
        np.testing.assert_allclose(centred[:, j], -centred[:, j + half], atol=1e-13)
    assert np.abs(centred[1:, 0]).min() > 0
    # A batch of whole blocks is exactly balanced: the centred log growth averages to 0.
    np.testing.assert_allclose(centred.mean(axis=1), 0.0, atol=1e-13)


def test_gbm_sobol_beats_plain_monte_carlo():
    s0, mu, sigma, steps, dt, n = 1.0, 0.05, 0.3, 8, 0.125, 4096
    exact = s0 * math.exp(mu * steps * dt)
    sobol = simulate_gbm(n, steps, dt, s0=s0, mu=mu, sigma=sigma, sobol=True, dtype=F64).spot[-1].numpy()
    plain = simulate_gbm(n, steps, dt, s0=s0, mu=mu, sigma=sigma, seed=0, dtype=F64).spot[-1].numpy()
    se = plain.std(ddof=1) / math.sqrt(n)
    within_3se(plain, exact, "plain E[S_T]")
    # Measured: Sobol's error is ~1/8 of the plain-MC standard error at this size (8 dimensions);
    # half a standard error leaves a wide margin while still showing the gain.
    assert abs(sobol.mean() - exact) < 0.5 * se
    assert np.all(np.isfinite(sobol))


def test_gbm_zero_vol_and_float32_default():
    paths = simulate_gbm(10, 4, 0.25, s0=3.0, mu=0.2, sigma=0.0)
    assert paths.dtype == tf.float32
    np.testing.assert_allclose(paths.spot.numpy(), 3.0 * np.exp(0.2 * 0.25 * np.arange(5))[:, None]
                               * np.ones((1, 10)), rtol=1e-6)
    np.testing.assert_array_equal(paths.variance.numpy(), 0.0)


# -- Heston ------------------------------------------------------------------------------------
def quantlib_heston_call(s0, v0, kappa, theta, xi, rho, strike, days):
    """European call under Heston, r = q = 0, maturity ``days`` / 365 years (QuantLib Fourier)."""
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(2, 1, 2024)
    ql.Settings.instance().evaluationDate = today
    day_count = ql.Actual365Fixed()
    flat = ql.YieldTermStructureHandle(ql.FlatForward(today, 0.0, day_count))
    process = ql.HestonProcess(flat, flat, ql.QuoteHandle(ql.SimpleQuote(s0)), v0, kappa, theta, xi, rho)
    option = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call, strike),
                              ql.EuropeanExercise(today + days))
    option.setPricingEngine(ql.AnalyticHestonEngine(ql.HestonModel(process), 1e-10, 100000))
    return option.NPV()


@pytest.mark.parametrize("scheme", ["qe", "exact"])
@pytest.mark.parametrize("case", ["dhkfac", "buehler"])
def test_heston_against_closed_forms_and_quantlib(scheme, case):
    cfg = {"dhkfac": DHKFAC, "buehler": BUEHLER}[case]
    p, dt, steps = cfg["params"], cfg["dt"], cfg["steps"]
    assert steps * dt == pytest.approx(cfg["days"] / 365, rel=1e-12)
    n = 100_000
    paths = simulate_heston(n, steps, dt, scheme=scheme, seed=2024, dtype=F64, **p)
    validate_paths(paths)
    assert paths.dtype == F64 and paths.spot.shape == (steps + 1, n)

    v = paths.variance.numpy()
    assert np.all(np.isfinite(v)) and v.min() >= 0.0
    np.testing.assert_array_equal(v[0], p["v0"])
    within_3se(v[-1], heston_expected_variance(p["v0"], p["kappa"], p["theta"], steps * dt), "E[v_T]")
    # Halfway too: the variance recursion must be right at every step, not only on average at T.
    within_3se(v[steps // 2], heston_expected_variance(p["v0"], p["kappa"], p["theta"], steps // 2 * dt),
               "E[v_T/2]")

    iv = paths.integrated_variance.numpy()
    np.testing.assert_array_equal(iv[0], 0.0)
    np.testing.assert_allclose(iv[1:], np.cumsum(0.5 * dt * (v[:-1] + v[1:]), axis=0), rtol=1e-12)

    s_t = paths.spot[-1].numpy()
    assert np.all(np.isfinite(s_t)) and s_t.min() > 0
    np.testing.assert_array_equal(paths.spot[0].numpy(), p["s0"])
    within_3se(s_t, p["s0"], "E[S_T]")
    reference = quantlib_heston_call(**p, strike=p["s0"], days=cfg["days"])
    within_3se(np.maximum(s_t - p["s0"], 0.0), reference, f"ATM call vs QuantLib {reference:.6g}")


@pytest.mark.parametrize("scheme", ["qe", "exact"])
def test_heston_drift(scheme):
    mu, steps, dt = 0.3, 20, 1 / 50
    paths = simulate_heston(30_000, steps, dt, mu=mu, scheme=scheme, seed=5, dtype=F64)
    within_3se(paths.spot[-1].numpy(), math.exp(mu * steps * dt), "E[S_T] with drift")


def test_heston_qe_martingale_is_exact_per_step():
    # One big step with strong vol of vol: a plain Euler / uncorrected log-spot would miss
    # E[S_dt] = S_0 by far more than the Monte Carlo error; Andersen's K0* makes it exact.
    for p in (dict(v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.9),
              dict(v0=0.09, kappa=3.0, theta=0.04, xi=0.6, rho=-0.5)):
        paths = simulate_heston(200_000, 1, 0.5, seed=9, dtype=F64, **p)
        within_3se(paths.spot[-1].numpy(), 1.0, f"E[S_dt] {p}")


@pytest.mark.parametrize("sampling", ["antithetic", "sobol"])
def test_heston_qe_sampling_options(sampling):
    p = BUEHLER["params"]
    paths = simulate_heston(8192, 10, 1 / 365, seed=1, dtype=F64, **{sampling: True}, **p)
    v, s = paths.variance.numpy(), paths.spot.numpy()
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(v)) and v.min() >= 0
    within_3se(v[-1], heston_expected_variance(p["v0"], p["kappa"], p["theta"], 10 / 365), "E[v_T]")
    within_3se(s[-1], p["s0"], "E[S_T]")


@pytest.mark.parametrize("scheme", ["qe", "exact"])
def test_heston_degenerate_parameters(scheme):
    # v = 0 is absorbing when theta = 0: no NaN, spot constant.
    flat = simulate_heston(50, 5, 0.1, v0=0.0, theta=0.0, scheme=scheme)
    np.testing.assert_array_equal(flat.variance.numpy(), 0.0)
    np.testing.assert_array_equal(flat.spot.numpy(), 1.0)
    # kappa = 0 (no mean reversion), tiny vol of vol, rho = +-1, float32: finite, v >= 0, and the
    # mean variance stays put (kappa = 0) / barely moves (tiny xi).
    for p in (dict(kappa=0.0, v0=0.05, xi=0.5), dict(xi=1e-6), dict(rho=1.0), dict(rho=-1.0)):
        paths = simulate_heston(2000, 10, 1 / 250, scheme=scheme, seed=3, **p)
        assert paths.dtype == tf.float32
        v = paths.variance.numpy()
        assert np.all(np.isfinite(paths.spot.numpy())) and np.all(np.isfinite(v)) and v.min() >= 0
    tiny_xi = simulate_heston(100, 10, 1 / 250, v0=0.09, theta=0.04, kappa=2.0, xi=1e-6,
                              scheme=scheme, dtype=F64).variance.numpy()
    np.testing.assert_allclose(tiny_xi[-1], heston_expected_variance(0.09, 2.0, 0.04, 10 / 250),
                               rtol=1e-4)


def test_heston_float32_matches_float64_statistics():
    p32 = simulate_heston(20_000, 30, 1 / 250, seed=4)
    p64 = simulate_heston(20_000, 30, 1 / 250, seed=4, dtype=F64)
    assert p32.dtype == tf.float32
    ref = heston_expected_variance(0.0625, 8.0, 0.0625, 30 / 250)
    within_3se(p32.variance[-1].numpy(), ref, "float32 E[v_T]")
    within_3se(p64.variance[-1].numpy(), ref, "float64 E[v_T]")
    within_3se(p32.spot[-1].numpy(), 1.0, "float32 E[S_T]")


def test_heston_expected_variance_forms():
    assert heston_expected_variance(0.09, 2.0, 0.04, 0.0) == pytest.approx(0.09)
    assert heston_expected_variance(0.09, 2.0, 0.04, 0.5) == pytest.approx(0.04 + 0.05 * math.exp(-1.0))
    assert heston_expected_variance(0.09, 0.0, 0.04, 3.0) == pytest.approx(0.09)
    grid = heston_expected_variance(np.array([[0.01], [0.09]]), 2.0, 0.04, np.array([0.0, 1.0, 100.0]))
    assert grid.shape == (2, 3)
    np.testing.assert_allclose(grid[:, 0], [0.01, 0.09])
    np.testing.assert_allclose(grid[:, 2], 0.04)
    tensor = heston_expected_variance(tf.constant([0.01, 0.09], F64), 2.0, 0.04, 0.5)
    assert isinstance(tensor, tf.Tensor) and tensor.dtype == F64
    np.testing.assert_allclose(tensor.numpy(), 0.04 + (np.array([0.01, 0.09]) - 0.04) * math.exp(-1.0))


# -- validation --------------------------------------------------------------------------------
GRID_ERRORS = [
    ("num_paths", 0), ("num_paths", 2.5), ("steps", 0), ("steps", True), ("dt", 0.0), ("dt", -0.1),
    ("dt", float("nan")), ("s0", 0.0), ("s0", -1.0), ("start", -1),
]


@pytest.mark.parametrize("arg,value", GRID_ERRORS + [("sigma", -0.1), ("mu", float("inf"))])
def test_gbm_validation(arg, value):
    kwargs = dict(num_paths=10, steps=5, dt=0.01)
    kwargs[arg] = value
    with pytest.raises(ValueError, match=arg):
        simulate_gbm(**kwargs)


@pytest.mark.parametrize("arg,value", GRID_ERRORS + [
    ("v0", -0.01), ("theta", -0.01), ("kappa", -1.0), ("xi", 0.0), ("xi", -0.5), ("rho", 1.01),
    ("rho", -1.5), ("mu", float("nan")), ("scheme", "euler"),
])
def test_heston_validation(arg, value):
    kwargs = dict(num_paths=10, steps=5, dt=0.01)
    kwargs[arg] = value
    with pytest.raises(ValueError, match=arg):
        simulate_heston(**kwargs)


def test_validation_messages_name_the_allowed_range():
    with pytest.raises(ValueError, match=r"rho must be >= -1.0 and <= 1.0; got 1.5"):
        simulate_heston(10, 5, 0.01, rho=1.5)
    with pytest.raises(ValueError, match=r"sigma must be >= 0.0; got -1"):
        simulate_gbm(10, 5, 0.01, sigma=-1)
    with pytest.raises(ValueError, match=r"xi must be > 0.0"):
        simulate_heston(10, 5, 0.01, xi=0)
    with pytest.raises(ValueError, match=r"scheme must be one of \('qe', 'exact'\)"):
        simulate_heston(10, 5, 0.01, scheme="QE2")


@pytest.mark.parametrize("sampling", ["antithetic", "sobol"])
def test_heston_exact_rejects_antithetic_and_sobol(sampling):
    with pytest.raises(ValueError, match=r"scheme='exact' supports neither antithetic nor sobol"):
        simulate_heston(10, 5, 0.01, scheme="exact", **{sampling: True})
