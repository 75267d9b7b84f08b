"""The DH-KFAC policy: residual RMSNorm + LSTM blocks with action recurrence, trades as outputs.

One decision step (``B`` paths, ``F`` features, ``N`` instruments, ``W = width``)::

    x   = feature_in(features) + action_in(prev_action)        # two separate linear maps, [B, W]
    for i in 1..num_blocks:                                    # residual blocks
        h_i, c_i = LSTM_i(RMSNorm_i(x), (h_i, c_i));  x = x + h_i
    u   = mask * symexp(head(x))                               # [B, N], trades (not positions)

The head has a zero bias and a He-normal kernel scaled by ``head_scale``, so the untrained policy
trades ~``head_scale`` units: training starts near "no hedge" instead of at random positions.
The small scale also matters for stability: ``prev_action`` reaches the head linearly through the
residual stream, so with an O(1) head the loop ``u -> action_in -> head -> symexp -> u`` can grow
exponentially over a few steps.

Every linear map is a Keras layer call (two Dense input maps, the LSTM cells, the Dense head), so a
curvature optimizer captures them like any other model's (:mod:`deephedge_tf.optimizers.capture`):
each is one Kronecker block pooled over the time steps.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.validation import check_int, check_real
from deephedge_tf.layers import LSTMCell, RMSNorm, ScaledHeNormal, symexp
from deephedge_tf.policies.base import Policy


@keras.saving.register_keras_serializable(package="deephedge_tf")
class RecurrentPolicy(Policy):
    """Residual LSTM policy with action recurrence (Mueller et al. 2024, "Fast Deep Hedging").

    Args:
      num_instruments: ``N``, the number of hedging instruments (action columns); None: from the first
        observations.
      num_blocks: residual RMSNorm + LSTMCell blocks (>= 1).
      width: hidden width ``W`` (>= 1) of the input maps and every block.
      head_scale: factor (> 0) on the head's He-normal kernel; sets the size of the first actions.

    State: ``(h_1, c_1, ..., h_n, c_n)``, each ``[B, W]``, zeros at ``t_0``.

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> policy = RecurrentPolicy(num_instruments=2, num_blocks=2, width=8)
    >>> action, state = policy(obs, no_trades, policy.initial_state(3))
    >>> tuple(action.shape), [tuple(s.shape) for s in state], bool(tf.reduce_max(tf.abs(action)) < 0.1)
    ((3, 2), [(3, 8), (3, 8), (3, 8), (3, 8)], True)

    (The head starts at ``head_scale`` 1e-3: first trades are small.)
    """

    def __init__(self, num_instruments: int | None = None, num_blocks: int = 4, width: int = 32,
                 head_scale: float = 1e-3, **kwargs):
        super().__init__(num_instruments, **kwargs)
        self.num_blocks = check_int("RecurrentPolicy", "num_blocks", num_blocks, 1)
        self.width = check_int("RecurrentPolicy", "width", width, 1)
        self.head_scale = check_real("RecurrentPolicy", "head_scale", head_scale, low=0.0, low_open=True)
        dt = self.dtype_policy
        self.feature_in = keras.layers.Dense(self.width, name="feature_in", dtype=dt)
        self.action_in = keras.layers.Dense(self.width, name="action_in", dtype=dt)
        self.norms = [RMSNorm(name=f"block{i}_norm", dtype=dt) for i in range(self.num_blocks)]
        self.cells = [LSTMCell(self.width, name=f"block{i}_lstm", dtype=dt) for i in range(self.num_blocks)]
        # The head has N units: made here when N is given (the initialisers then draw their seeds in the
        # same order as always), else once the first observations tell N.
        self.head = None if self.num_instruments is None else self._make_head()

    def _make_head(self):
        return keras.layers.Dense(self.num_instruments, name="head", kernel_initializer=ScaledHeNormal(self.head_scale),
                                  bias_initializer="zeros", dtype=self.dtype_policy)

    def build(self, obs_shape):
        """Creates every weight; ``obs_shape`` is the dict of observation shapes (needs ``features``)."""
        super().build(obs_shape)
        if self.head is None:
            self.head = self._make_head()
        num_features = int(obs_shape["features"][-1])
        self.feature_in.build((None, num_features))
        self.action_in.build((None, self.num_instruments))
        for norm, cell in zip(self.norms, self.cells):
            norm.build((None, self.width))
            cell.build((None, self.width))
        self.head.build((None, self.width))

    def initial_state(self, batch_size, dtype=tf.float32) -> tuple:
        """``2 * num_blocks`` zero tensors ``[batch_size, width]``: ``(h_1, c_1, ..., h_n, c_n)``."""
        return tuple(tf.zeros((batch_size, self.width), dtype) for _ in range(2 * self.num_blocks))

    # ------------------------------------------------------------------ forward pass

    def step(self, obs, prev_action, state, training=None):
        features = obs["features"]
        x = self.feature_in(features) + self.action_in(tf.cast(prev_action, features.dtype))
        new_state = []
        for i in range(self.num_blocks):  # static Python loop: fine with autograph off
            h, c = state[2 * i], state[2 * i + 1]
            h_new, (_, c_new) = self.cells[i](self.norms[i](x), (h, c))
            x = x + h_new
            new_state += [h_new, c_new]
        return symexp(self.head(x)), tuple(new_state)

    def get_config(self):
        return {
            **super().get_config(),
            "num_blocks": self.num_blocks,
            "width": self.width,
            "head_scale": self.head_scale,
        }
