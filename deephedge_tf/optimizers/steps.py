"""Step-size rules of DHKFAC: the decaying trust region and the exact quadratic model over the step
direction(s).  Pure tensor functions (no state)."""

from __future__ import annotations

import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.optimizers.estimator import finfo


def all_finite(tensors) -> tf.Tensor:
    """Whether every tensor of ``tensors`` (``None`` entries skipped, ``IndexedSlices`` made dense) is finite
    everywhere: a boolean scalar (True for none), the guard of every step that must not write a non-finite
    value."""
    flags = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(t))) for t in tensors if t is not None]
    if not flags:
        return tf.constant(True)
    return tf.reduce_all(tf.stack(flags))


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
    tol = max(1e-6, float(finfo(dt).eps) ** 0.5)
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
