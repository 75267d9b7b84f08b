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

For curvature optimizers (KFAC-type), :meth:`RecurrentPolicy.step_with_capture` adds a caller-given
probe to every linear map's pre-activation and returns each map's input, and
:meth:`RecurrentPolicy.linear_maps` lists the maps with their weights.  With the input extended by a
ones column, ``a_ext`` ``[B, d_in + 1]``, and ``g = dL/dprobe`` ``[B, d_out]``, the map's gradient is
``sum_t a_ext_t^T g_t`` = ``concat([kernel(s)..., bias[None]], 0)``'s gradient.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.layers import LSTMCell, RMSNorm, ScaledHeNormal, symexp
from deephedge_tf.policies.base import Policy


@keras.saving.register_keras_serializable(package="deephedge_tf")
class RecurrentPolicy(Policy):
    """Residual LSTM policy with action recurrence (Mueller et al. 2024, "Fast Deep Hedging").

    Args:
      num_instruments: ``N``, the number of hedging instruments (action columns).
      num_blocks: residual RMSNorm + LSTMCell blocks (>= 1).
      width: hidden width ``W`` (>= 1) of the input maps and every block.
      head_scale: factor (> 0) on the head's He-normal kernel; sets the size of the first actions.

    State: ``(h_1, c_1, ..., h_n, c_n)``, each ``[B, W]``, zeros at ``t_0``.
    """

    def __init__(self, num_instruments: int, num_blocks: int = 4, width: int = 32, head_scale: float = 1e-3, **kwargs):
        super().__init__(num_instruments, **kwargs)
        if int(num_blocks) < 1:
            raise DeepHedgeError(f"RecurrentPolicy: num_blocks must be >= 1; got {num_blocks}")
        if int(width) < 1:
            raise DeepHedgeError(f"RecurrentPolicy: width must be >= 1; got {width}")
        if not float(head_scale) > 0.0:
            raise DeepHedgeError(f"RecurrentPolicy: head_scale must be > 0; got {head_scale}")
        self.num_blocks = int(num_blocks)
        self.width = int(width)
        self.head_scale = float(head_scale)
        dt = self.dtype_policy
        self.feature_in = keras.layers.Dense(self.width, name="feature_in", dtype=dt)
        self.action_in = keras.layers.Dense(self.width, name="action_in", dtype=dt)
        self.norms = [RMSNorm(name=f"block{i}_norm", dtype=dt) for i in range(self.num_blocks)]
        self.cells = [LSTMCell(self.width, name=f"block{i}_lstm", dtype=dt) for i in range(self.num_blocks)]
        self.head = keras.layers.Dense(
            self.num_instruments,
            name="head",
            kernel_initializer=ScaledHeNormal(self.head_scale),
            bias_initializer="zeros",
            dtype=dt,
        )

    def build(self, obs_shape):
        """Creates every weight; ``obs_shape`` is the dict of observation shapes (needs ``features``)."""
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

    def _forward(self, obs, prev_action, state, probes):
        """Shared by :meth:`step` and :meth:`step_with_capture` so both compute the same numbers.

        ``probes`` is ``None`` (plain step) or a dict name -> ``[B, d_out]`` (missing names: no probe).
        Returns ``(raw action [B, N], new state, inputs dict name -> [B, d_in])``.
        """
        features = obs["features"]
        dt = features.dtype
        prev_action = tf.cast(prev_action, dt)
        inputs = {}

        def linear(name, layer, a):
            # Pre-activation computed from the Dense weights directly so a probe can be added to it.
            inputs[name] = a
            z = tf.matmul(a, tf.cast(layer.kernel, dt)) + tf.cast(layer.bias, dt)
            if probes is not None and name in probes:
                z = z + probes[name]
            return z

        x = linear("feature_in", self.feature_in, features) + linear("action_in", self.action_in, prev_action)
        new_state = []
        for i in range(self.num_blocks):  # static Python loop: fine with autograph off
            h, c = state[2 * i], state[2 * i + 1]
            xn = self.norms[i](x)
            name = f"block{i}/lstm"
            inputs[name] = tf.concat([xn, h], axis=-1)
            z = self.cells[i].preactivation(xn, h)
            if probes is not None and name in probes:
                z = z + probes[name]
            h_new, c_new = self.cells[i].gates(z, c)
            x = x + h_new
            new_state += [h_new, c_new]
        action = symexp(linear("head", self.head, x))
        return action, tuple(new_state), inputs

    def step(self, obs, prev_action, state, training=None):
        action, new_state, _ = self._forward(obs, prev_action, state, None)
        return action, new_state

    def step_with_capture(self, obs, prev_action, state, probes):
        """One step with probes on the pre-activations, for curvature statistics.

        Args:
          obs, prev_action, state: as for :meth:`call`.
          probes: dict name -> ``[B, d_out]`` tensor added to that linear map's pre-activation; names
            from :meth:`linear_maps` (``"feature_in"``, ``"action_in"``, ``"block{i}/lstm"``, ``"head"``).
            Zero tensors watched by a GradientTape give ``dL/d pre-activation``.

        Returns:
          ``(action [B, N] (masked, as call), new_state, inputs)``, ``inputs[name]`` the map's input
          ``[B, d_in]`` without the ones column (LSTM: ``concat([RMSNorm(x), h_prev], -1)``).
        """
        if not self.built:
            self.build({k: tuple(v.shape) for k, v in obs.items()})
        action, new_state, inputs = self._forward(obs, prev_action, tuple(state), probes)
        return action * tf.cast(obs["mask"], action.dtype), new_state, inputs

    def linear_maps(self):
        """The linear maps in forward order: ``[(name, [weights], d_in, d_out), ...]``.

        ``weights`` stack vertically into the ``[d_in + 1, d_out]`` matrix acting on ``[input, 1]``:
        ``[kernel, bias]`` for a dense map, ``[kernel, recurrent_kernel, bias]`` for an LSTM
        (``d_in = 2 * width``, ``d_out = 4 * width``).  RMSNorm scales are in no map
        (see :meth:`unmapped_variables`).  The policy must be built.
        """
        if not self.built:
            raise RuntimeError("RecurrentPolicy.linear_maps: build the policy first (call it once)")
        w = self.width
        maps = [
            ("feature_in", [self.feature_in.kernel, self.feature_in.bias], int(self.feature_in.kernel.shape[0]), w),
            ("action_in", [self.action_in.kernel, self.action_in.bias], self.num_instruments, w),
        ]
        for i, cell in enumerate(self.cells):
            maps.append((f"block{i}/lstm", [cell.kernel, cell.recurrent_kernel, cell.bias], 2 * w, 4 * w))
        maps.append(("head", [self.head.kernel, self.head.bias], w, self.num_instruments))
        return maps

    def unmapped_variables(self):
        """Trainable variables outside :meth:`linear_maps` (the RMSNorm scales), in forward order."""
        mapped = {id(v) for _, ws, _, _ in self.linear_maps() for v in ws}
        return [v for v in self.trainable_variables if id(v) not in mapped]

    def get_config(self):
        return {
            **super().get_config(),
            "num_blocks": self.num_blocks,
            "width": self.width,
            "head_scale": self.head_scale,
        }
