"""Floating-grid Heston premium tables: premium / spot of out-of-the-money options as a function of
the current variance.

A "floating-grid" option has its strike set relative to the current spot, K = m * S_t, and a fixed
time to maturity tau.  The Heston model is homogeneous of degree one in (S, K), and with zero rates
(the convention of :mod:`deephedge_tf.pricing.heston`) the price of such an option divided by S_t
depends only on the current variance v_t.  A :class:`HestonPremiumTable` prices J such options
once, on a grid of variance nodes, and then interpolates: cheap enough to call on every [T, B]
variance path inside a training step.

Conventions: moneyness m >= 1 is a call, m < 1 a put (out-of-the-money options, ATM m = 1 is a
call); maturities are in years; outputs are premium / spot (dimensionless).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from scipy import interpolate, stats

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.pricing.heston import expected_total_variance, heston_price_tf
from deephedge_tf.validation import check_real

__all__ = ["HestonPremiumTable", "HestonStrikeTable", "default_v_max"]

# Stretch of the strike table's moneyness grid: nodes dense near the money, sparse in the far wings.
_STRETCH = 3.0

_OWNER = "HestonPremiumTable"

# Upper quantile of the stationary variance distribution used for the default v_max.
_STATIONARY_QUANTILE = 1.0 - 1e-6
# The default v_max is also at least this multiple of max(theta, v0).
_MIN_MULTIPLE = 4.0


def _as_vector(owner: str, name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise DeepHedgeError(f"{owner}: '{name}' must be a non-empty 1-D sequence; got shape {arr.shape}")
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise DeepHedgeError(f"{owner}: '{name}' must be finite and > 0; got {arr.tolist()}")
    return arr


def _model(owner: str, kappa, theta, xi, rho, v0=None) -> tuple:
    """The Heston parameters ``(kappa, theta, xi, rho, v0)`` checked (``v0`` may be None)."""
    return (check_real(owner, "kappa", kappa, low=0.0), check_real(owner, "theta", theta, low=0.0),
            check_real(owner, "xi", xi, low=0.0, low_open=True), check_real(owner, "rho", rho, low=-1.0, high=1.0),
            None if v0 is None else check_real(owner, "v0", v0, low=0.0))


def _node_count(owner: str, name: str, n) -> int:
    if isinstance(n, bool) or int(n) != n or n < 4:
        raise DeepHedgeError(f"{owner}: '{name}' must be an integer >= 4; got {n!r}")
    return int(n)


def _hermite(y0, d0, y1, d1, t):
    """Cubic Hermite on [0, 1] in the local coordinate ``t`` (slopes ``d`` pre-scaled by the spacing)."""
    t2 = t * t
    t3 = t2 * t
    return (2.0 * t3 - 3.0 * t2 + 1.0) * y0 + (t3 - 2.0 * t2 + t) * d0 + (3.0 * t2 - 2.0 * t3) * y1 + (t3 - t2) * d1


def default_v_max(kappa: float, theta: float, xi: float, v0: Optional[float] = None) -> float:
    """Default top of the variance grid.

    The larger of the 1 - 1e-6 quantile of the stationary Gamma(2 kappa theta / xi^2,
    scale xi^2 / (2 kappa)) law of v, and 4 * max(theta, v0).  Needs kappa * theta > 0.
    """
    if not kappa * theta > 0:
        raise DeepHedgeError(
            "HestonPremiumTable: pass 'v_max' explicitly when kappa * theta = 0 (the variance then "
            f"has no stationary distribution); got kappa={kappa!r}, theta={theta!r}")
    shape = 2.0 * kappa * theta / xi**2
    scale = xi**2 / (2.0 * kappa)
    quantile = float(stats.gamma.ppf(_STATIONARY_QUANTILE, shape, scale=scale))
    return max(quantile, _MIN_MULTIPLE * max(theta, v0 if v0 is not None else 0.0))


class HestonPremiumTable:
    """Premium / spot of J floating-grid Heston options, tabulated in the current variance.

    Grid: ``num_nodes`` variance nodes uniform in sqrt(v) from 0 to ``v_max`` (dense where v is
    small and prices bend most).  Interpolation: piecewise cubic Hermite in sqrt(v), with slopes
    from a cubic spline whose slope at v = 0 is 0 (exact: prices are smooth in v, hence even in
    sqrt(v)).  Measured with the defaults (num_nodes = 64) on the DH-KFAC reference model and
    options with tau in {10, ..., 120} / 250, m in {0.9, ..., 1.1}: max abs error of premium /
    spot 1.9e-8 in float64, 2.3e-8 in float32, against the direct pricer (linear interpolation in
    sqrt(v): 1.7e-5 on the same nodes, ~270 nodes for 1e-6), see tests/test_premium_tables.py.

    Beyond ``v_max``: linear extrapolation in sqrt(v) with the slope at the last node (premiums
    grow about linearly in volatility), then clipped to the no-arbitrage bounds [0, 1] for calls
    and [0, m] for puts.  Measured on the reference model (v_max = 0.86): error 3e-5 at 1.1 v_max,
    1.5e-3 at 2 v_max.  Negative variances (e.g. from a discretisation scheme) are read as 0.

    Args:
      moneyness: J strikes relative to spot, K / S > 0 (m >= 1: call, m < 1: put).
      maturities: J times to maturity in years, > 0.
      kappa, theta, xi, rho: Heston parameters (see :func:`heston_price_tf`).
      v_max: top variance node; default :func:`default_v_max` (kappa, theta, xi, v0).
      num_nodes: number of variance nodes (>= 4).
      v0: optional initial variance, only used for the default v_max.

    Attributes (numpy, read-only):
      moneyness, maturities: [J] float64.  is_call: [J] bool.
      variance_nodes: [num_nodes] float64.  values: [num_nodes, J] float64 premium / spot.
      v_max: float.

    Build the table eagerly (outside ``tf.function``); calling it works anywhere.

    Against the direct Fourier pricer, off the nodes:

    >>> import tensorflow as tf
    >>> from deephedge_tf.pricing.heston import heston_price_tf
    >>> table = HestonPremiumTable([1.0], [30 / 365], kappa=1.0, theta=0.04, xi=0.5, rho=-0.7)
    >>> direct = heston_price_tf(1.0, 1.0, 30 / 365, 0.05, 1.0, 0.04, 0.5, -0.7)
    >>> bool(abs(float(table(tf.constant([0.05]))[0, 0]) - float(direct)) < 1e-6)
    True
    """

    def __init__(
        self,
        moneyness: Sequence[float],
        maturities: Sequence[float],
        kappa: float,
        theta: float,
        xi: float,
        rho: float,
        v_max: Optional[float] = None,
        num_nodes: int = 64,
        v0: Optional[float] = None,
    ):
        m = _as_vector(_OWNER, "moneyness", moneyness)
        tau = _as_vector(_OWNER, "maturities", maturities)
        if m.shape != tau.shape:
            raise DeepHedgeError(
                f"HestonPremiumTable: 'moneyness' and 'maturities' must have the same length (one "
                f"entry per option); got {m.size} and {tau.size}")
        kappa, theta, xi, rho, v0 = _model(_OWNER, kappa, theta, xi, rho, v0)
        if v_max is None:
            v_max = default_v_max(kappa, theta, xi, v0)
        v_max = check_real(_OWNER, "v_max", v_max, low=0.0, low_open=True)
        num_nodes = _node_count(_OWNER, "num_nodes", num_nodes)

        is_call = m >= 1.0
        vol_nodes = np.linspace(0.0, np.sqrt(v_max), num_nodes)
        nodes = vol_nodes**2
        values = heston_price_tf(
            1.0, m[None, :], tau[None, :], nodes[:, None], kappa, theta, xi, rho, is_call[None, :]
        ).numpy()
        # Slopes d(value)/d(sqrt v) for the Hermite pieces; zero slope at sqrt(v) = 0 is exact.
        spline = interpolate.CubicSpline(
            vol_nodes, values, axis=0, bc_type=((1, np.zeros(m.size)), "not-a-knot"))
        slopes = spline(vol_nodes, 1)

        self.moneyness = _read_only(m)
        self.maturities = _read_only(tau)
        self.is_call = _read_only(is_call)
        self.variance_nodes = _read_only(nodes)
        self.values = _read_only(values)
        self.v_max = float(v_max)
        self.kappa, self.theta, self.xi, self.rho = kappa, theta, xi, rho
        self._step = float(vol_nodes[1])  # node spacing in sqrt(v)
        upper = np.where(is_call, 1.0, m)
        # Tables per dtype, so float32 callers never touch float64 (GPU friendly).
        self._tables = {
            dt: tuple(tf.constant(x, dt) for x in (values, slopes * self._step, upper))
            for dt in (tf.float32, tf.float64)
        }

    @property
    def num_options(self) -> int:
        """J, the number of tabulated options."""
        return int(self.moneyness.size)

    def __call__(self, variance) -> tf.Tensor:
        """Premium / spot for a variance tensor [...] (float32 or float64) -> [..., J], same dtype.

        A Python float is read as float32 (TensorFlow's default), giving a float32 result.
        """
        variance = tf.convert_to_tensor(variance)
        if variance.dtype not in (tf.float32, tf.float64):
            raise DeepHedgeError(
                "HestonPremiumTable: variance must be float32 or float64; "
                f"got {variance.dtype.name}")
        values, scaled_slopes, upper = self._tables[variance.dtype]
        n = self.values.shape[0]
        # tf.constant, not tf.cast: a Python float cast to float64 goes through float32 first.
        x = tf.sqrt(tf.maximum(variance, 0.0)) / tf.constant(self._step, variance.dtype)
        i = tf.clip_by_value(tf.floor(x), 0.0, float(n - 2))
        t = (x - i)[..., None]  # in [0, 1] inside the grid, > 1 beyond v_max
        i = tf.cast(i, tf.int32)
        y0, y1 = tf.gather(values, i), tf.gather(values, i + 1)
        d0, d1 = tf.gather(scaled_slopes, i), tf.gather(scaled_slopes, i + 1)
        inside = _hermite(y0, d0, y1, d1, t)
        beyond = y1 + (t - 1.0) * d1  # linear continuation from the last node
        out = tf.where(t > 1.0, beyond, inside)
        return tf.clip_by_value(out, tf.zeros_like(upper), upper)


def _read_only(x: np.ndarray) -> np.ndarray:
    x = np.array(x)
    x.setflags(write=False)
    return x


def _implied_total_std(call_over_spot: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Black-Scholes implied total standard deviation ``s = sigma sqrt(tau)`` of calls with price / spot
    ``call_over_spot`` and log-moneyness ``x = log(K / S)`` (zero rates), by bisection on [1e-8, 20]
    (the call is increasing in ``s``); NaN where the time value is too small to invert (< 1e-14)."""
    lo, hi = np.full(x.shape, 1e-8), np.full(x.shape, 20.0)
    strike = np.exp(x)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        d1 = -x / mid + 0.5 * mid
        price = stats.norm.cdf(d1) - strike * stats.norm.cdf(d1 - mid)
        above = price > call_over_spot
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    s = 0.5 * (lo + hi)
    return np.where(call_over_spot - np.maximum(1.0 - strike, 0.0) > 1e-14, s, np.nan)


def _fill_nan_along(values: np.ndarray, axis: int) -> np.ndarray:
    """NaNs replaced by the nearest finite value along ``axis`` (flat extrapolation of the implied std into
    the far wings, where prices are at their intrinsic value to 1e-14 anyway); a line without any (no time
    value at any moneyness: variance 0 that stays 0, kappa theta = 0) gets the floor 1e-8, the intrinsic
    value."""
    moved = np.moveaxis(values, axis, -1).copy()
    flat = moved.reshape(-1, moved.shape[-1])
    idx = np.arange(flat.shape[1])
    for row in flat:
        ok = np.isfinite(row)
        if not ok.any():
            row[:] = 1e-8
            continue
        row[~ok] = row[ok][np.abs(idx[~ok][:, None] - idx[ok][None, :]).argmin(axis=1)]
    return np.moveaxis(flat.reshape(moved.shape), -1, axis)


class HestonStrikeTable:
    """Heston prices of fixed-strike options at a few times to maturity, from a table of Black-Scholes
    implied volatilities: the fixed-grid options' pricer without a Fourier inversion per path and step.

    By homogeneity (zero rates) a call is ``S c(tau, v, x)``, ``x = log(K / S)``; puts follow by parity
    (``P = C - S + K``).  Prices are steep and kinked near expiry, implied volatilities are smooth and
    bounded, so the table holds the implied total standard deviation ``s = sigma_imp sqrt(tau)`` for each
    maturity ``tau_m`` on ``num_vol_nodes`` nodes uniform in ``v^(1/4)`` on ``[0, v_max^(1/4)]`` (dense at
    small variances, where a large vol of vol bends the smile most) times
    ``num_moneyness_nodes`` nodes uniform in the normalised moneyness ``z = x / sqrt(w(v))`` on ``[-z_max,
    z_max]``, dense near the money (``z = z_max sinh(a u) / sinh(a)``, ``u`` uniform on [-1, 1], ``a =``
    :data:`_STRETCH`; ``w(v)`` the expected integrated variance to ``tau_m`` from ``v``, so the grid follows
    the distribution's width, and the wide ``z_max`` covers the wings a large vol of vol adds at small
    variances), with cubic-spline slopes (zero slope at ``v = 0``) and
    bicubic Hermite cells; the price is Black-Scholes at the interpolated ``s``.  Beyond ``z_max`` the
    implied volatility is held flat (the time value there is small: 3e-5 of the spot at 30 days with a vol
    of vol of 2, less in calmer models);
    beyond ``v_max`` it continues linearly in ``v^(1/4)``.

    Accuracy: tests/test_premium_tables.py, against :func:`deephedge_tf.pricing.heston.heston_price_tf` off
    the nodes on Buehler et al.'s Heston and the DH-KFAC reference model.

    Args:
      maturities: times to maturity in years, > 0 (the decision steps' ``(expiry - k) dt``).
      kappa, theta, xi, rho: Heston parameters.
      v_max: top variance node (default: the 1 - 1e-5 quantile of the variance at ``horizon`` from ``v0``,
        a scaled noncentral chi-square, at least ``4 max(theta, v0)``); ``v0`` (default ``theta``) and
        ``horizon`` (years, default the longest maturity) only enter that default.
      num_vol_nodes, num_moneyness_nodes: table sizes (>= 4); ``z_max``: the moneyness range in units of
        ``sqrt(w)``.

    Calling it: ``table(spot [..., 1], strike [J], tau [..., 1], variance [..., 1], is_call [J]) -> [..., J]``
    (:class:`deephedge_tf.instruments.hedges.FixedGrid`'s pricer); ``tau`` must be 0 (intrinsic value) or
    one of the maturities, else a graph assertion fails.

    >>> import numpy as np
    >>> from deephedge_tf.pricing.heston import heston_price
    >>> table = HestonStrikeTable([10 / 365, 30 / 365], kappa=1.0, theta=0.04, xi=2.0, rho=-0.7)
    >>> direct = heston_price(100.0, 105.0, 30 / 365, 0.05, 1.0, 0.04, 2.0, -0.7)
    >>> tabled = table(np.array([[100.0]]), np.array([105.0]), np.array([[30 / 365]]), np.array([[0.05]]),
    ...                np.array([True]))                  # spot, tau, variance [1, 1]; one option
    >>> bool(abs(float(tabled[0, 0]) - float(direct)) < 1e-3)
    True
    """

    def __init__(self, maturities: Sequence[float], kappa: float, theta: float, xi: float, rho: float,
                 v_max: Optional[float] = None, v0: Optional[float] = None, horizon: Optional[float] = None,
                 num_vol_nodes: int = 32, num_moneyness_nodes: int = 48, z_max: float = 15.0):
        owner = "HestonStrikeTable"
        tau = _as_vector(owner, "maturities", maturities)
        kappa, theta, xi, rho, v0 = _model(owner, kappa, theta, xi, rho, v0)
        if v_max is None:
            v_max = _horizon_v_max(kappa, theta, xi, theta if v0 is None else v0,
                                   float(tau.max()) if horizon is None else horizon)
        v_max = check_real(owner, "v_max", v_max, low=0.0, low_open=True)
        z_max = check_real(owner, "z_max", z_max, low=0.0, low_open=True)
        vol = np.linspace(0.0, v_max ** 0.25, _node_count(owner, "num_vol_nodes", num_vol_nodes))  # v^(1/4)
        grid = np.linspace(-1.0, 1.0, _node_count(owner, "num_moneyness_nodes", num_moneyness_nodes))  # u
        z = z_max * np.sinh(_STRETCH * grid) / np.sinh(_STRETCH)
        w = _moneyness_scale(tau[:, None], vol[None, :] ** 4, kappa, theta).numpy()   # [M, V]
        x = z[None, None, :] * np.sqrt(w)[:, :, None]                              # [M, V, Z]
        prices = heston_price_tf(1.0, np.exp(x), tau[:, None, None], (vol ** 4)[None, :, None],
                                 kappa, theta, xi, rho, True).numpy()
        s = _fill_nan_along(_implied_total_std(prices, x), axis=2)
        # Slopes per unit of the local coordinates (spacings folded in) for the bicubic Hermite cells.
        d_vol = interpolate.CubicSpline(vol, s, axis=1, bc_type=((1, np.zeros_like(s[:, 0])),
                                                                   "not-a-knot"))(vol, 1) * vol[1]
        dz = grid[1] - grid[0]
        d_z = interpolate.CubicSpline(grid, s, axis=2)(grid, 1) * dz
        d_vz = interpolate.CubicSpline(grid, d_vol, axis=2)(grid, 1) * dz
        self.maturities = _read_only(tau)
        self.v_max, self.z_max = float(v_max), float(z_max)
        self.kappa, self.theta = kappa, theta
        self._vol_step, self._z_step = float(vol[1]), float(dz)
        corners = np.stack([s, d_vol, d_z, d_vz], axis=-1)                         # [M, V, Z, 4]
        self._shape = corners.shape
        self._tables = {dt: tf.constant(corners, dt) for dt in (tf.float32, tf.float64)}

    def total_std(self, index, variance, log_moneyness):
        """Implied ``sigma sqrt(tau)`` for maturity ``index`` (int32 ``[...]``), ``variance``, ``log_moneyness``."""
        dt = variance.dtype
        table = self._tables[dt]
        n_vol, n_z = self._shape[1], self._shape[2]
        v = tf.maximum(variance, 0.0)
        a = tf.sqrt(tf.sqrt(v)) / tf.constant(self._vol_step, dt)
        i = tf.clip_by_value(tf.floor(a), 0.0, float(n_vol - 2))
        t = a - i                                                       # > 1 beyond v_max: linear
        tau = tf.gather(tf.constant(self.maturities, dt), index)
        w = _moneyness_scale(tau, v, self.kappa, self.theta)
        z = log_moneyness / tf.sqrt(tf.maximum(w, tf.constant(1e-300 if dt == tf.float64 else 1e-30, dt)))
        u = tf.asinh(z * float(np.sinh(_STRETCH) / self.z_max)) / _STRETCH      # in [-1, 1] inside
        b = tf.clip_by_value((u + 1.0) / tf.constant(self._z_step, dt), 0.0, float(n_z - 1))
        j = tf.clip_by_value(tf.floor(b), 0.0, float(n_z - 2))
        r = b - j
        i, j = tf.cast(i, tf.int32), tf.cast(j, tf.int32)

        def corner(di, dj):
            return tf.gather_nd(table, tf.stack([index, i + di, j + dj], axis=-1))   # [..., 4]

        c00, c01, c10, c11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
        # Along z at the two variance nodes (values and their variance slopes), then along sqrt(v).
        y_lo = _hermite(c00[..., 0], c00[..., 2], c01[..., 0], c01[..., 2], r)
        y_hi = _hermite(c10[..., 0], c10[..., 2], c11[..., 0], c11[..., 2], r)
        dv_lo = _hermite(c00[..., 1], c00[..., 3], c01[..., 1], c01[..., 3], r)
        dv_hi = _hermite(c10[..., 1], c10[..., 3], c11[..., 1], c11[..., 3], r)
        inside = _hermite(y_lo, dv_lo, y_hi, dv_hi, tf.minimum(t, 1.0))
        return tf.maximum(tf.where(t > 1.0, y_hi + (t - 1.0) * dv_hi, inside), tf.constant(1e-8, dt))

    def __call__(self, spot, strike, tau, variance, is_call):
        spot = tf.convert_to_tensor(spot)
        dt = spot.dtype
        strike, tau, variance = (tf.cast(tf.convert_to_tensor(a), dt) for a in (strike, tau, variance))
        is_call = tf.convert_to_tensor(is_call)
        mats = tf.constant(self.maturities, dt)
        nearest = tf.argmin(tf.abs(tau[..., None] - mats), axis=-1, output_type=tf.int32)
        live = tau > 0.0
        known = tf.reduce_all((tf.abs(tf.gather(mats, nearest) - tau) <= 1e-6 * tau + 1e-12) | ~live)
        check = tf.debugging.Assert(known, ["HestonStrikeTable: a time to maturity is neither 0 nor one of the "
                                            "table's maturities", self.maturities])
        with tf.control_dependencies([check]):
            x = tf.math.log(strike / spot)
        shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(variance))
        shape = tf.broadcast_dynamic_shape(shape, tf.shape(nearest))
        x, v, index = (tf.broadcast_to(a, shape) for a in (x, variance, nearest))
        s = self.total_std(index, v, x)
        d1 = -x / s + 0.5 * s
        normal = 0.5 * tf.math.erfc(-tf.stack([d1, d1 - s]) / np.sqrt(2.0))
        call = spot * normal[0] - strike * normal[1]
        call = tf.where(live, tf.clip_by_value(call, tf.nn.relu(spot - strike), spot + 0.0 * strike),
                        tf.nn.relu(spot - strike))
        return tf.where(is_call, call, call - spot + strike)


