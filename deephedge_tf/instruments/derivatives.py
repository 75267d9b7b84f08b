"""Derivatives: payoffs on a path, and what a hedger of them may observe.

A *derivative* is any object with ``payoff(paths) -> [B]``: it maps
:class:`~deephedge_tf.market.paths.MarketPaths` (``[T + 1, B]`` tensors) to its payoff paid at its
maturity step (interest rates are zero, so paying at maturity or at the horizon is the same).  What it
may add, each optional (absent: the default in brackets):

* ``maturity_steps``: its maturity in steps [None: the last step of the paths];
* ``moneyness_strike``: the strike the policy's spot feature is measured against, ``log(S_k / K)``
  [None: ``log(S_k / S_0)``];
* ``feature_names`` and ``features(paths)``: path state the policy observes, a mapping of those names
  to ``[T, B]`` tensors, one value per decision time ``t_0 .. t_{T-1}`` (a lookback's running
  maximum, a cliquet's period return) [none];
* ``greeks(spot, tau, vol) -> (delta, gamma)``: Black-Scholes Greeks, for the delta baselines and
  band anchors [zeros: no delta baseline]; Greeks that depend on the path so far (a lookback's
  running maximum) come from ``path_greeks(paths, spot, tau, vol)`` instead, with ``paths`` the
  :class:`~deephedge_tf.market.paths.MarketPaths` and ``[T, B]`` tensors at the decision times;
* ``reference_price(market) -> float``: a price from the market's option pricer
  (``market.vanilla_price``) [none: the report says so].

:class:`Derivative` holds these defaults; subclassing it is optional.  :class:`PathDerivative` makes
one from a function of the paths.  Strikes are absolute prices; :func:`derivative_from_config` converts
the config's strikes, which are relative to ``market.s0``.

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.models import GBM
    >>> paths = GBM(s0=100.0, steps=5).simulate(3)
    >>> asian = PathDerivative(lambda p: tf.nn.relu(tf.reduce_mean(p.spot[1:], axis=0) - 100.0), name="asian",
    ...                        features={"average": lambda p: tf.cumsum(p.spot[:-1], axis=0)
    ...                                  / tf.range(1.0, 6.0)[:, None] / 100.0})
    >>> tuple(asian.payoff(paths).shape), asian.feature_names, tuple(asian.features(paths)["average"].shape)
    ((3,), ('average',), (5, 3))
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.market.paths import MarketPaths


def _maturity(steps: Optional[int], paths: MarketPaths) -> int:
    n = paths.num_steps if steps is None else steps
    if not 1 <= n <= paths.num_steps:
        raise ValueError(f"maturity of {n} steps is outside the paths' 1..{paths.num_steps} steps")
    return n


class Derivative:
    """The optional parts of the derivative protocol (module doc), as defaults.

    Subclass it and write ``payoff`` (the rest is optional):

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> class Digital(Derivative):
    ...     def payoff(self, paths):
    ...         return tf.cast(paths.spot[-1] > 100.0, paths.dtype)
    >>> Digital().payoff(paths).numpy(), Digital().feature_names
    (array([1., 0.], dtype=float32), ())"""

    maturity_steps: Optional[int] = None
    moneyness_strike: Optional[float] = None
    feature_names: tuple = ()

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        raise NotImplementedError

    def features(self, paths: MarketPaths) -> dict:
        return {}

    def maturity_years(self, market) -> float:
        """The maturity in years on ``market``'s grid (the horizon when ``maturity_steps`` is None)."""
        return (self.maturity_steps or market.steps) * market.dt


class PathDerivative(Derivative):
    """A derivative from a payoff function of the paths.

    Args:
      payoff: ``MarketPaths -> [B]`` payoff (``paths.spot`` etc. are ``[T + 1, B]``).
      name: a label for reports.
      features: optional mapping of names to functions ``MarketPaths -> [T, B]`` (one value per decision
        time), observed by the policy after the standard features; keep them O(1) in size.
      maturity_steps: the maturity in steps (None: the horizon); used for the time-to-maturity input.
      moneyness_strike: a strike for the ``log(S / K)`` feature (None: ``log(S / S_0)``).

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> best_of = PathDerivative(lambda p: tf.reduce_max(p.spot, axis=0) - p.spot[0], name="best_of")
    >>> best_of.payoff(paths).numpy()
    array([10.,  0.], dtype=float32)
    """

    def __init__(self, payoff: Callable, name: str = "path_derivative", features: Mapping | None = None,
                 maturity_steps: int | None = None, moneyness_strike: float | None = None):
        if not callable(payoff):
            raise DeepHedgeError(f"PathDerivative: payoff must be a function of the paths; got {payoff!r}")
        features = dict(features or {})
        for key, fn in features.items():
            if not isinstance(key, str) or not callable(fn):
                raise DeepHedgeError(f"PathDerivative: features must map names to functions of the paths; got "
                                     f"{key!r}: {fn!r}")
        self._payoff, self.name, self._features = payoff, str(name), features
        self.feature_names = tuple(features)
        self.maturity_steps, self.moneyness_strike = maturity_steps, moneyness_strike

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        return self._payoff(paths)

    def features(self, paths: MarketPaths) -> dict:
        return {key: fn(paths) for key, fn in self._features.items()}

    def __repr__(self):
        return f"PathDerivative(name={self.name!r}, features={list(self.feature_names)})"


