"""Heston stochastic-volatility paths.

Model (time in years, parameters annualised)::

    dS = mu S dt + sqrt(v) S dW1,
    dv = kappa (theta - v) dt + xi sqrt(v) dW2,      d<W1, W2> = rho dt.

Two schemes, both returning :class:`MarketPaths` (``spot`` and ``variance`` = ``v`` on the grid,
``integrated_variance`` = cumulative trapezoid of ``v``):

``"qe"`` (default)
  Andersen (2008), "Simple and efficient simulation of the Heston stochastic volatility model",
  J. Comput. Finance 11(3).  ``v`` by the Quadratic-Exponential scheme (switch at ``psi_c = 1.5``),
  ``log S`` by his central discretisation (``gamma1 = gamma2 = 1/2``) with the martingale
  correction ``K0*``, so that ``E[S_{k+1} | S_k, v_k] = S_k exp(mu dt)`` holds exactly for the
  discrete scheme.

``"exact"``
  Broadie & Kaya (2006), "Exact simulation of stochastic volatility and other affine jump diffusion
  processes", Oper. Res. 54(2).  ``v_{k+1} | v_k`` is sampled exactly from the scaled non-central
  chi-square law (a Poisson mixture of gammas).  The integral ``int v ds`` over a step is *not*
  sampled from its exact conditional law (BK's Fourier inversion of its characteristic function is
  not done): it is approximated by the trapezoid rule on the endpoints (the "drift interpolation"
  variant discussed by BK and by Andersen).  ``log S`` then follows BK's conditional formula.  So
  the ``v`` marginals are exact; the spot carries a small discretisation bias (it is a martingale
  only up to that error; no Andersen-style correction is applied).

Paths are split-invariant: path ``i`` is the same for a given seed however the batch is cut (see
:mod:`deephedge_tf.market.random`).
"""

from __future__ import annotations

import math
import types

import numpy as np
import tensorflow as tf

from deephedge_tf.dtypes import as_float_dtype
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.market.gbm import check_grid, cumulative_from_zero, whole_blocks
from deephedge_tf.validation import check_real
from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.market.random import BLOCK_SIZE, block_seeds, path_normals, sub_seed

__all__ = ["simulate_heston", "heston_expected_variance", "SCHEMES"]

SCHEMES = ("qe", "exact")
# Andersen's switching level between the quadratic and the exponential branch (his recommendation).
PSI_C = 1.5
# Lower clip of psi in the quadratic branch: keeps 2/psi finite in float32 when v hardly moves
# (tiny xi); the sample is then m * (1 + O(sqrt(psi))), i.e. effectively deterministic, as it should.
_PSI_FLOOR = 1e-20


def heston_expected_variance(v, kappa, theta, tau):
    """``E[v_{t + tau} | v_t = v] = theta + (v - theta) exp(-kappa tau)``.

    Args broadcast against each other; ``tau`` in years.  Python floats or numpy arrays give a numpy
    result (a float for scalars); if any argument is a tf.Tensor the result is a tensor of that dtype.

    >>> round(heston_expected_variance(0.04, kappa=1.0, theta=0.09, tau=1.0), 6)  # 0.09 - 0.05 / e
    0.071606
    """
    args = (v, kappa, theta, tau)
    tensors = [a for a in args if isinstance(a, (tf.Tensor, tf.Variable))]
    if tensors:
        dt = tensors[0].dtype
        v, kappa, theta, tau = (tf.cast(a, dt) for a in args)
        return theta + (v - theta) * tf.exp(-kappa * tau)
    out = np.asarray(theta, float) + (np.asarray(v, float) - theta) * np.exp(
        -np.asarray(kappa, float) * np.asarray(tau, float))
    return float(out) if out.ndim == 0 else out


