"""No-transaction band networks: a network gives a band for the spot position, the old position is
clamped into it.

Both policies trade the spot only (column 0, :func:`~deephedge_tf.policies.base.spot_only_trade`).
The network sees the features only, never the current position: that is the point of the band
construction (Imaki et al. 2021): the position enters through the clamp, whose gradient w.r.t. the
band edges is exact, instead of through the network inputs.

* :class:`NoTransactionBandPolicy` (Imaki, Imajo, Ito, Minami, Nakagawa 2021, arXiv:2103.01775):
  "a neural network inputs the market information and outputs a permissible band of the next
  position [b_l, b_u]; the next position is the current position clamped into the band".  The paper's
  text (our copy: ``shared/papers/no-transaction-band-network.txt``) outputs the two edges directly,
  with no Black-Scholes anchor; that is the default (``anchor="none"``).  The authors' reference code
  (and pfhedge) anchor the band on the Black-Scholes delta,
  ``[delta - leaky_relu(o_1), delta + leaky_relu(o_2)]`` (slope 0.01); ``anchor="bs_delta"`` gives that.
  The paper's clamp assumes ``b_l <= b_u``; nothing in a raw network output guarantees it, so both
  variants order the edges as ``lower = min(e_1, e_2)``, ``upper = max(e_1, e_2)`` (unchanged whenever
  the network already outputs an ordered band).
* :class:`DeltaAnchoredBandPolicy` (DHLNN paper, eq. 16-17): ``[delta_bs - f, delta_bs + f]``.  The
  paper leaves ``f`` unconstrained (a negative ``f`` makes ``min(max(l, d), u)`` return the upper edge,
  i.e. an inverted band); we use ``f = softplus(o) >= 0`` so the band is a band, and one symmetric
  half-width as eq. 16 writes it (its appendix D mentions two outputs ``f_1, f_2``; not followed).
  Eq. 16 feeds the network ``x_{t_{i+1}}`` next to ``delta_bs_{t_i}``; we read it as the information
  available at the decision time (this step's features): anything later would be look-ahead.

``delta_bs`` is ``obs["bs_delta"]``, the Black-Scholes delta of the liability; we are short the
liability, so the delta hedge holds ``+delta_bs`` units of spot.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.policies.base import Policy, spot_only_trade
from deephedge_tf.policies.mlp import _check_body, apply_stack, build_stack, dense_stack

_ANCHORS = ("none", "bs_delta")
_LEAKY_SLOPE = 0.01  # PyTorch's default, as in the reference code


def _leaky_relu(x):
    """``max(x, 0.01 x)``; tf.nn.leaky_relu keeps its slope as a float32 attribute even in float64."""
    return tf.maximum(x, _LEAKY_SLOPE * x)


def clamp_to_band(position, lower, upper):
    """``min(max(position, lower), upper)`` elementwise (all ``[B]``); assumes ``lower <= upper``."""
    return tf.minimum(tf.maximum(position, lower), upper)


class _BandPolicy(Policy):
    """Shared parts: an MLP on the features with ``num_outputs`` outputs, spot-only clamped trades."""

    needs_spot = True
    outputs_positions = True
    num_outputs = 2

    def __init__(self, num_instruments: int | None = None, num_layers: int = 2, width: int = 32, **kwargs):
        super().__init__(num_instruments, **kwargs)
        _check_body(type(self).__name__, num_layers, width, "relu")
        self.num_layers = int(num_layers)
        self.width = int(width)
        self.net = dense_stack(self.num_layers, self.width, "relu", self.num_outputs, self.dtype_policy)

    def build(self, obs_shape):
        """Creates the weights; ``obs_shape`` is the dict of observation shapes (needs ``features``)."""
        super().build(obs_shape)
        build_stack(self.net, int(obs_shape["features"][-1]))

    def band(self, obs):
        """``(lower, upper)``, each ``[B]``, of the band for the spot position."""
        raise NotImplementedError

    def step(self, obs, prev_action, state, training=None):
        lower, upper = self.band(obs)
        prev_position = tf.cast(obs["holdings"][:, 0], lower.dtype)
        target = clamp_to_band(prev_position, lower, upper)
        holdings = tf.cast(obs["holdings"], lower.dtype)
        return spot_only_trade(target, {**obs, "holdings": holdings}, self.num_instruments), state

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "width": self.width}


@keras.saving.register_keras_serializable(package="deephedge_tf")
class NoTransactionBandPolicy(_BandPolicy):
    """No-transaction band network (Imaki et al. 2021); see the module docstring for the band.

    Args:
      num_instruments: ``N`` (column 0 must be the spot; the others are never traded).
      num_layers, width: hidden ReLU layers of the band network.
      anchor: ``"none"`` (the paper: the network outputs the edges) or ``"bs_delta"`` (reference code:
        ``obs["bs_delta"] -/+ leaky_relu(outputs)``).

    ``features [B, F] -> MLP -> [B, 2] -> band -> clamp(holdings[:, 0]) -> trades [B, N]``.

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> policy = NoTransactionBandPolicy(num_layers=1, width=8)
    >>> action, _ = policy(obs, no_trades)
    >>> lower, upper = policy.band(obs)
    >>> target = min(max(0.0, float(lower[0])), float(upper[0]))  # the holdings (0) clamped to the band
    >>> bool(abs(float(action[0, 0]) - target) < 1e-6), float(action[0, 1])  # trades the spot only
    (True, 0.0)
    """

    def __init__(self, num_instruments: int | None = None, num_layers: int = 2, width: int = 32, anchor: str = "none",
                 **kwargs):
        if anchor not in _ANCHORS:
            raise DeepHedgeError(f"NoTransactionBandPolicy: anchor must be one of {', '.join(_ANCHORS)}; got {anchor!r}")
        super().__init__(num_instruments, num_layers, width, **kwargs)
        self.anchor = anchor

    def band(self, obs):
        out = apply_stack(self.net, obs["features"])
        if self.anchor == "bs_delta":  # Python-level config switch, not a tensor condition
            delta = tf.cast(obs["bs_delta"], out.dtype)
            e1 = delta - _leaky_relu(out[:, 0])
            e2 = delta + _leaky_relu(out[:, 1])
        else:
            e1, e2 = out[:, 0], out[:, 1]
        return tf.minimum(e1, e2), tf.maximum(e1, e2)

    def get_config(self):
        return {**super().get_config(), "anchor": self.anchor}


@keras.saving.register_keras_serializable(package="deephedge_tf")
class DeltaAnchoredBandPolicy(_BandPolicy):
    """Band ``[delta_bs - f, delta_bs + f]``, ``f = softplus(MLP(features)) >= 0`` (DHLNN, eq. 16-17).

    Args:
      num_instruments: ``N`` (column 0 must be the spot; the others are never traded).
      num_layers, width: hidden ReLU layers of the half-width network.

    ``features [B, F] -> MLP -> [B, 1] -> softplus -> f [B]``; trades ``[B, N]``.

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> policy = DeltaAnchoredBandPolicy(num_layers=1, width=8)
    >>> action, _ = policy(obs, no_trades)
    >>> lower, upper = policy.band(obs)
    >>> round(float((lower[0] + upper[0]) / 2), 6), bool(lower[0] <= action[0, 0] <= upper[0])  # centred on delta
    (0.5, True)
    """

    num_outputs = 1

    def band(self, obs):
        half_width = tf.nn.softplus(apply_stack(self.net, obs["features"])[:, 0])
        delta = tf.cast(obs["bs_delta"], half_width.dtype)
        return delta - half_width, delta + half_width
