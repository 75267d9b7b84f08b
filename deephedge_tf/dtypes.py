"""Floating-point dtype handling.

The library computes in float32 by default (fast on every device) and in float64 on request
(pricing references, curvature tests).  Functions that take a ``dtype`` accept a
``tf.DType``, a numpy dtype or one of the strings ``"float32"`` / ``"float64"``.
"""

import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError

_ALLOWED = {"float32": tf.float32, "float64": tf.float64}


def as_float_dtype(dtype) -> tf.DType:
    """Returns ``tf.float32`` or ``tf.float64`` for ``dtype``; raises for anything else."""
    if dtype is None:
        return tf.float32
    try:
        d = tf.as_dtype(dtype)
    except TypeError as e:
        raise DeepHedgeError(f"dtype {dtype!r} is not understood; allowed: float32, float64") from e
    if d.name not in _ALLOWED:
        raise DeepHedgeError(f"dtype {d.name!r} is not supported; allowed: float32, float64")
    return d


def to_float(x, dtype) -> tf.Tensor:
    """``x`` (number, array or tensor) as a tensor of float ``dtype``.

    Plain numbers go through numpy at the target precision: ``tf.convert_to_tensor(0.2)`` would first
    round to float32 and lose 1e-8 before a cast to float64.
    """
    dtype = as_float_dtype(dtype)
    if isinstance(x, (tf.Tensor, tf.Variable)):
        return tf.cast(x, dtype)
    import numpy as np

    return tf.constant(np.asarray(x, dtype=dtype.as_numpy_dtype))
