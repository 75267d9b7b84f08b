"""Feed-forward policy of Deep Hedging (Buehler, Gonon, Teichmann, Wood 2019).

One network shared over time maps ``[features, holdings]`` (the position held before trading) to the
target position; the trade is ``target - holdings``.  Feeding the holdings back is what lets the
network account for transaction costs (it sees what a trade would cost to undo).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.validation import check_int
from deephedge_tf.policies.base import Policy

_ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "silu", "softplus", "sigmoid", "leaky_relu")


def _check_body(owner: str, num_layers, width, activation):
    """Validates the hidden-layer parameters shared by the MLP and band policies."""
    check_int(owner, "num_layers", num_layers, 0)
    check_int(owner, "width", width, 1)
    if activation not in _ACTIVATIONS:
        raise DeepHedgeError(f"{owner}: activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}")


def dense_stack(num_layers: int, width: int, activation: str, out_dim: int, dtype, prefix: str = ""):
    """``num_layers`` hidden Dense(width, activation) layers then a linear Dense(out_dim).

    Returns the list of layers (``[..., d] -> [..., out_dim]`` when applied in order).
    """
    layers = [
        keras.layers.Dense(width, activation=activation, name=f"{prefix}hidden{i}", dtype=dtype)
        for i in range(num_layers)
    ]
    layers.append(keras.layers.Dense(out_dim, name=f"{prefix}out", dtype=dtype))
    return layers


def build_stack(layers, in_dim: int):
    """Builds the layers of :func:`dense_stack` for inputs ``[B, in_dim]``."""
    d = in_dim
    for layer in layers:
        layer.build((None, d))
        d = layer.units


def apply_stack(layers, x):
    """Applies the layers of :func:`dense_stack` in order: ``[B, d] -> [B, out_dim]``."""
    for layer in layers:
        x = layer(x)
    return x


@keras.saving.register_keras_serializable(package="deephedge_tf")
class MLPPolicy(Policy):
    """Target positions from ``[features, holdings]`` by an MLP shared over time.

    Args:
      num_instruments: ``N`` (None: from the first observations).
      num_layers: hidden layers (>= 0; 0 gives a linear policy).
      width: units per hidden layer.
      activation: hidden activation, one of relu, tanh, elu, gelu, silu, softplus, sigmoid, leaky_relu.

    Input ``[B, F + N]``; output trades ``[B, N]`` = target ``[B, N]`` - holdings, masked by ``call``.

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> policy = MLPPolicy(num_layers=1, width=8)          # N from the first observations
    >>> action, state = policy(obs, no_trades)
    >>> tuple(action.shape), policy.num_instruments, state
    ((3, 2), 2, ())
    """

    outputs_positions = True

    def __init__(self, num_instruments: int | None = None, num_layers: int = 2, width: int = 32,
                 activation: str = "relu", **kwargs):
        _check_body("MLPPolicy", num_layers, width, activation)
        super().__init__(num_instruments, **kwargs)
        self.num_layers = int(num_layers)
        self.width = int(width)
        self.activation = activation
        # The output layer has N units: made here when N is given (the initialisers then draw their
        # seeds in the same order as always), else once the first observations tell N.
        self.net = None if self.num_instruments is None else self._make_net()

    def _make_net(self):
        return dense_stack(self.num_layers, self.width, self.activation, self.num_instruments, self.dtype_policy)

    def build(self, obs_shape):
        """Creates the weights; ``obs_shape`` is the dict of observation shapes (needs ``features``)."""
        super().build(obs_shape)
        if self.net is None:
            self.net = self._make_net()
        build_stack(self.net, int(obs_shape["features"][-1]) + self.num_instruments)

    def step(self, obs, prev_action, state, training=None):
        holdings = tf.cast(obs["holdings"], obs["features"].dtype)
        target = apply_stack(self.net, tf.concat([obs["features"], holdings], axis=-1))
        return target - holdings, state

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "width": self.width,
            "activation": self.activation,
        }