class _Coefficients:
    """Constants of one step of length ``dt``, computed once in Python floats.

    :meth:`as_tensors` hands them to the tf.functions as 0-d tensors: new parameter values then
    reuse the traced graph instead of retracing it.
    """

    def __init__(self, dt, kappa, theta, xi, rho, mu):
        e = math.exp(-kappa * dt)  # exp(-kappa dt)
        one_m_e = -math.expm1(-kappa * dt)  # 1 - exp(-kappa dt), accurate for small kappa dt
        # (1 - e^{-k dt}) / k -> dt as k -> 0 (kappa = 0 is allowed: driftless variance).
        decay_integral = one_m_e / kappa if kappa > 0 else dt
        self.e = e
        # Conditional mean and variance of v_{k+1}:  m = mean_level + e v,  s2 = c1 v + c2.
        self.mean_level = theta * one_m_e
        self.c1 = xi * xi * e * decay_integral
        self.c2 = 0.5 * theta * xi * xi * one_m_e * decay_integral
        # Law of v_{k+1} = chi_scale * chi2'(chi_dof, v e / chi_scale)  (Broadie-Kaya).
        self.chi_scale = 0.25 * xi * xi * decay_integral
        self.chi_dof = 4.0 * kappa * theta / (xi * xi)
        # Andersen's log-spot coefficients, central discretisation gamma1 = gamma2 = 1/2:
        #   dlog S = mu dt + K0 + K1 v + K2 v' + sqrt(K3 v + K4 v') Z.
        # This is Broadie-Kaya's conditional formula with int v ds ~ dt (v + v') / 2.
        self.dt = dt
        g = 0.5 * dt
        self.drift = mu * dt
        self.k0 = -rho * kappa * theta * dt / xi
        self.k1 = g * (kappa * rho / xi - 0.5) - rho / xi
        self.k2 = g * (kappa * rho / xi - 0.5) + rho / xi
        self.k3 = g * (1.0 - rho * rho)
        self.k4 = g * (1.0 - rho * rho)
        # The martingale correction needs E[exp(A v') | v] with A = K2 + K4 / 2.
        self.a_mgf = self.k2 + 0.5 * self.k4

    def as_tensors(self, dtype) -> dict:
        return {k: tf.constant(v, dtype) for k, v in vars(self).items()}


def _qe_branches(v, c):
    """Parameters of the QE law of ``v'`` given ``v`` (any shape); ``c``: step constants.

    Returns ``(alive, quadratic, a, b2, p, one_m_p, beta)``: ``alive`` is False where the conditional
    mean is 0 (``v = 0`` absorbing: theta = 0 or kappa = 0), then ``v' = 0``.  Quadratic branch:
    ``v' = a (b + Z)^2``; exponential branch: ``P(v' = 0) = p``, else ``Exp(beta)``.
    Every output is finite everywhere, also in the branch not taken, so that tf.where never meets NaN.
    """
    m = c.mean_level + v * c.e
    s2 = v * c.c1 + c.c2
    alive = m > 0
    m_safe = tf.where(alive, m, tf.ones_like(m))
    psi = s2 / (m_safe * m_safe)
    quadratic = psi <= PSI_C

    psi_q = tf.clip_by_value(psi, _PSI_FLOOR, PSI_C)
    two_over_psi = 2.0 / psi_q
    # sqrt(x) sqrt(x - 1) rather than sqrt(x (x - 1)): the product overflows float32 at psi ~ 1e-20.
    b2 = two_over_psi - 1.0 + tf.sqrt(two_over_psi) * tf.sqrt(two_over_psi - 1.0)
    a = m / (1.0 + b2)

    psi_e = tf.maximum(psi, PSI_C)
    one_m_p = 2.0 / (psi_e + 1.0)  # 1 - p, without cancellation
    p = (psi_e - 1.0) / (psi_e + 1.0)
    beta = one_m_p / m_safe
    return alive, quadratic, a, b2, p, one_m_p, beta


