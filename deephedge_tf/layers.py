"""Keras building blocks of the policies: RMSNorm, SymExp / symlog, an LSTM cell, a scaled initializer.

All layers are registered under the package name ``deephedge_tf`` so a saved model that contains them
reloads by name once this module is imported.  They compute in the layer's compute dtype (float32 by
default; pass ``dtype="float64"`` for float64) and contain no Python control flow on tensor values, so
they trace under ``tf.function`` with autograph off (as Keras 3 traces ``train_step``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

_PACKAGE = "deephedge_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalisation over the last axis with a learned scale.

    ``y = x / sqrt(mean(x**2, axis=-1) + epsilon) * scale``; ``x``: ``[..., d]`` -> ``y``: ``[..., d]``;
    ``scale``: ``[d]``, initialised to ones.  Unlike LayerNorm there is no centring and no shift.

    >>> import tensorflow as tf
    >>> RMSNorm()(tf.constant([[3.0, 4.0]])).numpy()  # / sqrt((9 + 16) / 2)
    array([[0.8485281, 1.1313708]], dtype=float32)
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if not float(epsilon) >= 0.0:
            raise ValueError(f"RMSNorm: epsilon must be >= 0; got {epsilon}")
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(int(input_shape[-1]),), initializer="ones")

    def call(self, x):
        ms = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
        # tf.constant, not tf.cast: casting a Python float goes through float32 and loses digits.
        return x * tf.math.rsqrt(ms + tf.constant(self.epsilon, x.dtype)) * tf.cast(self.scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def symexp(x):
    """``sign(x) * (exp(|x|) - 1)`` elementwise (any shape); the inverse of :func:`symlog`.

    >>> import tensorflow as tf
    >>> symexp(tf.constant([-1.0, 0.0, 2.0])).numpy().round(4), symlog(symexp(tf.constant([-2.0, 0.5]))).numpy()
    (array([-1.7183,  0.    ,  6.3891], dtype=float32), array([-2. ,  0.5], dtype=float32))
"""
    return tf.sign(x) * tf.math.expm1(tf.abs(x))


def symlog(x):
    """``sign(x) * log(1 + |x|)`` elementwise (any shape); the inverse of :func:`symexp`."""
    return tf.sign(x) * tf.math.log1p(tf.abs(x))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SymExp(keras.layers.Layer):
    """``y = sign(x) * (exp(|x|) - 1)`` elementwise; no weights.

    Near zero it is the identity (slope 1), far from zero it grows exponentially, so a linear head
    followed by SymExp can output both tiny trades and large positions.  Overflows to ``inf`` for
    ``|x|`` above ~88 (float32) / ~709 (float64).
    """

    def call(self, x):
        return symexp(x)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ScaledHeNormal(keras.initializers.Initializer):
    """He-normal initializer (truncated normal, std ``sqrt(2 / fan_in)``) multiplied by ``scale``.

    Used for the recurrent policy's head so that actions start ~``scale`` in size.

    >>> import tensorflow as tf
    >>> weights = ScaledHeNormal(scale=1e-3, seed=0)([100, 10])
    >>> round(float(tf.math.reduce_std(weights)) / (2 / 100) ** 0.5 / 1e-3, 1)  # std / (scale He's sqrt(2 / fan_in))
    1.0
    """

    def __init__(self, scale: float = 1.0, seed=None):
        self.scale = float(scale)
        self.seed = seed
        self._he = keras.initializers.HeNormal(seed=seed)

    def __call__(self, shape, dtype=None):
        return self._he(shape, dtype=dtype) * self.scale

    def get_config(self):
        return {"scale": self.scale, "seed": self.seed}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LSTMCell(keras.layers.Layer):
    """One LSTM step, with its pre-activation exposed for curvature capture.

    Weights: ``kernel`` ``[d_in, 4u]``, ``recurrent_kernel`` ``[u, 4u]``, ``bias`` ``[4u]``.  The ``4u``
    columns are the gates in the order **i, f, g, o** (input, forget, cell candidate, output): the same
    layout as ``keras.layers.LSTMCell`` (which calls the candidate ``c``), so weights copy across as they
    are.  The forget-gate slice of the bias starts at ``forget_bias``, the rest at zero.

    ``call(x, (h, c))`` with ``x`` ``[B, d_in]``, ``h``, ``c`` ``[B, u]`` returns ``(h_new, (h_new, c_new))``:

        z = x @ kernel + h @ recurrent_kernel + bias          # preactivation, [B, 4u]
        i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
        c_new = f * c + i * g;  h_new = o * tanh(c_new)       # gates

    The two halves are public so a curvature optimizer can add a zero probe to ``z`` and record the
    layer input ``[x, h, 1]``: kernel, recurrent kernel and bias act on that input as one linear map.
    """

    def __init__(
        self,
        units: int,
        forget_bias: float = 1.0,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"LSTMCell: units must be >= 1; got {units}")
        self.units = int(units)
        self.forget_bias = float(forget_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)

    @property
    def state_size(self):
        return (self.units, self.units)

    def build(self, input_shape):
        d_in, u = int(input_shape[-1]), self.units
        self.kernel = self.add_weight(name="kernel", shape=(d_in, 4 * u), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(u, 4 * u), initializer=self.recurrent_initializer
        )
        forget_bias = self.forget_bias

        def bias_init(shape, dtype=None):
            # Only the forget slice is non-zero: start by remembering (Jozefowicz et al. 2015).
            zeros = tf.zeros((u,), dtype=dtype)
            return tf.concat([zeros, tf.fill((u,), tf.constant(forget_bias, dtype)), zeros, zeros], axis=0)

        self.bias = self.add_weight(name="bias", shape=(4 * u,), initializer=bias_init)

    def preactivation(self, x, h):
        """Gate pre-activations ``[B, 4u]`` from input ``x`` ``[B, d_in]`` and previous ``h`` ``[B, u]``."""
        dt = x.dtype
        return (
            tf.matmul(x, tf.cast(self.kernel, dt))
            + tf.matmul(h, tf.cast(self.recurrent_kernel, dt))
            + tf.cast(self.bias, dt)
        )

    def gates(self, z, c):
        """``(h_new, c_new)``, each ``[B, u]``, from pre-activations ``z`` ``[B, 4u]`` and cell ``c`` ``[B, u]``."""
        z_i, z_f, z_g, z_o = tf.split(z, 4, axis=-1)
        c_new = tf.sigmoid(z_f) * c + tf.sigmoid(z_i) * tf.tanh(z_g)
        h_new = tf.sigmoid(z_o) * tf.tanh(c_new)
        return h_new, c_new

    def call(self, x, states):
        h, c = states
        h_new, c_new = self.gates(self.preactivation(x, h), c)
        return h_new, (h_new, c_new)

    def get_initial_state(self, batch_size, dtype=None):
        """Zero ``(h, c)``, each ``[batch_size, u]``."""
        dtype = dtype or self.compute_dtype
        return (tf.zeros((batch_size, self.units), dtype), tf.zeros((batch_size, self.units), dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "forget_bias": self.forget_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
        }
