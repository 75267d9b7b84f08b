"""Derivatives: payoffs on a path.

Each derivative maps :class:`~deephedge_tf.market.paths.MarketPaths` (``[T + 1, B]`` tensors) to its
payoff ``[B]`` paid at its maturity step (interest rates are zero, so paying at maturity or at the
horizon is the same).  Strikes are absolute prices; :func:`derivative_from_config` converts the
config's strikes, which are relative to ``market.s0``.

Maturities are in steps; ``None`` means the last step of the paths (the hedging horizon).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from deephedge_tf.dtypes import to_float

from deephedge_tf.market.paths import MarketPaths


def _maturity(steps: Optional[int], paths: MarketPaths) -> int:
    n = paths.num_steps if steps is None else steps
    if not 1 <= n <= paths.num_steps:
        raise ValueError(f"maturity of {n} steps is outside the paths' 1..{paths.num_steps} steps")
    return n


@dataclasses.dataclass(frozen=True)
class EuropeanOption:
    """European call or put: ``max(S_n - K, 0)`` or ``max(K - S_n, 0)``."""

    strike: float
    is_call: bool = True
    maturity_steps: Optional[int] = None

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        s = paths.spot[_maturity(self.maturity_steps, paths)]
        k = to_float(self.strike, s.dtype)
        return tf.nn.relu(s - k) if self.is_call else tf.nn.relu(k - s)


@dataclasses.dataclass(frozen=True)
class CallSpread:
    """Long a call at ``strike_low``, short a call at ``strike_high``: payoff in [0, K_high - K_low]."""

    strike_low: float
    strike_high: float
    maturity_steps: Optional[int] = None

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        s = paths.spot[_maturity(self.maturity_steps, paths)]
        lo, hi = to_float(self.strike_low, s.dtype), to_float(self.strike_high, s.dtype)
        return tf.nn.relu(s - lo) - tf.nn.relu(s - hi)


@dataclasses.dataclass(frozen=True)
class LookbackCall:
    """Lookback call on the running maximum: ``max(max_{k <= n} S_k - K, 0)``."""

    strike: float
    maturity_steps: Optional[int] = None

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        n = _maturity(self.maturity_steps, paths)
        running_max = tf.reduce_max(paths.spot[: n + 1], axis=0)
        return tf.nn.relu(running_max - to_float(self.strike, running_max.dtype))


@dataclasses.dataclass(frozen=True)
class Cliquet:
    """Locally capped, globally floored cliquet (the DH-KFAC paper's liability).

    With reset dates every ``reset_every`` steps up to the maturity, period returns
    ``r_i = S_{tau_i} / S_{tau_{i-1}} - 1`` are capped (and optionally floored) locally and summed:
    ``payoff = max(sum_i clip(r_i, local_floor, local_cap), global_floor)``.  Notional 1.
    """

    reset_every: int
    local_cap: float
    local_floor: Optional[float] = None
    global_floor: float = 0.0
    maturity_steps: Optional[int] = None

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        n = _maturity(self.maturity_steps, paths)
        if n % self.reset_every:
            raise ValueError(f"cliquet: reset_every = {self.reset_every} does not divide {n} steps")
        resets = paths.spot[0: n + 1: self.reset_every]  # [m + 1, B]
        r = resets[1:] / resets[:-1] - 1.0
        r = tf.minimum(r, to_float(self.local_cap, r.dtype))
        if self.local_floor is not None:
            r = tf.maximum(r, to_float(self.local_floor, r.dtype))
        return tf.maximum(tf.reduce_sum(r, axis=0), to_float(self.global_floor, r.dtype))


@dataclasses.dataclass(frozen=True)
class VarianceSwap:
    """Variance swap (notional 1 in variance units): realised annualised variance minus strike.

    Realised variance = ``sum_k log(S_{k+1}/S_k)**2 / (n * dt)`` over the ``n`` steps to maturity,
    with zero-mean convention (no mean subtracted), as in most term sheets.
    """

    variance_strike: float
    maturity_steps: Optional[int] = None

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        n = _maturity(self.maturity_steps, paths)
        lr = paths.log_returns[:n]
        realised = tf.reduce_sum(lr * lr, axis=0) / (n * paths.dt)
        return realised - to_float(self.variance_strike, realised.dtype)


def derivative_from_config(cfg):
    """The derivative described by a :class:`~deephedge_tf.config.Config`."""
    d, s0 = cfg.derivative, cfg.market.s0
    n = cfg.derivative_steps
    if d.kind == "european":
        return EuropeanOption(d.strike * s0, d.is_call, n)
    if d.kind == "call_spread":
        return CallSpread(d.strike * s0, d.strike_high * s0, n)
    if d.kind == "lookback":
        return LookbackCall(d.strike * s0, n)
    if d.kind == "cliquet":
        c = d.cliquet
        return Cliquet(c.reset_every, c.local_cap, c.local_floor, c.global_floor, n)
    if d.kind == "variance_swap":
        return VarianceSwap(d.variance_strike, n)
    raise AssertionError(f"unhandled derivative kind {d.kind!r}")  # config validation forbids it