def _qe_step(v, zv, zs, c):
    """One QE step for ``B`` paths.

    Args:
      v: ``[B]`` variance at ``t_k``.
      zv, zs: ``[B]`` independent standard normals driving ``v`` and the spot.
      c: step constants (attributes of :class:`_Coefficients`, as floats or 0-d tensors).

    Returns:
      ``(v_next, dlog_s)``: ``[B]`` variance at ``t_{k+1}`` (>= 0) and log-spot increment.
    """
    alive, quadratic, a, b2, p, one_m_p, beta = _qe_branches(v, c)
    zeros = tf.zeros_like(v)

    root = tf.sqrt(b2) + zv
    v_quad = a * root * root
    # Exponential branch by inversion of U = Phi(zv) (keeps antithetic and Sobol sampling
    # meaningful).  1 - U = Phi(-zv) = erfc(zv / sqrt 2) / 2 is computed directly: 1 - Phi(zv)
    # rounds to 0 in float32 for zv > ~5.4.
    tail = 0.5 * tf.math.erfc(zv * (1.0 / math.sqrt(2.0)))
    tiny = tf.constant(np.finfo(v.dtype.as_numpy_dtype).tiny, v.dtype)
    v_exp = tf.where(tail < one_m_p, tf.math.log(one_m_p / tf.maximum(tail, tiny)) / beta, zeros)
    v_next = tf.where(alive, tf.where(quadratic, v_quad, v_exp), zeros)

    # Martingale correction: K0* = -log E[exp(A v') | v] - (K1 + K3 / 2) v with A = K2 + K4 / 2
    # gives E[exp(dlog S) | v] = exp(mu dt) exactly.  The moment generating function exists only
    # where A < 1 / (2a) (quadratic) or A < beta (exponential).  That can fail only for A > 0 (rho
    # clearly positive); there the uncorrected K0 is used, as Andersen suggests, and the scheme is
    # a martingale only up to O(dt).
    big_a = c.a_mgf
    q = 1.0 - 2.0 * big_a * a
    ok_q = q > 0
    q_safe = tf.where(ok_q, q, tf.ones_like(q))
    log_mgf_q = big_a * b2 * a / q_safe - 0.5 * tf.math.log(q_safe)
    gap = beta - big_a
    ok_e = gap > 0
    gap_safe = tf.where(ok_e, gap, tf.ones_like(gap))
    log_mgf_e = tf.math.log(p + beta * one_m_p / gap_safe)
    # Where not alive v' = 0 surely, so E[exp(A v')] = 1.
    log_mgf = tf.where(alive, tf.where(quadratic, log_mgf_q, log_mgf_e), zeros)
    ok = tf.logical_or(tf.where(quadratic, ok_q, ok_e), tf.logical_not(alive))
    k0 = tf.where(ok, -log_mgf - (c.k1 + 0.5 * c.k3) * v, zeros + c.k0)
    return v_next, _log_spot_increments(v, v_next, zs, k0, c)


def _log_spot_increments(v, v_next, z, k0, c):
    """Increments of ``log S`` from ``v``, ``v'``, independent normals ``z`` (all the same shape)
    and the drift term ``k0`` (scalar or that shape): Broadie-Kaya's conditional formula with the
    trapezoid integrated variance, written with Andersen's K coefficients."""
    diffusion = tf.sqrt(tf.maximum(c.k3 * v + c.k4 * v_next, 0.0))
    return c.drift + k0 + c.k1 * v + c.k2 * v_next + diffusion * z


@tf.function(jit_compile=True)
def _qe_paths(v0, s0, z, consts):
    """QE paths: variance, spot and integrated variance, all ``[T + 1, B]``.

    Args:
      v0, s0: scalar initial variance and spot (their dtype is the computation dtype).
      z: ``[T, B, 2]`` standard normals; ``[..., 0]`` drives ``v``, ``[..., 1]`` the spot.
      consts: :meth:`_Coefficients.as_tensors` (``dt`` among them).

    One XLA-compiled ``tf.scan`` (on the CPU too): the step is a chain of ~60 elementwise operations,
    which XLA fuses into a few loops over the paths.  At 100,000 paths x 250 steps, float32, 2 CPU cores,
    the loop takes ~0.36 s against ~0.82 s as a plain tf.function, and the running log-spot and
    integrated variance carried in the loop replace ~0.4 s of cumulative sums over ``[T + 1, B]``
    afterwards (BENCHMARKS.md).  XLA compiles once per shape (~0.7 s); every batch is a whole number of
    path blocks, so a path's numbers do not depend on the batch it is simulated in.
    """
    c = types.SimpleNamespace(**consts)
    v_start = tf.fill(tf.shape(z)[1:2], v0)
    zero = tf.zeros_like(v_start)

    def step(carry, zk):
        v, log_s, iv = carry
        v_next, dlog_s = _qe_step(v, zk[:, 0], zk[:, 1], c)
        return v_next, log_s + dlog_s, iv + 0.5 * c.dt * (v + v_next)

    v_later, log_s, iv = tf.scan(step, z, initializer=(v_start, zero, zero))
    first = lambda x, later: tf.concat([x[None], later], axis=0)  # noqa: E731
    return first(v_start, v_later), s0 * tf.exp(first(zero, log_s)), first(zero, iv)


