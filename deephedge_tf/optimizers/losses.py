"""The curvature a loss owns: its generalised Gauss-Newton (GGN) factor with respect to the model outputs.

A GGN preconditioner is ``C = J^T H J``: ``J`` the Jacobian of the model outputs ``y`` (``[B, ...]``,
batch first) with respect to the weights, ``H`` the Hessian of the *batch* loss ``L(y)`` with respect to
``y``.  The model knows ``J``; only the loss knows ``H``.  An :class:`OutputCurvature` supplies it in the
two forms DH-KFAC needs:

* ``pseudo_gradient(y, targets, seed)``: per sample ``u_b`` (shape of ``y``) with
  ``E[u_b u_b^T] = B * H_bb``, the sample's diagonal block of ``H`` times the batch size ``B``.
  Back-propagated through the model (``output_gradients``), it gives the per-path pseudo-gradients of
  :meth:`DHKFAC.update_curvature <deephedge_tf.optimizers.DHKFAC.update_curvature>` (per path, not divided
  by ``B``).  Where ``H_bb`` has rank one per sample the factor is exact (no sampling).
* ``bilinear(y, u, v, targets)``: ``u^T H v`` with the full ``H`` (cross-sample terms included, e.g. the
  centring of a variance), for ``u = J V1``, ``v = J V2`` from forward-mode passes: the exact quadratic
  model of the loss along a step.

* ``jacobian_rows(y, targets, seed)``: a :class:`RowFactor`, the recipe for rows ``r_b`` of the
  sample-space factor ``C ~= sum_b r_b r_b^T`` that the Gauss-Newton step rule solves with exactly
  (Woodbury): per path the weight gradient of ``cotangent_b . y_b``, times ``scale_b``, centred with
  weights ``centre``.  Exact (cross-sample terms included) where each sample has one output; sampled from
  the pseudo-gradients otherwise.

Cross-sample terms of ``H`` (a variance's centring, an entropic weight normalisation) cannot enter
per-path statistics; they are in :meth:`OutputCurvature.bilinear`, which sizes the step, and in the
centring of :meth:`OutputCurvature.jacobian_rows`.

Keras losses: :func:`loss_curvature` maps ``"mse"``, ``"categorical_crossentropy"``,
``"sparse_categorical_crossentropy"`` (names, classes or functions) to :class:`MeanSquaredErrorCurvature`
and :class:`CrossEntropyCurvature`.  The hedging objectives (:mod:`deephedge_tf.objectives`) carry their
own (``objective.output_curvature()``).

    >>> import numpy as np, tensorflow as tf
    >>> c = loss_curvature("mse")
    >>> y = tf.zeros((4, 1))
    >>> float(c.bilinear(y, tf.ones((4, 1)), tf.ones((4, 1))))     # 2/(B K) * sum(u v) = 2
    2.0
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass
class RowFactor:
    """How to form the rows of the sample-space factor of ``C = J^T H J`` (batch of ``B`` samples).

    With ``j_b`` the weight gradient of ``cotangent_b . y_b`` (one backward pass of ``cotangent`` gives
    all of them), the rows are

        r_b = scale_b * (j_b - sum_b' centre_b' j_b')        (no centring when ``centre`` is None)

    and ``sum_b r_b r_b^T = C`` exactly, or in expectation when ``cotangent`` is sampled.  ``scale``
    is ``[B]`` or ``None`` (then ``1 / sqrt(B)``: ``cotangent`` is a pseudo-gradient, ``E[u u^T] = B
    H_bb``); ``centre`` is ``[B]`` weights summing to one.
    """

    cotangent: object
    scale: object = None
    centre: object = None


def scalar_rows(outputs, weight, centre=None) -> RowFactor:
    """Rows of a loss whose Hessian over one output per sample is ``(I - 1 c^T)^T diag(weight) (I - 1 c^T)``
    (``centre`` c; identity without): ``r_b = sqrt(weight_b) (j_b - sum c j)`` with ``j_b = dy_b / dw``."""
    y = tf.convert_to_tensor(outputs)
    return RowFactor(tf.ones_like(y), tf.sqrt(tf.reshape(weight, [-1])),
                     None if centre is None else tf.reshape(centre, [-1]))


class OutputCurvature:
    """Base class: the GGN factor of a loss with respect to the model outputs (see module doc)."""

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        """``u`` (shape of ``outputs``), per sample, with ``E[u_b u_b^T] = B H_bb``."""
        raise NotImplementedError

    def jacobian_rows(self, outputs, targets=None, seed=None, sample_weight=None) -> RowFactor:
        """The :class:`RowFactor` of the sample-space GGN factor.  Default: the pseudo-gradients
        (exact for the diagonal blocks ``H_bb`` where they are, cross-sample terms left out)."""
        return RowFactor(self.pseudo_gradient(outputs, targets, seed, sample_weight))

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        """``u^T H v`` (scalar) with the full Hessian ``H`` of the batch loss w.r.t. the outputs."""
        raise NotImplementedError


def _seed(seed):
    return tf.constant([0, 0], tf.int64) if seed is None else tf.cast(seed, tf.int64)


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (two xor-shift-multiply rounds, multiplier 0x45d9f3b) on int64 holding
    values below 2^32: products stay below 2^63, so no backend ever overflows."""
    for _ in range(2):
        x = (tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x) * 0x45D9F3B) & _MASK32
    return tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x)


