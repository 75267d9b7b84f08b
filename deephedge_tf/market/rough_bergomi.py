"""Rough Bergomi market (Bayer, Friz & Gatheral 2016): the worked example of a market added in one file.

Model, under the pricing measure (zero rates), with ``H`` in (0, 1/2):

    v_t = xi0(t) exp(eta Y_t - eta^2 t^(2H) / 2),   Y_t = sqrt(2H) int_0^t (t - s)^(H - 1/2) dW_s,
    dS_t = S_t sqrt(v_t) dZ_t,                      Z = rho W + sqrt(1 - rho^2) W_perp.

``Y`` is a Riemann-Liouville (Volterra) fractional Brownian motion, ``Var Y_t = t^(2H)``, so
``E[v_t] = xi0(t)``: ``xi0`` is the forward variance curve.

Discretisation (the "Cholesky" scheme of Bayer, Friz & Gatheral's paper): on the grid ``t_k = k dt``
the vector ``(Y_{t_1}, ..., Y_{t_T}, W_{t_1}, ..., W_{t_T})`` is Gaussian with a known covariance,

    Cov(Y_s, Y_t) = 2H/(H + 1/2) s^(H + 1/2) t^(H - 1/2) 2F1(1, 1/2 - H; 3/2 + H; s / t)   (s <= t),
    Cov(Y_t, W_s) = sqrt(2H)/(H + 1/2) (t^(H + 1/2) - (t - min(s, t))^(H + 1/2)),
    Cov(W_s, W_t) = min(s, t),

and is drawn exactly from its Cholesky factor (``2T x 2T``, built once per market in float64).  The spot
takes log-Euler steps with the variance at the left point, ``S_{k+1} = S_k exp(sqrt(v_k) dZ_k -
v_k dt / 2)``: ``v_k`` is known at ``t_k`` and ``dZ_k`` is independent of it, so the discrete spot is an
exact martingale and ``E[v_k] = xi0(t_k)`` holds exactly on the grid (tests/test_rough_bergomi.py
checks both by Monte Carlo).  The cost is ``O(T^2)`` per path (a matrix product), fine for the tens to a
few hundred steps of hedging problems; the hybrid scheme (Bennedsen, Lunde & Pakkanen 2017) is the
``O(T log T)`` alternative for long grids.

The market has no closed-form pricer: no ``vanilla_price`` (reports say there is no reference price),
no premium model for option hedges; the spot and user-defined instruments hedge it.

Usable from Python (:class:`RoughBergomi`) and from YAML (registered as ``market.model: rough_bergomi``,
its parameters in ``market.params``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from scipy import special

from deephedge_tf.dtypes import as_float_dtype
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.market.gbm import check_grid, cumulative_from_zero, whole_blocks
from deephedge_tf.validation import check_int, check_real
from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.market.random import path_normals

__all__ = ["RoughBergomi", "volterra_covariance"]


def volterra_covariance(times: np.ndarray, hurst: float) -> np.ndarray:
    """Covariance ``[2T, 2T]`` of ``(Y_{t_1..t_T}, W_{t_1..t_T})`` (module doc), float64."""
    t = np.asarray(times, np.float64)
    h = float(hurst)
    s_, t_ = np.minimum.outer(t, t), np.maximum.outer(t, t)
    yy = 2 * h / (h + 0.5) * s_ ** (h + 0.5) * t_ ** (h - 0.5) * special.hyp2f1(1.0, 0.5 - h, 1.5 + h, s_ / t_)
    tt, ss = np.meshgrid(t, t, indexing="ij")  # yw[i, j] = Cov(Y_{t_i}, W_{t_j})
    yw = math.sqrt(2 * h) / (h + 0.5) * (tt ** (h + 0.5) - (tt - np.minimum(tt, ss)) ** (h + 0.5))
    ww = s_
    return np.block([[yy, yw], [yw.T, ww]])


class RoughBergomi:
    """Rough Bergomi market (module doc); a market as in :mod:`deephedge_tf.market.models`.

    Args:
      xi0: forward variance curve: a number (flat) or ``steps + 1`` values at ``t_0 .. t_T`` (> 0).
      eta: volatility of volatility (>= 0).
      hurst: Hurst exponent ``H``, ``0 < H < 1/2``.
      rho: correlation of the spot with the variance driver, ``-1 <= rho <= 1``.
      s0, steps, dt, seed, dtype: the spot, the grid, the path stream's seed and the precision.

    >>> market = RoughBergomi(xi0=0.04, eta=1.9, hurst=0.1, rho=-0.9, s0=100.0, steps=20, dt=1 / 252)
    >>> paths = market.simulate(16)
    >>> tuple(paths.spot.shape), tuple(paths.variance.shape)
    ((21, 16), (21, 16))
    """

    pricing_method = None

    def __init__(self, xi0: Union[float, Sequence[float]] = 0.04, eta: float = 1.9, hurst: float = 0.1,
                 rho: float = -0.9, s0: float = 1.0, steps: int = 30, dt: float = 1.0 / 365.0, seed: int = 0,
                 dtype: str = "float32"):
        name = "RoughBergomi"
        self.steps = check_int(name, "steps", steps, 1)
        self.dt = check_real(name, "dt", dt, low=0.0, low_open=True)
        self.s0 = check_real(name, "s0", s0, low=0.0, low_open=True)
        self.eta = check_real(name, "eta", eta, low=0.0)
        self.hurst = check_real(name, "hurst", hurst, low=0.0, low_open=True, high=0.5, high_open=True)
        self.rho = check_real(name, "rho", rho, low=-1.0, high=1.0)
        curve = np.atleast_1d(np.asarray(xi0, np.float64))
        if curve.ndim != 1 or curve.size not in (1, self.steps + 1) or not np.all(np.isfinite(curve) & (curve > 0)):
            raise DeepHedgeError(f"{name}: xi0 must be a number > 0 or steps + 1 = {self.steps + 1} of them; got "
                                 f"{xi0!r}")
        self.xi0 = np.broadcast_to(curve, (self.steps + 1,)).copy()
        self.seed, self.dtype = seed, str(as_float_dtype(dtype).name)
        times = self.dt * np.arange(1, self.steps + 1)
        cov = volterra_covariance(times, self.hurst)
        # W's own block makes cov positive definite in exact arithmetic; the tiny jitter keeps Cholesky
        # stable in floating point for very rough H, where Y's columns are nearly dependent.
        self._factor = np.linalg.cholesky(cov + 1e-14 * np.trace(cov) / len(cov) * np.eye(len(cov)))
        self._variance_mean = (self.eta ** 2 / 2) * np.concatenate([[0.0], times]) ** (2 * self.hurst)

    def __repr__(self):
        return (f"RoughBergomi(xi0={self.xi0[0]:g}{'...' if np.ptp(self.xi0) else ''}, eta={self.eta}, "
                f"hurst={self.hurst}, rho={self.rho}, s0={self.s0}, steps={self.steps}, dt={self.dt:g})")

    def simulate(self, num_paths: int, start: int = 0, seed: Optional[int] = None) -> MarketPaths:
        fn = "RoughBergomi.simulate"
        num_paths, steps, dt, start = check_grid(fn, num_paths, self.steps, self.dt, start)
        dtype = as_float_dtype(self.dtype)
        block_start, block_paths, offset = whole_blocks(start, num_paths)
        z = path_normals(self.seed if seed is None else seed, block_paths, steps, 3, start=block_start,
                         dtype=dtype)  # [T, B, 3]: two for (Y, W) jointly, one for W_perp
        joint = tf.concat([z[..., 0], z[..., 1]], axis=0)  # [2T, B]
        yw = tf.matmul(tf.constant(self._factor, dtype), joint)  # [2T, B]: (Y_{t_1..T}, W_{t_1..T})
        y = tf.concat([tf.zeros_like(yw[:1]), yw[:steps]], axis=0)  # [T + 1, B], Y_0 = 0
        w = tf.concat([tf.zeros_like(yw[:1]), yw[steps:]], axis=0)  # [T + 1, B], W_0 = 0
        variance = tf.constant(self.xi0[:, None], dtype) * tf.exp(
            self.eta * y - tf.constant(self._variance_mean[:, None], dtype))
        dw = w[1:] - w[:-1]
        dz = self.rho * dw + math.sqrt(1.0 - self.rho ** 2) * math.sqrt(dt) * z[..., 2]
        v_left = variance[:-1]
        log_spot = cumulative_from_zero(tf.sqrt(v_left) * dz - 0.5 * v_left * dt)
        spot = self.s0 * tf.exp(log_spot)
        integrated = cumulative_from_zero(0.5 * dt * (variance[:-1] + variance[1:]))
        keep = lambda x: x[:, offset:offset + num_paths]  # noqa: E731
        return MarketPaths(dt=dt, spot=keep(spot), variance=keep(variance), integrated_variance=keep(integrated))