@tf.function(reduce_retracing=True)
def _exact_variance_blocks(v0, seeds_poisson, seeds_gamma, e, chi_scale, chi_dof):
    """Exact non-central chi-square variance paths, one block of BLOCK_SIZE paths at a time.

    Args:
      v0: scalar initial variance (its dtype is the computation dtype).
      seeds_poisson, seeds_gamma: ``[nb, T, 2]`` stateless seeds per block and step.
      e, chi_scale, chi_dof: ``exp(-kappa dt)``, the scale ``c`` and the degrees of freedom ``d``.

    Returns:
      ``[nb, T, BLOCK_SIZE]`` variances at ``t_1..t_T``.

    Each block is sampled by its own calls to the stateless samplers with its own seeds, so a
    block's numbers never depend on which other blocks are simulated with it (split invariance).
    """
    dtype = v0.dtype
    lam_factor = 0.5 * e / chi_scale  # Poisson mean = (non-centrality) / 2 = v e / (2 c)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)

    def step(v, seeds):
        sp, sg = seeds
        n = tf.random.stateless_poisson([BLOCK_SIZE], sp, lam=lam_factor * v, dtype=dtype)
        alpha = 0.5 * chi_dof + n
        # Gamma(0) is a point mass at 0 (d = 0 and N = 0); TF's sampler would return `tiny`.
        g = tf.random.stateless_gamma([BLOCK_SIZE], sg, alpha=tf.maximum(alpha, tiny), dtype=dtype)
        return tf.where(alpha > 0, 2.0 * chi_scale * g, tf.zeros_like(g))

    def one_block(seeds):
        return tf.scan(step, seeds, initializer=tf.fill([BLOCK_SIZE], v0))

    return tf.map_fn(one_block, (seeds_poisson, seeds_gamma), fn_output_signature=dtype)


def _block_step_seeds(seed, name, block_start, block_paths, steps):
    """``[nb, T, 2]`` seeds: stream ``name`` of ``seed``, one seed per block (same layout as
    path_normals) split into one seed per step."""
    per_block = [
        tf.random.experimental.stateless_split(bseed, steps)
        for _, bseed, _, _ in block_seeds(sub_seed(seed, name), block_start, block_paths)
    ]
    return tf.stack(per_block)


