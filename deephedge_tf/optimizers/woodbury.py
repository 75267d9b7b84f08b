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

from typing import NamedTuple

import tensorflow as tf


class Factor(NamedTuple):
    """What the solve needs of one step's rows and metric: ``chol``, the Cholesky factor of ``R M^-1 R^T
    + lambda I`` ``[n, n]``; ``weighted``, ``{block: r_n / sqrt(m)}`` (float64; the rows that go into it,
    kept so that each solve reads them once, uncast); ``root``, ``{block: 1 / sqrt(m)}`` (float64;
    ``None`` for ``M = I``)."""

    chol: tf.Tensor
    weighted: dict
    root: dict | None


def _root(rows: dict, metric: dict = None):
    """``{block: 1 / sqrt(m)}`` in float64 for the diagonal ``m`` of ``M`` (``None`` for ``M = I``)."""
    return None if metric is None else {k: tf.math.rsqrt(tf.cast(metric[k], tf.float64)) for k in rows}


def _weighted(rows: dict, root: dict = None) -> dict:
    """``{block: r_n / sqrt(m)}`` in float64: rows whose plain Gram is ``R M^-1 R^T`` (``root`` from
    :func:`_root`; ``None``: the rows themselves)."""
    return {k: tf.cast(r, tf.float64) if root is None else tf.cast(r, tf.float64) * root[k] for k, r in rows.items()}


def gram(rows: dict, metric: dict = None):
    """``R M^-1 R^T`` ``[n, n]`` computed in float64, summed over the blocks of ``rows`` (``metric`` =
    ``{block: m [dim_a, d_out]}``, the positive diagonal of ``M`` in the rows' coordinates; ``None``:
    ``M = I``).  In float32 its rounding errors (~1e-7 of the top eigenvalue) would exceed a small
    damping: the adapted ``lambda`` falls to 1e-5 .. 1e-9 of that eigenvalue (cliquet_small), and the
    direction ``(g - R^T y) / lambda`` would carry them divided by ``lambda``."""
    return _gram(_weighted(rows, _root(rows, metric)))


def _gram(weighted: dict):
    """``sum_k W_k W_k^T`` (float64) of ``{block: [n, ...]}``.  On a CPU-only machine outside XLA the product
    runs in the BLAS numpy ships (``tf.numpy_function``): TensorFlow's CPU float64 matrix product (Eigen)
    reaches ~20 GFLOP/s on one core where that BLAS reaches ~100, and this ``2 n^2 P`` product is the
    largest single piece of the Gauss-Newton step (0.1-0.2 s of cliquet_small's 1.2 s at n = 256; see
    BENCHMARKS.md).  On a GPU, and inside an XLA-compiled function (which cannot call Python), it is
    ``tf.einsum``; both give the same numbers to rounding (tested)."""
    blocks = list(weighted.values())
    if _host_blas():
        k = tf.numpy_function(_sum_of_grams, blocks, tf.float64, stateful=False, name="gram_host_blas")
        n = blocks[0].shape[0]
        k.set_shape([n, n])
        return k
    return tf.add_n([tf.einsum("nij,mij->nm", w, w) for w in blocks])


def _sum_of_grams(*blocks):
    total = None
    for w in blocks:
        flat = w.reshape(w.shape[0], -1)
        g = flat @ flat.T
        total = g if total is None else total + g
    return total


def _host_blas() -> bool:
    """Whether :func:`_gram` runs in numpy's BLAS: no GPU visible and not inside an XLA-compiled function."""
    from tensorflow.python.ops import control_flow_util  # the XLA context tf.function(jit_compile=True) sets

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return False
    return not tf.config.list_logical_devices("GPU")


def row_norms_squared(rows: dict):
    """``|R|_F^2 = tr(R^T R)`` (float64): the trace of the sample-space GGN."""
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(r, tf.float64))) for r in rows.values()])


def gauss_newton_direction(rows: dict, grads: dict, damping, metric: dict = None):
    """``d = (R^T R + damping M)^{-1} g`` per block (Woodbury; see the module doc).

    Args:
      rows: ``{block: [n, dim_a, d_out]}``, the rows of the factor ``C = R^T R``.
      grads: ``{block: [dim_a, d_out]}``, the same blocks.
      damping: ``lambda > 0`` (float64 scalar).
      metric: ``{block: m [dim_a, d_out]}``, the positive diagonal of ``M`` in the coordinates of
        ``rows`` and ``grads`` (``None``: ``M = I``).  A metric that is diagonal in another basis (a
        Kronecker eigenbasis) is used by handing over the rows and gradients in that basis.

    Returns:
      ``{block: d [dim_a, d_out]}`` in each block's dtype.
    """
    return solve(factorise(rows, damping, metric), grads, damping)[0]


def factorise(rows: dict, damping, metric: dict = None) -> Factor:
    """The :class:`Factor` of ``rows`` (``metric`` as in :func:`gram`): the ``O(n^2 P)`` part of the solve,
    the same for every gradient."""
    root = _root(rows, metric)
    weighted = _weighted(rows, root)
    k = _gram(weighted)
    k = 0.5 * (k + tf.transpose(k))
    chol = tf.linalg.cholesky(k + tf.cast(damping, tf.float64) * tf.eye(tf.shape(k)[0], dtype=tf.float64))
    return Factor(chol, weighted, root)


def solve(factor: Factor, grads: dict, damping):
    """``(d, R d)``: :func:`gauss_newton_direction` with the :class:`Factor` of the same rows, ``damping``
    and metric, and the rows times it.  ``d = M^-1 (g - R^T y) / damping`` with ``(R M^-1 R^T + damping
    I) y = R M^-1 g``; then ``R d = (R M^-1 g - R M^-1 R^T y) / damping = y`` exactly, so the step model's
    ``|R d|^2`` needs no pass over the rows (and is free of the cancellation in ``g - R^T y``)."""
    lam = tf.cast(damping, tf.float64)
    # In the weighted coordinates w = r / sqrt(m): R M^-1 g = W (g / sqrt(m)), M^-1 R^T y = (W^T y) / sqrt(m).
    root = factor.root
    scaled = {k: tf.cast(g, tf.float64) if root is None else tf.cast(g, tf.float64) * root[k]
              for k, g in grads.items()}
    b = tf.add_n([tf.einsum("nij,ij->n", factor.weighted[k], x) for k, x in scaled.items()])
    y = tf.linalg.cholesky_solve(factor.chol, b[:, None])[:, 0]
    out = {}
    for k, x in scaled.items():
        residual = x - tf.einsum("n,nij->ij", y, factor.weighted[k])
        if root is not None:
            residual = residual * root[k]
        out[k] = tf.cast(residual / lam, grads[k].dtype)
    return out, y


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