def rademacher(shape, seed, dtype):
    """Independent signs +-1 (``E[z z^T] = I``): the draws of the sampled pseudo-gradients.

    A counter hash of (seed, element index) in integer arithmetic instead of TensorFlow's stateless
    random ops: those give other numbers under XLA than in the plain graph (normal, uniform and integer
    draws alike), and a train step compiled with ``jit_compile`` must sample the curvature it samples
    without (and a GPU the one a CPU does).

        >>> import tensorflow as tf
        >>> z = rademacher([4000], tf.constant([1, 2], tf.int64), tf.float64)
        >>> sorted(set(z.numpy().tolist())), abs(float(tf.reduce_mean(z))) < 0.05
        ([-1.0, 1.0], True)
    """
    bits = _hashed_bits(shape, seed) & 1
    return tf.reshape(tf.cast(2 * bits - 1, dtype), shape)


def _hashed_bits(shape, seed):
    """32 hashed bits per element of ``shape`` (flat int64): the counter hash of :func:`rademacher`."""
    seed = _seed(seed) & _MASK32
    key = _mix32(_mix32(seed[0]) ^ seed[1])
    index = tf.range(tf.reduce_prod(tf.cast(shape, tf.int64)), dtype=tf.int64)
    return _mix32(_mix32(index) ^ key)


def hashed_uniform(shape, seed, dtype):
    """Uniform draws in ``(0, 1)`` (24 bits each) from the same counter hash: the same under XLA and in the
    plain graph.

        >>> import tensorflow as tf
        >>> u = hashed_uniform([4000], tf.constant([1, 2], tf.int64), tf.float64)
        >>> bool(tf.reduce_min(u) > 0.0), bool(tf.reduce_max(u) < 1.0), abs(float(tf.reduce_mean(u)) - 0.5) < 0.02
        (True, True, True)
    """
    top = tf.bitwise.right_shift(_hashed_bits(shape, seed), 8)  # 24 bits: exact in float32 too
    return tf.reshape((tf.cast(top, dtype) + 0.5) / float(1 << 24), shape)


def _flat(x):
    """``[B, ...]`` -> ``[B, K]`` (``K`` static when the trailing shape is)."""
    x = tf.convert_to_tensor(x)
    trailing = x.shape[1:]
    k = int(trailing.num_elements()) if trailing.is_fully_defined() else -1
    return tf.reshape(x, [tf.shape(x)[0], k])


def _weights(sample_weight, like):
    """Per-sample weights ``[B]`` (ones when ``None``) in ``like``'s dtype."""
    if sample_weight is None:
        return tf.ones(tf.shape(like)[:1], like.dtype)
    return tf.reshape(tf.cast(sample_weight, like.dtype), [-1])


class MeanSquaredErrorCurvature(OutputCurvature):
    """Keras' mean squared error, ``L = (1/B) sum_b w_b mean_k (y_bk - t_bk)^2``: ``H = 2 w_b / (B K) I``.

    One output per sample (``K = 1``): the factor ``sqrt(2 w_b)`` is exact; ``K > 1``: sampled,
    ``u_b = sqrt(2 w_b / K) z_b`` with ``z_b`` random signs (:func:`rademacher`).
    """

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        y = tf.convert_to_tensor(outputs)
        flat = _flat(y)
        k = flat.shape[-1]
        w = _weights(sample_weight, flat)
        scale = tf.sqrt(2.0 * w / tf.constant(float(k), flat.dtype))[:, None]
        if k == 1:
            return tf.reshape(scale * tf.ones_like(flat), tf.shape(y))
        z = rademacher(tf.shape(flat), seed, flat.dtype)
        return tf.reshape(scale * z, tf.shape(y))

    def jacobian_rows(self, outputs, targets=None, seed=None, sample_weight=None) -> RowFactor:
        flat = _flat(outputs)
        if flat.shape[-1] != 1:
            return super().jacobian_rows(outputs, targets, seed, sample_weight)
        w = _weights(sample_weight, flat)
        return scalar_rows(outputs, 2.0 * w / tf.cast(tf.shape(flat)[0], flat.dtype))

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        u, v = _flat(u), _flat(v)
        w = _weights(sample_weight, u)
        size = tf.cast(tf.shape(u)[0], u.dtype) * tf.constant(float(u.shape[-1]), u.dtype)
        return 2.0 * tf.reduce_sum(w[:, None] * u * v) / size


