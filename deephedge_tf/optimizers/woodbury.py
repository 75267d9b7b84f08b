"""The damped Gauss-Newton step in sample space (Woodbury), and its Levenberg-Marquardt damping.

The GGN of a loss over ``B`` paths has rank at most ``B``: ``C = R^T R`` with one row ``r_n`` per path
(:class:`~deephedge_tf.optimizers.losses.RowFactor`).  On a sub-batch of ``n`` rows the damped
Gauss-Newton direction is solved exactly in sample space:

    d = (R^T R + lambda I)^{-1} g = (g - R^T y) / lambda,   (R R^T + lambda I) y = R g

an ``n x n`` Cholesky solve (float64) instead of a ``P x P`` one.  Inside the span of the rows ``d`` is
the damped Newton step; outside it ``g / lambda``.  ``lambda I`` is the same in every direction, so
weights behind a small output layer are not blown up the way a Kronecker-factored inverse blows them up.

Rows, gradients and directions are per Kronecker block, stacked as the optimizer stacks them
(``[n, dim_a, d_out]`` rows, ``[dim_a, d_out]`` gradients); a block's tensor is the layer's kernel,
recurrent kernel and bias.  Pure tensor functions; the state (``lambda``) lives in the optimizer.

    >>> import tensorflow as tf
    >>> rows = {"w": tf.constant([[[1.0], [0.0]]])}           # one row r = (1, 0): C = diag(1, 0)
    >>> grads = {"w": tf.constant([[2.0], [2.0]])}
    >>> d = gauss_newton_direction(rows, grads, tf.constant(1.0, tf.float64))
    >>> [round(float(x), 3) for x in tf.reshape(d["w"], [-1])]   # (C + I)^-1 g
    [1.0, 2.0]
"""

from __future__ import annotations

import tensorflow as tf


def gram(rows: dict, scaled: dict = None):
    """``R M^-1 R^T`` ``[n, n]`` computed in float64, summed over the blocks of ``rows`` (``scaled`` =
    ``{block: M^-1 r_n}``; ``None``: ``M = I``).  In float32 its rounding errors (~1e-7 of the top
    eigenvalue) would exceed a small damping: the GGN of a hedge is nearly rank one, so ``lambda`` ~
    tr(C) / P sits 1e-5 .. 1e-7 below that eigenvalue, and the Cholesky factorisation would fail."""
    scaled = rows if scaled is None else scaled
    terms = [tf.einsum("nij,mij->nm", tf.cast(r, tf.float64), tf.cast(scaled[k], tf.float64))
             for k, r in rows.items()]
    return tf.add_n(terms)


def row_norms_squared(rows: dict):
    """``|R|_F^2 = tr(R^T R)`` (float64): the trace of the sample-space GGN."""
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(r, tf.float64))) for r in rows.values()])


def apply_rows(rows: dict, directions: dict):
    """``R d`` ``[n]`` (float64) for per-block ``directions``."""
    return tf.add_n([tf.einsum("nij,ij->n", tf.cast(rows[k], tf.float64), tf.cast(directions[k], tf.float64))
                     for k in rows])


def gauss_newton_direction(rows: dict, grads: dict, damping):
    """``d = (R^T R + damping I)^{-1} g`` per block (Woodbury; see the module doc).

    Args:
      rows: ``{block: [n, dim_a, d_out]}``, the rows of the factor ``C = R^T R``.
      grads: ``{block: [dim_a, d_out]}``, the same blocks.
      damping: ``lambda > 0`` (float64 scalar).

    Returns:
      ``{block: d [dim_a, d_out]}`` in each block's dtype.
    """
    return solve(rows, grads, damping, factorise(rows, damping))


def factorise(rows: dict, damping, scaled: dict = None):
    """The Cholesky factor of ``R M^-1 R^T + damping I`` (float64; ``scaled`` as in :func:`gram`): the
    ``O(n^2 P)`` part of the solve, the same for every gradient."""
    k = gram(rows, scaled)
    k = 0.5 * (k + tf.transpose(k))
    return tf.linalg.cholesky(k + tf.cast(damping, tf.float64) * tf.eye(tf.shape(k)[0], dtype=tf.float64))


def solve(rows: dict, grads: dict, damping, chol, scaled: dict = None, scaled_grads: dict = None):
    """:func:`gauss_newton_direction` with the factor of :func:`factorise` (same ``rows``, ``damping`` and
    ``scaled``).  With a metric (``scaled = {block: M^-1 r_n}``, ``scaled_grads = {block: M^-1 g}``)
    the direction is ``(R^T R + damping M)^-1 g = (M^-1 g - (M^-1 R^T) y) / damping``,
    ``(R M^-1 R^T + damping I) y = R M^-1 g``."""
    lam = tf.cast(damping, tf.float64)
    scaled = rows if scaled is None else scaled
    scaled_grads = grads if scaled_grads is None else scaled_grads
    y = tf.linalg.cholesky_solve(chol, apply_rows(scaled, grads)[:, None])[:, 0]
    out = {}
    for key, r in scaled.items():
        g = scaled_grads[key]
        back = tf.einsum("n,nij->ij", tf.cast(y, r.dtype), r)
        out[key] = (g - back) / tf.cast(lam, g.dtype)
    return out


def levenberg_marquardt(damping, ratio, lower=0.25, upper=0.75, shrink=2.0 / 3.0, grow=1.5, reject_grow=2.0,
                        streak=0, accept=0.1):
    """``(new damping, rejected)`` from the reduction ratio ``rho`` = actual / predicted decrease
    (Martens & Grosse 2015, sec. 6.5): ``rho > upper``: ``lambda * shrink``; ``rho < lower``:
    ``lambda * grow``; ``rho < accept`` or not finite: the step is rejected and ``lambda * reject_grow **
    (streak + 1)``, ``streak`` the rejections just before this one (Nielsen's escalation: a damping
    that is orders of magnitude too small costs a few rejected steps, not one per doubling).
    ``accept > 0`` (a trust region's ``eta_1``): a step that realised a sliver of its predicted decrease
    was far outside the model's range, and such steps are what leave ReLU layers dead."""
    ratio = tf.cast(ratio, damping.dtype)
    rejected = ~tf.math.is_finite(ratio) | (ratio < accept)
    factor = tf.where(ratio > upper, shrink, tf.where(ratio < lower, grow, 1.0))
    escalated = tf.pow(tf.cast(reject_grow, damping.dtype), tf.cast(streak, damping.dtype) + 1.0)
    factor = tf.where(rejected, escalated, tf.cast(factor, damping.dtype))
    return damping * factor, rejected