def _running_max(x):
    """``max_{j <= k} x_j`` along axis 0 (``[T, B]``): a scan, T is small and static."""
    return tf.scan(tf.maximum, x)


def _black_scholes_greeks(spot, strike, tau, vol, is_call=True):
    from deephedge_tf.pricing.black_scholes import bs_delta, bs_gamma

    return (bs_delta(spot, strike, tau, vol, is_call=is_call, dtype=spot.dtype),
            bs_gamma(spot, strike, tau, vol, dtype=spot.dtype))


@dataclasses.dataclass(frozen=True)
class EuropeanOption(Derivative):
    """European call or put: ``max(S_n - K, 0)`` or ``max(K - S_n, 0)``.

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> EuropeanOption(strike=100.0).payoff(paths).numpy(), EuropeanOption(100.0, is_call=False).payoff(paths).numpy()
    (array([5., 0.], dtype=float32), array([ 0., 10.], dtype=float32))

    Its reference price asks the market's pricer (Black-Scholes on GBM; 30 days at 20% vol):

    >>> from deephedge_tf.market.models import GBM
    >>> round(EuropeanOption(strike=100.0).reference_price(GBM(s0=100.0, sigma=0.2, steps=30, dt=1 / 365)), 4)
    2.2872"""

    strike: float
    is_call: bool = True
    maturity_steps: Optional[int] = None

    @property
    def moneyness_strike(self):
        return self.strike

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        s = paths.spot[_maturity(self.maturity_steps, paths)]
        k = to_float(self.strike, s.dtype)
        return tf.nn.relu(s - k) if self.is_call else tf.nn.relu(k - s)

    def greeks(self, spot, tau, vol):
        return _black_scholes_greeks(spot, self.strike, tau, vol, self.is_call)

    def reference_price(self, market) -> float:
        return market.vanilla_price(self.strike, self.maturity_years(market), self.is_call)


@dataclasses.dataclass(frozen=True)
class CallSpread(Derivative):
    """Long a call at ``strike_low``, short a call at ``strike_high``: payoff in [0, K_high - K_low].

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> CallSpread(strike_low=100.0, strike_high=103.0).payoff(paths).numpy()
    array([3., 0.], dtype=float32)"""

    strike_low: float
    strike_high: float
    maturity_steps: Optional[int] = None

    @property
    def moneyness_strike(self):
        return self.strike_low

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        s = paths.spot[_maturity(self.maturity_steps, paths)]
        lo, hi = to_float(self.strike_low, s.dtype), to_float(self.strike_high, s.dtype)
        return tf.nn.relu(s - lo) - tf.nn.relu(s - hi)

    def greeks(self, spot, tau, vol):
        low, high = (_black_scholes_greeks(spot, k, tau, vol) for k in (self.strike_low, self.strike_high))
        return low[0] - high[0], low[1] - high[1]

    def reference_price(self, market) -> float:
        years = self.maturity_years(market)
        return market.vanilla_price(self.strike_low, years, True) - market.vanilla_price(self.strike_high, years, True)


@dataclasses.dataclass(frozen=True)
class LookbackCall(Derivative):
    """Lookback call on the running maximum: ``max(max_{k <= n} S_k - K, 0)``.

    The policy observes ``log_running_max``, ``log(M_k / K)`` with ``M_k = max_{j <= k} S_j`` at each
    decision time (``path_features=False``: not).

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> lookback = LookbackCall(strike=100.0)
    >>> lookback.payoff(paths).numpy()  # the first path peaked at 110
    array([10.,  0.], dtype=float32)
    >>> lookback.features(paths)["log_running_max"].numpy().round(4)  # [T, B], at t_0 and t_1
    array([[0.    , 0.    ],
           [0.0953, 0.    ]], dtype=float32)
    """

    strike: float
    maturity_steps: Optional[int] = None
    path_features: bool = True

    @property
    def moneyness_strike(self):
        return self.strike

    @property
    def feature_names(self):
        return ("log_running_max",) if self.path_features else ()

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        n = _maturity(self.maturity_steps, paths)
        running_max = tf.reduce_max(paths.spot[: n + 1], axis=0)
        return tf.nn.relu(running_max - to_float(self.strike, running_max.dtype))

    def features(self, paths: MarketPaths) -> dict:
        if not self.path_features:
            return {}
        running_max = _running_max(paths.spot[:-1])
        return {"log_running_max": tf.math.log(running_max / to_float(self.strike, running_max.dtype))}

    def path_greeks(self, paths: MarketPaths, spot, tau, vol):
        """Black-Scholes delta and gamma of the lookback at each decision time, from the running maximum
        so far, with the maximum observed at the paths' steps (the Broadie-Glasserman-Kou shift of
        :mod:`deephedge_tf.pricing.lookback`)."""
        from deephedge_tf.pricing.lookback import lookback_call_greeks

        running_max = _running_max(paths.spot[:-1])
        delta, gamma = lookback_call_greeks(tf.cast(spot, tf.float64), tf.cast(running_max, tf.float64), self.strike,
                                            tf.cast(tau, tf.float64), tf.cast(vol, tf.float64),
                                            monitoring_dt=float(paths.dt))
        return tf.cast(delta, spot.dtype), tf.cast(gamma, spot.dtype)