class CrossEntropyCurvature(OutputCurvature):
    """Keras' (sparse) categorical cross-entropy over the last axis, ``L = (1/B) sum_b w_b CE_b``.

    The GGN of cross-entropy is the Fisher of the model's predictive distribution, so the targets do not
    enter.  Pseudo-gradients are sampled from it: ``y_b ~ Categorical(p_b)`` and ``u_b`` the gradient
    of ``-log p_b[y_b]`` w.r.t. the output, ``p - e_y`` for logits, ``-e_y / p_y`` for probabilities
    (back-propagated through a softmax this is again ``p - e_y`` at the logits).  Exact forms:
    logits ``H_b = (diag(p) - p p^T) / B``, probabilities ``H_b = diag(1 / p) / B`` (the Fisher in
    probability coordinates; pulled back through a softmax it equals the former).

    Args:
      from_logits: whether the model outputs logits (else probabilities, clipped to ``[eps, 1]``).
    """

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def _probabilities(self, y):
        if self.from_logits:
            return tf.nn.softmax(y, axis=-1)
        eps = tf.constant(keras.config.epsilon(), y.dtype)
        p = tf.clip_by_value(y, eps, 1.0)
        return p / tf.reduce_sum(p, axis=-1, keepdims=True)

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        y = tf.convert_to_tensor(outputs)
        p = self._probabilities(y)
        classes = p.shape[-1]
        flat_p = tf.reshape(p, [-1, classes])
        # Inverse CDF on the counter hash (stateless_categorical has no XLA kernel, and the same draws
        # compiled or not keep jit_compile's step the plain one).
        uniform = hashed_uniform(tf.shape(flat_p)[:1], seed, flat_p.dtype)
        below = tf.cast(tf.math.cumsum(flat_p, axis=-1) < uniform[:, None], tf.int32)
        draw = tf.minimum(tf.reduce_sum(below, axis=-1), classes - 1)
        onehot = tf.reshape(tf.one_hot(draw, classes, dtype=y.dtype), tf.shape(y))
        u = p - onehot if self.from_logits else -onehot / p
        # Keras averages over every position of a [B, ..., C] output: per sample, 1 / positions.
        positions = tf.cast(tf.size(p) // (tf.shape(p)[0] * classes), u.dtype)
        w = _weights(sample_weight, u) / positions
        return u * tf.reshape(tf.sqrt(w), [-1] + [1] * (u.shape.rank - 1))

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        y = tf.convert_to_tensor(outputs)
        p = self._probabilities(y)
        if self.from_logits:
            per = tf.reduce_sum(p * u * v, -1) - tf.reduce_sum(p * u, -1) * tf.reduce_sum(p * v, -1)
        else:
            per = tf.reduce_sum(u * v / p, -1)
        per = _flat(per)  # [B, positions]: Keras averages over all of them
        w = _weights(sample_weight, per)
        return tf.reduce_sum(w[:, None] * per) / tf.cast(tf.size(per), per.dtype)


_MSE_NAMES = ("mse", "mean_squared_error", "MeanSquaredError")
_CE_NAMES = ("categorical_crossentropy", "CategoricalCrossentropy", "sparse_categorical_crossentropy",
             "SparseCategoricalCrossentropy")
SUPPORTED_LOSSES = ("mse", "categorical_crossentropy", "sparse_categorical_crossentropy")


def loss_curvature(loss) -> OutputCurvature:
    """The :class:`OutputCurvature` of a Keras loss given as to ``compile`` (name, class instance or
    function), or ``loss`` itself when it is one already.

    Raises:
      ValueError: a loss without a known curvature (names the loss and lists the supported ones).
    """
    if isinstance(loss, OutputCurvature):
        return loss
    if hasattr(loss, "output_curvature"):
        return loss.output_curvature()
    name = loss if isinstance(loss, str) else None
    if isinstance(loss, keras.losses.Loss):
        name = type(loss).__name__
    elif callable(loss) and name is None:
        name = getattr(loss, "__name__", None)
    if name in _MSE_NAMES:
        return MeanSquaredErrorCurvature()
    if name in _CE_NAMES:
        from_logits = bool(getattr(loss, "from_logits", False))
        if isinstance(loss, keras.losses.Loss):
            from_logits = bool(loss.get_config().get("from_logits", False))
        return CrossEntropyCurvature(from_logits=from_logits)
    raise ValueError(
        f"DHKFAC: no curvature known for the loss {loss!r}; supported: {', '.join(SUPPORTED_LOSSES)} "
        "(names, keras.losses classes or functions), a deephedge_tf objective, or pass "
        "with_curvature(model, curvature=<an OutputCurvature>)")