def simulate_heston(
    num_paths: int,
    steps: int,
    dt: float,
    s0: float = 1.0,
    v0: float = 0.0625,
    kappa: float = 8.0,
    theta: float = 0.0625,
    xi: float = 1.0,
    rho: float = -0.7,
    mu: float = 0.0,
    scheme: str = "qe",
    seed=0,
    start: int = 0,
    antithetic: bool = False,
    sobol: bool = False,
    dtype=tf.float32,
) -> MarketPaths:
    """Heston paths on the grid ``t_k = k dt``, ``k = 0..steps``.

    Defaults are the DH-KFAC market (Feller condition ``2 kappa theta >= xi^2`` just binding).

    Args:
      num_paths: number of paths ``B >= 1``.
      steps: number of time steps ``T >= 1``.
      dt: step length in years, ``> 0``.
      s0: initial spot, ``> 0``.
      v0: initial variance (per year), ``>= 0``.
      kappa: mean-reversion speed per year, ``>= 0``.
      theta: long-run variance, ``>= 0``.
      xi: volatility of variance, ``> 0``.
      rho: spot/variance correlation, ``-1 <= rho <= 1``.
      mu: spot drift per year (0: the spot is a martingale).
      scheme: ``"qe"`` (Andersen QE with martingale correction) or ``"exact"`` (Broadie-Kaya exact
        variance, trapezoid integrated variance); see the module docstring.
      seed: int or pair of ints; the same seed gives the same path ``i`` whatever the batch split.

    The simulated variance has the model's mean (:func:`heston_expected_variance`), within three
    standard errors:

    >>> paths = simulate_heston(100_000, 30, 1 / 365, s0=100.0, v0=0.04, kappa=1.0, theta=0.09, xi=0.5)
    >>> v_T = paths.variance[-1].numpy()
    >>> bool(abs(v_T.mean() - heston_expected_variance(0.04, 1.0, 0.09, 30 / 365)) < 3 * v_T.std() / 100_000 ** 0.5)
    True

      start: global index of the first path.
      antithetic, sobol: sampling options of :func:`deephedge_tf.market.random.path_normals`
        (``"qe"`` only; the exact scheme's Poisson and gamma draws have no antithetic/Sobol form).
      dtype: float32 or float64, for the computation and the output.

    Returns:
      :class:`MarketPaths`: ``spot``, ``variance`` (= ``v``) and ``integrated_variance``
      (cumulative trapezoid ``sum dt (v_k + v_{k+1}) / 2``, starting at 0), all ``[T + 1, B]``.

    ``"qe"`` steps with one XLA-compiled ``tf.scan`` that also carries the log-spot and the integrated
    variance (compiled once per batch shape and dtype, ~0.7 s; parameters enter as tensors, so new values
    do not recompile).  ``"exact"`` draws its Poisson and gamma
    variates block by block (``tf.map_fn`` over blocks of paths) inside a tf.function, then computes
    the log-spot for all steps at once.
    """
    fn = "simulate_heston"
    num_paths, steps, dt, start = check_grid(fn, num_paths, steps, dt, start)
    s0 = check_real(fn, "s0", s0, low=0.0, low_open=True)
    v0 = check_real(fn, "v0", v0, low=0.0)
    kappa = check_real(fn, "kappa", kappa, low=0.0)
    theta = check_real(fn, "theta", theta, low=0.0)
    xi = check_real(fn, "xi", xi, low=0.0, low_open=True)
    rho = check_real(fn, "rho", rho, low=-1.0, high=1.0)
    mu = check_real(fn, "mu", mu)
    if scheme not in SCHEMES:
        raise DeepHedgeError(f"{fn}: scheme must be one of {SCHEMES}; got {scheme!r}")
    if scheme == "exact" and (antithetic or sobol):
        raise DeepHedgeError(
            f"{fn}: scheme='exact' supports neither antithetic nor sobol sampling (its Poisson and "
            "gamma draws are not driven by normals); use scheme='qe' for these")
    dtype = as_float_dtype(dtype)
    c = _Coefficients(dt, kappa, theta, xi, rho, mu)

    block_start, block_paths, offset = whole_blocks(start, num_paths)
    # [..., 0] drives v (QE), [..., 1] the spot (both schemes: common random numbers across schemes).
    z = path_normals(seed, block_paths, steps, 2, start=block_start, antithetic=antithetic,
                     sobol=sobol, dtype=dtype)

    if scheme == "qe":
        var, spot, integrated = _qe_paths(tf.constant(v0, dtype), tf.constant(s0, dtype), z,
                                          c.as_tensors(dtype))
    else:
        as_t = lambda x: tf.constant(x, dtype)  # noqa: E731
        blocks = _exact_variance_blocks(
            as_t(v0),
            _block_step_seeds(seed, "heston.exact.poisson", block_start, block_paths, steps),
            _block_step_seeds(seed, "heston.exact.gamma", block_start, block_paths, steps),
            as_t(c.e), as_t(c.chi_scale), as_t(c.chi_dof))  # [nb, T, BLOCK_SIZE]
        later = tf.reshape(tf.transpose(blocks, [1, 0, 2]), [steps, block_paths])
        var = tf.concat([tf.fill([1, block_paths], as_t(v0)), later], axis=0)
        dlog_s = _log_spot_increments(var[:-1], var[1:], z[..., 1], c.k0, c)
        spot = s0 * tf.exp(cumulative_from_zero(dlog_s))
        integrated = cumulative_from_zero(0.5 * dt * (var[:-1] + var[1:]))
    keep = lambda x: x[:, offset:offset + num_paths]  # noqa: E731
    return MarketPaths(dt=dt, spot=keep(spot), variance=keep(var),
                       integrated_variance=keep(integrated))