@dataclasses.dataclass(frozen=True)
class Cliquet(Derivative):
    """Locally capped, globally floored cliquet (the DH-KFAC paper's liability).

    With reset dates every ``reset_every`` steps up to the maturity, period returns
    ``r_i = S_{tau_i} / S_{tau_{i-1}} - 1`` are capped (and optionally floored) locally and summed:
    ``payoff = max(sum_i clip(r_i, local_floor, local_cap), global_floor)``.  Notional 1.

    The policy observes ``log_period``, ``log(S_k / S_last_reset)``, and ``payoff_now``, the payoff if
    the cliquet matured at ``t_k`` (capped returns of completed periods plus the current one, floored)
    (``path_features=False``: neither).

    Resets every step, capped at 5%: the first path earns min(10%, 5%) then -4.55%; the second path's
    sum is negative and floored at 0.

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> Cliquet(reset_every=1, local_cap=0.05).payoff(paths).numpy().round(4)
    array([0.0045, 0.    ], dtype=float32)
    """

    reset_every: int
    local_cap: float
    local_floor: Optional[float] = None
    global_floor: float = 0.0
    maturity_steps: Optional[int] = None
    path_features: bool = True

    @property
    def feature_names(self):
        return ("log_period", "payoff_now") if self.path_features else ()

    def _clip(self, r):
        r = tf.minimum(r, to_float(self.local_cap, r.dtype))
        return r if self.local_floor is None else tf.maximum(r, to_float(self.local_floor, r.dtype))

    def features(self, paths: MarketPaths) -> dict:
        if not self.path_features:
            return {}
        spot, steps, period = paths.spot, paths.num_steps, self.reset_every
        k = tf.range(steps)
        s_reset = tf.gather(spot, (k // period) * period)  # [T, B]: spot at the last reset
        s_k = spot[:-1]
        # Completed periods' capped returns, accumulated and then held constant within each period.
        resets = spot[0: steps + 1: period]
        done = tf.concat([tf.zeros_like(resets[:1]), tf.cumsum(self._clip(resets[1:] / resets[:-1] - 1.0), axis=0)],
                         0)
        accumulated = tf.gather(done, k // period)
        payoff_now = tf.maximum(accumulated + self._clip(s_k / s_reset - 1.0),
                                to_float(self.global_floor, spot.dtype))
        return {"log_period": tf.math.log(s_k / s_reset), "payoff_now": payoff_now}

    def payoff(self, paths: MarketPaths) -> tf.Tensor:
        n = _maturity(self.maturity_steps, paths)
        if n % self.reset_every:
            raise ValueError(f"cliquet: reset_every = {self.reset_every} does not divide {n} steps")
        resets = paths.spot[0: n + 1: self.reset_every]  # [m + 1, B]
        r = self._clip(resets[1:] / resets[:-1] - 1.0)
        return tf.maximum(tf.reduce_sum(r, axis=0), to_float(self.global_floor, r.dtype))


@dataclasses.dataclass(frozen=True)
class VarianceSwap(Derivative):
    """Variance swap (notional 1 in variance units): realised annualised variance minus strike.

    Realised variance = ``sum_k log(S_{k+1}/S_k)**2 / (n * dt)`` over the ``n`` steps to maturity,
    with zero-mean convention (no mean subtracted), as in most term sheets.

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]: 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> VarianceSwap(variance_strike=0.04).payoff(paths).numpy().round(3)  # (ln 1.1^2 + ln(105/110)^2) / 0.02 - 0.04
    array([0.522, 0.238], dtype=float32)
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
        return LookbackCall(d.strike * s0, n, path_features=d.path_features)
    if d.kind == "cliquet":
        c = d.cliquet
        return Cliquet(c.reset_every, c.local_cap, c.local_floor, c.global_floor, n, path_features=d.path_features)
    if d.kind == "variance_swap":
        return VarianceSwap(d.variance_strike, n)
    raise AssertionError(f"unhandled derivative kind {d.kind!r}")  # config validation forbids it