def _horizon_v_max(kappa: float, theta: float, xi: float, v0: float, horizon: float) -> float:
    """Top of the strike table's variance grid: the 1 - 1e-5 quantile of v at ``horizon`` from ``v0`` (a
    scaled noncentral chi-square), at least 4 max(theta, v0); beyond it the implied volatility continues
    linearly."""
    floor = _MIN_MULTIPLE * max(theta, v0)
    if not kappa > 0:
        return max(floor, v0 + 10.0 * xi * np.sqrt(max(v0, theta, 1e-4) * horizon), 1e-4)
    decay = np.exp(-kappa * horizon)
    scale = xi**2 * (1.0 - decay) / (4.0 * kappa)
    dof, noncentrality = 4.0 * kappa * theta / xi**2, v0 * decay / scale
    if dof <= 0:
        return max(floor, 1e-4)
    return max(float(scale * stats.ncx2.ppf(1.0 - 1e-5, dof, noncentrality)), floor)


def _moneyness_scale(tau, v, kappa: float, theta: float) -> tf.Tensor:
    """The strike table's moneyness scale ``w``: the expected integrated variance to ``tau`` from ``v``
    (:func:`deephedge_tf.pricing.heston.expected_total_variance`), floored at ``1e-12 tau``."""
    w = expected_total_variance(tau, v, kappa, theta)
    return tf.maximum(w, 1e-12 * tau)
