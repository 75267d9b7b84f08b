"""The curvature estimator of one Kronecker block: pure tensor functions (no state), used by DHKFAC.

Factors with RNN-KFAC pooling, their eigenbases, the EKFAC diagonal and damping; the step rules that
use them (trust region, exact model) are in :mod:`deephedge_tf.optimizers.steps`.

Notation for one block over a batch of ``B`` paths and ``T`` uses of the layer (time steps):

    a[t, b]  extended layer input, [dim_a]      (a ones column last when the layer has a bias)
    g[t, b]  pseudo-gradient w.r.t. the layer's pre-activation, [d_out]
    M_b  = sum_t a[t, b] g[t, b]^T               per-path pseudo-gradient of the stacked weights W [dim_a, d_out]
    C    = (1/B) sum_b vec(M_b) vec(M_b)^T       the curvature block (exact when g is the exact per-path
                                                 GGN pseudo-gradient; its expectation when g is sampled)

``vec`` flattens ``[dim_a, d_out]`` row-major, so ``kron(A, G)`` (numpy order) is the Kronecker
approximation of ``C``.  Every function works on ``[T, B, .]`` tensors; ``T`` may be 1.
"""

from __future__ import annotations

import tensorflow as tf


def pooled_factors(a, g):
    """RNN-KFAC factors with "expand" pooling over time (Martens, Ba & Johnson 2018).

    Args:
      a: ``[T, B, dim_a]`` extended inputs.
      g: ``[T, B, d_out]`` per-path pseudo-gradients (not divided by ``B``).

    Returns:
      ``(A [dim_a, dim_a], G [d_out, d_out])`` with

          A = (1 / (T B)) sum_{t,b} a a^T          (time average: the input covariance)
          G = (1 / B)     sum_{t,b} g g^T          (summed over time)

    so that ``kron(A, G) = T * Abar (x) Gbar`` (``Abar``, ``Gbar`` the time averages): the temporally
    independent approximation of ``C`` (``M_b`` sums ``T`` terms).  For ``T = 1`` this is plain KFAC,
    ``A = E[a a^T]``, ``G = E[g g^T]``.  The ``T`` sits in ``G`` so that ``A`` stays a covariance (its
    bias entry is exactly 1) whatever the horizon.
    """
    steps = tf.cast(tf.shape(a)[0], a.dtype)
    paths = tf.cast(tf.shape(a)[1], a.dtype)
    factor_a = tf.einsum("tbi,tbj->ij", a, a) / (steps * paths)
    factor_g = tf.einsum("tbi,tbj->ij", g, g) / tf.cast(tf.shape(g)[1], g.dtype)
    return factor_a, factor_g


def ekfac_diagonal(a, g, u_a, u_g):
    """EKFAC diagonal (George et al. 2018) of ``C`` in the Kronecker eigenbasis, from per-path gradients.

    ``s[i, j] = (1/B) sum_b ((U_A^T M_b U_G)[i, j])^2`` with ``U_A^T M_b U_G = sum_t (U_A^T a_tb)(U_G^T g_tb)^T``:
    the inputs and pseudo-gradients are projected first.  For ``T = 1`` (static) the square of a rank
    one matrix factorises and no per-path matrix is formed: ``s = (a~^2)^T (g~^2) / B``.  For ``T > 1``
    the cross terms between time steps are what EKFAC adds over RNN-KFAC, so the ``[B, dim_a, d_out]``
    per-path matrices are formed (one batched matmul; size ``B * dim_a * d_out``).

    ``sum(s) = (1/B) sum_b ||M_b||_F^2 = tr(C)`` exactly, whatever the basis.

    Args:
      a: ``[T, B, dim_a]``; g: ``[T, B, d_out]``; u_a: ``[dim_a, dim_a]``, u_g: ``[d_out, d_out]``
        orthogonal (eigenvectors in columns).

    Returns:
      ``s`` ``[dim_a, d_out]``.
    """
    a_proj = tf.einsum("tbi,ij->tbj", a, u_a)
    g_proj = tf.einsum("tbi,ij->tbj", g, u_g)
    paths = tf.cast(tf.shape(a)[1], a.dtype)
    if a.shape[0] == 1:
        return tf.matmul(tf.square(a_proj[0]), tf.square(g_proj[0]), transpose_a=True) / paths
    per_path = tf.einsum("tbi,tbj->bij", a_proj, g_proj)
    return tf.reduce_sum(tf.square(per_path), axis=0) / paths


def carry_diagonal(s, u_a_old, u_g_old, u_a_new, u_g_new):
    """Diagonal, in a new Kronecker eigenbasis, of the estimate ``(U_A (x) U_G) diag(s) (U_A (x) U_G)^T``.

    ``s_new = (R_A o R_A) s (R_G o R_G)^T`` with ``R = U_new^T U_old`` and ``o`` the elementwise
    product.  Used when the eigenbasis is recomputed: the EMA of ``s`` then continues from the old
    estimate seen in the new basis instead of restarting (exact for that estimate's diagonal;
    the trace is preserved, ``R o R`` being doubly stochastic).  Signs of eigenvectors cancel.
    """
    r_a = tf.square(tf.matmul(u_a_new, u_a_old, transpose_a=True))
    r_g = tf.square(tf.matmul(u_g_new, u_g_old, transpose_a=True))
    return tf.matmul(tf.matmul(r_a, s), r_g, transpose_b=True)


def eigenbasis(matrix):
    """``(eigenvalues [d], eigenvectors [d, d], ok)`` of the symmetrised ``matrix``; ``ok`` false if not finite."""
    sym = 0.5 * (matrix + tf.linalg.matrix_transpose(matrix))
    values, vectors = tf.linalg.eigh(sym)
    ok = tf.logical_and(tf.reduce_all(tf.math.is_finite(values)), tf.reduce_all(tf.math.is_finite(vectors)))
    return values, vectors, ok


def damp(s, mode: str, damping: float, epsilon: float):
    """Damped diagonal ``s_d`` of one block (any shape; statistics over all entries).

    * ``"shrinkage"`` (paper eq. 11, ``damping = rho`` in [0, 1]): ``s_d = (1 - rho) s + rho mean(s)``,
      the block shrunk towards the scaled identity ``tr(C)/d * I`` (trace preserved).
    * ``"tikhonov"`` (``damping = lambda >= 0``): ``s_d = s + lambda``.

    A floor ``epsilon * mean(s)`` (and the dtype's smallest normal number) keeps ``1 / s_d`` finite
    when ``rho = 0`` / ``lambda = 0`` and the block is singular.
    """
    dt = s.dtype
    mean = tf.reduce_mean(s)
    if mode == "shrinkage":
        rho = tf.constant(damping, dt)
        damped = (1.0 - rho) * s + rho * mean
    elif mode == "tikhonov":
        damped = s + tf.constant(damping, dt)
    else:
        raise ValueError(f"damp: unknown mode {mode!r}")
    floor = tf.maximum(tf.constant(epsilon, dt) * mean, tf.constant(float(finfo(dt).tiny), dt))
    return tf.maximum(damped, floor)


def finfo(dtype):
    """numpy's machine limits of a float dtype (``eps``, ``tiny``, ...)."""
    import numpy as np

    return np.finfo(tf.as_dtype(dtype).as_numpy_dtype)
