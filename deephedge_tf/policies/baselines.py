"""Baseline policies without trainable weights: no hedge, Black-Scholes delta, Whalley-Wilmott band.

The delta-based ones trade the spot only (column 0).  ``obs["bs_delta"]`` / ``obs["bs_gamma"]`` are
the Greeks of the liability; we are short it, so the delta hedge holds ``+bs_delta`` units of spot.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.validation import check_real
from deephedge_tf.policies.bands import clamp_to_band
from deephedge_tf.policies.base import Policy, spot_only_trade


def _spot_obs(obs, dtype):
    """``obs`` with ``holdings`` cast to ``dtype`` (what :func:`spot_only_trade` subtracts from)."""
    return {**obs, "holdings": tf.cast(obs["holdings"], dtype)}


@keras.saving.register_keras_serializable(package="deephedge_tf")
class NoHedgePolicy(Policy):
    """Never trades: ``u = 0`` ``[B, N]``.  The unhedged liability, a floor every hedge should beat.

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> NoHedgePolicy()(obs, no_trades)[0].numpy()[0]
    array([0., 0.], dtype=float32)
"""

    def step(self, obs, prev_action, state, training=None):
        return tf.zeros_like(tf.cast(obs["holdings"], self.compute_dtype)), state


@keras.saving.register_keras_serializable(package="deephedge_tf")
class BlackScholesDeltaPolicy(Policy):
    """Trades the spot to ``obs["bs_delta"]`` at every step (complete delta hedge, costs ignored).

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> BlackScholesDeltaPolicy()(obs, no_trades)[0].numpy()[0]
    array([0.5, 0. ], dtype=float32)
"""

    needs_spot = True
    outputs_positions = True

    def step(self, obs, prev_action, state, training=None):
        target = tf.cast(obs["bs_delta"], self.compute_dtype)
        return spot_only_trade(target, _spot_obs(obs, target.dtype), self.num_instruments), state


@keras.saving.register_keras_serializable(package="deephedge_tf")
class WhalleyWilmottPolicy(Policy):
    """Asymptotically optimal no-transaction band for small proportional costs.

    Whalley & Wilmott (1997), "An asymptotic analysis of an optimal hedging model for option pricing
    with transaction costs", Mathematical Finance 7(3), 307-324: with exponential utility of risk
    aversion ``lambda`` and proportional cost rate ``c`` (cost ``c * S * |trade|``), the optimal spot
    position stays in

        [delta - h, delta + h],   h = (3 c S Gamma^2 / (2 lambda))^(1/3)

    (zero interest rate, so the paper's discount factor is 1), trading to the nearest edge when it
    leaves it.  ``delta``, ``Gamma`` are the liability's Black-Scholes delta and gamma, ``S`` the spot.

    Args:
      num_instruments: ``N`` (column 0 must be the spot).
      risk_aversion: ``lambda`` > 0, in 1 / currency units of the PnL.
      cost: ``c`` >= 0, proportional cost rate of the spot (e.g. 1e-3 for 10 bp).

    From no holdings it buys up to the band's lower edge, ``delta - h``:

    >>> import tensorflow as tf
    >>> from deephedge_tf.policies.base import example_observations
    >>> obs, no_trades = example_observations(), tf.zeros([3, 2])  # delta 0.5, no holdings, N = 2
    >>> h = (3 * 1e-3 * 100.0 * 0.05 ** 2 / (2 * 1.0)) ** (1 / 3)
    >>> trade = WhalleyWilmottPolicy(risk_aversion=1.0, cost=1e-3)(obs, no_trades)[0].numpy()[0, 0]
    >>> round(float(trade), 5), round(0.5 - h, 5)
    (0.42789, 0.42789)
    """

    needs_spot = True
    outputs_positions = True

    def __init__(self, num_instruments: int | None = None, risk_aversion: float = 1.0, cost: float = 1e-3, **kwargs):
        super().__init__(num_instruments, **kwargs)
        risk_aversion = check_real("WhalleyWilmottPolicy", "risk_aversion", risk_aversion, low=0.0, low_open=True)
        cost = check_real("WhalleyWilmottPolicy", "cost", cost, low=0.0)
        self.risk_aversion = float(risk_aversion)
        self.cost = float(cost)

    def half_width(self, obs):
        """``h = (3 c S Gamma^2 / (2 lambda))^(1/3)`` ``[B]`` (0 where Gamma is 0, e.g. at maturity)."""
        dt = self.compute_dtype
        spot = tf.cast(obs["spot"], dt)
        gamma = tf.cast(obs["bs_gamma"], dt)
        # |S| keeps the cube root real even on a (meaningless) negative spot.
        x = 3.0 * self.cost * tf.abs(spot) * tf.square(gamma) / (2.0 * self.risk_aversion)
        return tf.pow(x, tf.constant(1.0 / 3.0, dt))

    def step(self, obs, prev_action, state, training=None):
        dt = self.compute_dtype
        delta = tf.cast(obs["bs_delta"], dt)
        h = self.half_width(obs)
        target = clamp_to_band(tf.cast(obs["holdings"][:, 0], dt), delta - h, delta + h)
        return spot_only_trade(target, _spot_obs(obs, dt), self.num_instruments), state

    def get_config(self):
        return {**super().get_config(), "risk_aversion": self.risk_aversion, "cost": self.cost}
