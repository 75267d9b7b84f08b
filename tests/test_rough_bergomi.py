"""Rough Bergomi market: the Volterra covariance against numerical integration, the forward variance
curve and the martingale property of the spot by Monte Carlo, split invariance, and use from YAML."""

import math

import numpy as np
import pytest
from scipy import integrate

from deephedge_tf.builders import build_market
from deephedge_tf.config import from_dict
from deephedge_tf.errors import ConfigError, DeepHedgeError
from deephedge_tf.market.rough_bergomi import RoughBergomi, volterra_covariance


def test_volterra_covariance_matches_its_integrals():
    h, times = 0.1, np.array([0.05, 0.2, 0.5])
    cov = volterra_covariance(times, h)
    n = len(times)
    kernel = lambda t, u: math.sqrt(2 * h) * (t - u) ** (h - 0.5)  # noqa: E731
    for i, s in enumerate(times):
        for j, t in enumerate(times):
            lo = min(s, t)
            yy = integrate.quad(lambda u: kernel(s, u) * kernel(t, u), 0.0, lo, limit=200)[0]
            yw = integrate.quad(lambda u: kernel(s, u), 0.0, min(s, t), limit=200)[0]  # Cov(Y_s, W_t)
            assert cov[i, j] == pytest.approx(yy, rel=1e-6)
            assert cov[i, n + j] == pytest.approx(yw, rel=1e-6)
            assert cov[n + i, n + j] == pytest.approx(lo, rel=1e-14)
    assert np.diag(cov)[:n] == pytest.approx(times ** (2 * h), rel=1e-10)


@pytest.mark.slow
def test_forward_variance_curve_and_martingale_spot_by_monte_carlo():
    steps, dt = 20, 1 / 52
    curve = 0.04 + 0.02 * np.linspace(0.0, 1.0, steps + 1) ** 2  # an upward forward variance curve
    market = RoughBergomi(xi0=curve, eta=1.5, hurst=0.1, rho=-0.8, s0=100.0, steps=steps, dt=dt, seed=3,
                          dtype="float64")
    paths = market.simulate(200_000)
    v, s = paths.variance.numpy(), paths.spot.numpy()
    n = v.shape[1]
    # v_0 = xi0(0) on every path; E[v_k] = xi0(t_k) at every later step (z-scores of 20 correlated means:
    # allow 4.5 s.e.)
    np.testing.assert_allclose(v[0], curve[0], rtol=1e-12)
    z_v = (v.mean(1) - curve)[1:] / (v.std(1, ddof=1)[1:] / math.sqrt(n))
    assert np.abs(z_v).max() < 4.5, z_v
    # E[S_k] = s0 at every step
    z_s = (s.mean(1) - 100.0)[1:] / (s.std(1, ddof=1)[1:] / math.sqrt(n))
    assert np.abs(z_s).max() < 4.5, z_s
    # The first log-return is linear in dZ (v_0 is known) and log v_1 linear in Y_{t_1}: their correlation
    # is rho corr(W_{t_1}, Y_{t_1}) = rho sqrt(2H) / (H + 1/2) (s.e. ~0.002 here).
    expected = -0.8 * math.sqrt(2 * 0.1) / 0.6
    assert np.corrcoef(np.log(s[1] / s[0]), np.log(v[1]))[0, 1] == pytest.approx(expected, abs=0.01)


def test_paths_do_not_depend_on_the_batch_split():
    market = RoughBergomi(steps=6, seed=1)
    whole = market.simulate(40).spot.numpy()
    part = market.simulate(10, start=25).spot.numpy()
    np.testing.assert_array_equal(part, whole[:, 25:35])


def test_bad_parameters_are_named():
    with pytest.raises(DeepHedgeError, match="RoughBergomi: hurst must be > 0.0 and < 0.5; got 0.6"):
        RoughBergomi(hurst=0.6)
    with pytest.raises(DeepHedgeError, match="xi0 must be a number > 0 or steps \\+ 1 = 5"):
        RoughBergomi(xi0=[0.04, 0.05], steps=4)


def test_registered_and_python_kinds_from_yaml():
    params = {"xi0": 0.05, "eta": 1.2, "hurst": 0.2, "rho": -0.5}
    registered = build_market(from_dict({"market": {"model": "rough_bergomi", "s0": 2.0, "params": params},
                                         "time": {"steps": 5}}))
    python = build_market(from_dict({"market": {"model": "python", "s0": 2.0, "params": params,
                                                "callable": "deephedge_tf.market.rough_bergomi:RoughBergomi"},
                                     "time": {"steps": 5}}))
    assert isinstance(registered, RoughBergomi) and registered.s0 == 2.0 and registered.hurst == 0.2
    np.testing.assert_array_equal(registered.simulate(8).spot.numpy(), python.simulate(8).spot.numpy())
    with pytest.raises(ConfigError, match="'market.params.hurts'.*a parameter of 'RoughBergomi': xi0, eta, hurst"):
        build_market(from_dict({"market": {"model": "rough_bergomi", "params": {"hurts": 0.1}}}))
    with pytest.raises(ConfigError, match="'market.params.steps'.*the library passes it"):
        build_market(from_dict({"market": {"model": "rough_bergomi", "params": {"steps": 3}}}))
