"""Geometric Brownian motion: ``dS = mu S dt + sigma S dW``, sampled exactly on a regular grid.

The log-spot increments are exactly normal, so there is no discretisation error whatever ``dt``:
``log S_{k+1} = log S_k + (mu - sigma**2 / 2) dt + sigma sqrt(dt) Z_k``.

Also home of the argument checks and the block alignment shared by the simulators of this
package (:mod:`deephedge_tf.market.heston` imports them).
"""

from __future__ import annotations

import math

import tensorflow as tf

from deephedge_tf.dtypes import as_float_dtype
from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.market.random import BLOCK_SIZE, path_normals
from deephedge_tf.validation import check_int, check_real

__all__ = ["simulate_gbm"]


# -- argument checks shared by the simulators -------------------------------------------------
def check_grid(fn: str, num_paths, steps, dt, start):
    """Validates the arguments every simulator shares; returns them as ``(int, int, float, int)``."""
    return (
        check_int(fn, "num_paths", num_paths, 1),
        check_int(fn, "steps", steps, 1),
        check_real(fn, "dt", dt, low=0.0, low_open=True),
        check_int(fn, "start", start, 0),
    )


def whole_blocks(start: int, num_paths: int):
    """``(block_start, block_paths, offset)``: the whole random-number blocks covering paths
    ``[start, start + num_paths)``, and where path ``start`` sits in them.

    Simulators compute on whole blocks and slice afterwards.  Elementwise kernels may round the last
    bit differently for an element depending on where it sits in a tensor (vectorised packet vs.
    scalar tail code), so computing path ``i`` always at the same offset in the same block layout is
    what makes the output bit-identical however the batch is split.  The overhead is under two
    blocks of paths.
    """
    first = start // BLOCK_SIZE
    last = (start + num_paths - 1) // BLOCK_SIZE
    block_start = first * BLOCK_SIZE
    return block_start, (last - first + 1) * BLOCK_SIZE, start - block_start


def cumulative_from_zero(increments: tf.Tensor) -> tf.Tensor:
    """``[T, B]`` increments -> ``[T + 1, B]`` running sums starting with a row of zeros."""
    zero = tf.zeros_like(increments[:1])
    return tf.concat([zero, tf.cumsum(increments, axis=0)], axis=0)


# -- GBM ----------------------------------------------------------------------------------------
def simulate_gbm(
    num_paths: int,
    steps: int,
    dt: float,
    s0: float = 1.0,
    mu: float = 0.0,
    sigma: float = 0.2,
    seed=0,
    start: int = 0,
    antithetic: bool = False,
    sobol: bool = False,
    dtype=tf.float32,
) -> MarketPaths:
    """Exact GBM paths on the grid ``t_k = k dt``, ``k = 0..steps``.

    Args:
      num_paths: number of paths ``B >= 1``.
      steps: number of time steps ``T >= 1``.
      dt: step length in years, ``> 0``.
      s0: initial spot, ``> 0``.
      mu: drift per year (annualised, continuously compounded).
      sigma: volatility per sqrt(year), ``>= 0``.
      seed: int or pair of ints; the same seed gives the same path ``i`` whatever the batch split.
      start: global index of the first path (for cutting one stream into batches).
      antithetic: antithetic normals (see :func:`deephedge_tf.market.random.path_normals`).
      sobol: Sobol quasi-random normals instead of pseudo-random ones.
      dtype: float32 or float64 for the computation and the output.

    Returns:
      :class:`MarketPaths` with ``spot`` ``[T + 1, B]``, ``variance`` = ``sigma**2`` everywhere and
      ``integrated_variance`` = ``sigma**2 * t_k``.
    """
    fn = "simulate_gbm"
    num_paths, steps, dt, start = check_grid(fn, num_paths, steps, dt, start)
    s0 = check_real(fn, "s0", s0, low=0.0, low_open=True)
    mu = check_real(fn, "mu", mu)
    sigma = check_real(fn, "sigma", sigma, low=0.0)
    dtype = as_float_dtype(dtype)

    block_start, block_paths, offset = whole_blocks(start, num_paths)
    z = path_normals(seed, block_paths, steps, 1, start=block_start, antithetic=antithetic,
                     sobol=sobol, dtype=dtype)[..., 0]  # [T, block_paths]
    drift = (mu - 0.5 * sigma * sigma) * dt
    log_growth = cumulative_from_zero(drift + sigma * math.sqrt(dt) * z)  # [T + 1, block_paths]
    spot = (s0 * tf.exp(log_growth))[:, offset:offset + num_paths]

    times = tf.range(steps + 1, dtype=dtype)[:, None] * dt  # [T + 1, 1]
    integrated_variance = tf.broadcast_to(sigma * sigma * times, [steps + 1, num_paths])
    variance = tf.fill([steps + 1, num_paths], tf.constant(sigma * sigma, dtype))
    return MarketPaths(dt=dt, spot=spot, variance=variance, integrated_variance=integrated_variance)
