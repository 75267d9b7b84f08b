"""Curvature estimates of one Kronecker block: pure tensor functions (no state), used by DHKFAC.

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

from deephedge_tf.dtypes import to_float


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
    floor = tf.maximum(tf.constant(epsilon, dt) * mean, tf.constant(float(_finfo(dt).tiny), dt))
    return tf.maximum(damped, floor)


def _finfo(dtype):
    """numpy's machine limits of a float dtype (``eps``, ``tiny``, ...)."""
    import numpy as np

    return np.finfo(tf.as_dtype(dtype).as_numpy_dtype)


def trust_radius(step, radius0: float, decay: float, radius_min: float, dtype):
    """``delta_k = max(radius0 * decay**k, radius_min)`` for the integer step ``k`` (a tensor)."""
    k = tf.cast(step, dtype)
    decayed = tf.constant(radius0, dtype) * tf.pow(tf.constant(decay, dtype), k)
    return tf.maximum(decayed, tf.constant(radius_min, dtype))


def trust_region_step(quad, eta_max, radius):
    """``eta = min(eta_max, sqrt(2 delta / q))`` (Ba, Grosse & Martens 2017); ``eta_max`` when ``q <= 0``.

    ``q = D^T C D`` is the curvature along the update direction ``D``, so the quadratic model's
    curvature term ``eta^2 q / 2`` of the step ``-eta D`` is at most ``delta``.
    """
    safe = tf.where(quad > 0, quad, tf.ones_like(quad))
    capped = tf.minimum(eta_max, tf.sqrt(2.0 * radius / safe))
    return tf.where(quad > 0, capped, eta_max)


def subspace_step(matrix, rhs, eta_max, radius=None):
    """``(alpha, mu)``: the step ``alpha V + mu P`` minimising an exact quadratic model of the loss.

    Model over ``x = (alpha, mu)``: ``m(x) = -x . b + x^T M x / 2`` with ``M = [V, P]^T C [V, P]``
    (2 x 2) and ``b = [g . V, g . P]`` (Martens & Grosse 2015, sec. 7).  The unconstrained minimiser
    ``x* = M^{-1} b`` is scaled down (i) so that its curvature term ``x^T M x / 2 = x* . b / 2`` is at
    most ``radius`` -- in the ``M``-norm this scaling is the exact trust-region solution -- and (ii) so
    that ``alpha <= eta_max``.

    When ``P`` carries no information (``M[1, 1] <= 0``, e.g. the first step, or ``V`` and ``P``
    collinear to rounding: ``det M <= tol M[0,0] M[1,1]`` with ``tol = max(1e-6, sqrt(eps))`` of the
    dtype -- ``det / (M[0,0] M[1,1]) = 1 - cos^2`` of the two directions, and rounding errors of ``M``
    (relative ``eps`` at least) reach the 2-D solution amplified by ``1 / (1 - cos^2)``, so this bounds
    them by ``sqrt(eps)``, 3.5e-4 in float32) the model is one-dimensional:
    ``alpha = b_0 / M[0, 0]``, ``mu = 0``.  ``M[0, 0] <= 0`` or ``b_0 <= 0`` gives ``(0, 0)`` (no model:
    callers check validity first).  ``radius=None``: no trust region.
    """
    m = tf.convert_to_tensor(matrix)
    b = tf.convert_to_tensor(rhs, m.dtype)
    dt = m.dtype
    a, c, d = m[0, 0], 0.5 * (m[0, 1] + m[1, 0]), m[1, 1]
    zero = tf.zeros((), dt)
    usable = (a > 0) & (b[0] > 0)
    safe_a = tf.where(usable, a, tf.ones_like(a))
    det = a * d - c * c
    tol = max(1e-6, float(_finfo(dt).eps) ** 0.5)
    two_d = (d > 0) & (det > tf.constant(tol, dt) * a * d) & usable
    safe_det = tf.where(two_d, det, tf.ones_like(det))
    alpha = tf.where(two_d, (d * b[0] - c * b[1]) / safe_det, b[0] / safe_a)
    mu = tf.where(two_d, (a * b[1] - c * b[0]) / safe_det, zero)
    # x . b > 0 whenever M is positive definite; the guard keeps rounding from flipping the step.
    half_quad = 0.5 * (alpha * b[0] + mu * b[1])
    scale = tf.ones((), dt)
    if radius is not None:
        r = to_float(radius, dt)
        scale = tf.where(half_quad > r, tf.sqrt(r / tf.where(half_quad > 0, half_quad, tf.ones_like(half_quad))), scale)
    eta_max = to_float(eta_max, dt)
    scale = tf.where(alpha * scale > eta_max, eta_max / tf.where(alpha > 0, alpha, tf.ones_like(alpha)), scale)
    ok = usable & (half_quad > 0) & tf.math.is_finite(half_quad)
    return tf.where(ok, scale * alpha, zero), tf.where(ok, scale * mu, zero)


def model_decrease(matrix, rhs):
    """The decrease ``x* . b / 2`` the quadratic model of :func:`subspace_step` predicts at its
    unconstrained minimiser ``x*`` (no trust region, no cap); 0 where the model is unusable.  The
    reference ``m_ref`` of a relative trust radius."""
    m = tf.convert_to_tensor(matrix)
    b = tf.convert_to_tensor(rhs, m.dtype)
    alpha, mu = subspace_step(m, b, float("inf"), None)
    return 0.5 * (alpha * b[0] + mu * b[1])
