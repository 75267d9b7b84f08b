"""Hedging instruments as ``[T, B, N]`` tensors.

Every instrument turns :class:`~deephedge_tf.market.paths.MarketPaths` into a :class:`HedgeTensors`:
for each decision time ``t_k`` (``k = 0 .. T-1``), path and instrument,

* ``premiums``: price paid per unit bought at ``t_k`` (the notional on which costs are charged);
* ``returns``: total gain per unit bought at ``t_k`` and held to the instrument's expiry (or to the
  horizon ``t_T``): value received minus premium paid.  Zero where the instrument is unavailable;
* ``mask``: 1 where the instrument can be traded at ``t_k``, else 0 (a policy's action is forced to 0);
* ``cost_rates``: proportional transaction cost rates (broadcast to ``[T, B, N]``).

A strategy of trades ``u_k`` (units bought at ``t_k``) then earns ``sum_k sum_n u_k^n R_k^n`` and pays
costs ``sum_k sum_n c_k^n |u_k^n| P_k^n``.  For the spot, trades held to the horizon are equivalent to
holdings ``delta_k = sum_{j <= k} u_j`` rebalanced each step: ``sum_k u_k (S_T - S_k) =
sum_k delta_k (S_{k+1} - S_k)``.

Instruments:
  * :class:`Spot`: the underlying, ``R_k = S_T - S_k``.
  * :class:`FloatingGrid`: options with fixed moneyness ``m_j`` and time to maturity ``tau_j`` steps at
    every step: the option bought at ``t_k`` has strike ``m_j S_k`` and expiry ``t_{k + tau_j}``, is held
    to expiry, ``R = payoff - premium``; masked when ``k + tau_j > T``.  ``m >= 1`` is a call, ``m < 1``
    a put (only OTM/ATM options are traded; ATM is a call).  Premiums come from a premium model
    ``premium_over_spot(variance) -> [..., J]`` (Heston table or Black-Scholes).
  * :class:`FixedGrid`: the same option contracts (fixed strikes, one expiry) at every step, as in
    Buehler et al.; tradable before expiry; marked to the pricer.
  * :class:`VarianceSwapHedge`: Buehler et al.'s second Heston instrument
    ``S2_k = int_0^{t_k} v ds + L(t_k, v_k)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.errors import DeepHedgeError

from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.pricing.black_scholes import bs_price


@dataclasses.dataclass(frozen=True)
class HedgeTensors:
    """Premiums, returns, availability mask and cost rates, each ``[T, B, N]``; ``names`` has N entries."""

    premiums: tf.Tensor
    returns: tf.Tensor
    mask: tf.Tensor
    cost_rates: tf.Tensor
    names: Tuple[str, ...]

    @property
    def num_instruments(self) -> int:
        return len(self.names)

    @staticmethod
    def concat(parts: Sequence["HedgeTensors"]) -> "HedgeTensors":
        """Stacks instruments along the last axis."""
        cat = lambda xs: tf.concat(xs, axis=-1)  # noqa: E731
        return HedgeTensors(
            premiums=cat([p.premiums for p in parts]),
            returns=cat([p.returns for p in parts]),
            mask=cat([p.mask for p in parts]),
            cost_rates=cat([p.cost_rates for p in parts]),
            names=tuple(n for p in parts for n in p.names),
        )


def _costs_like(x: tf.Tensor, cost: float) -> tf.Tensor:
    return tf.fill(tf.shape(x), to_float(cost, x.dtype))


def _at_expiry(spot: tf.Tensor, lag: int) -> tf.Tensor:
    """``[T, B]`` spot ``lag`` steps after each decision time ``k = 0..T-1`` (0 past the horizon)."""
    steps = int(spot.shape[0]) - 1
    ahead = spot[lag:]  # rows k = 0 .. T - lag
    pad = tf.zeros([steps - int(ahead.shape[0]), tf.shape(spot)[1]], spot.dtype)
    return tf.concat([ahead, pad], axis=0)


def _decision_steps(steps: int, dtype) -> tf.Tensor:
    """``[T, 1]`` step index k of each decision time."""
    return tf.range(steps, dtype=dtype)[:, None]


@dataclasses.dataclass(frozen=True)
class Spot:
    """The underlying: bought at ``S_k``, held to the horizon.

    >>> import tensorflow as tf
    >>> from deephedge_tf.market.paths import MarketPaths
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # [T + 1, B]
    >>> paths = MarketPaths(dt=0.01, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> Spot(cost=1e-4).tensors(paths).returns[..., 0].numpy()  # [T, B]: S_T - S_k
    array([[  5., -10.],
           [ -5.,  -5.]], dtype=float32)"""

    cost: float = 1e-4

    def tensors(self, paths: MarketPaths) -> HedgeTensors:
        s = paths.spot
        premiums = s[:-1, :, None]
        returns = (s[-1] - s[:-1])[:, :, None]
        return HedgeTensors(premiums, returns, tf.ones_like(premiums), _costs_like(premiums, self.cost),
                            ("spot",))


def option_is_call(moneyness) -> np.ndarray:
    """The floating-grid convention: moneyness >= 1 is a call, < 1 a put."""
    return np.asarray(moneyness, dtype=np.float64) >= 1.0


class BlackScholesPremiums:
    """Premium / spot of floating-grid options under Black-Scholes at volatility ``sqrt(variance)``.

    Used for GBM markets (variance = sigma^2) and historical data (realised variance).
    """

    def __init__(self, moneyness: Sequence[float], maturities: Sequence[float]):
        self.moneyness = np.asarray(moneyness, np.float64)
        self.maturities = np.asarray(maturities, np.float64)  # years
        self.is_call = option_is_call(self.moneyness)

    def __call__(self, variance: tf.Tensor) -> tf.Tensor:
        v = tf.convert_to_tensor(variance)
        vol = tf.sqrt(tf.maximum(v, 0.0))[..., None]
        dt = v.dtype
        return bs_price(tf.ones([], dt), tf.constant(self.moneyness, dt), tf.constant(self.maturities, dt),
                        vol, is_call=tf.constant(self.is_call), dtype=dt)


@dataclasses.dataclass(frozen=True)
class FloatingGrid:
    """Options of fixed moneyness and time to maturity (in steps), one contract per decision time.

    Args:
      moneyness: strike / spot at trade time, one per grid option.
      maturities: time to maturity in steps, one per grid option.
      premium_over_spot: ``variance [...] -> [..., J]`` premium divided by spot.
      cost: proportional cost rate on the premium.

    Bound to a market (its premium model), an ATM call and a 95% put, both for two steps, on three-step
    paths: they can be bought at ``t_0`` and ``t_1`` only; the call's premium is the Black-Scholes
    price, about ``0.4 sigma sqrt(tau)`` of spot:

    >>> from deephedge_tf.market.models import GBM
    >>> market = GBM(s0=100.0, sigma=0.2, steps=3, dt=1 / 365)
    >>> grid = FloatingGrid(moneyness=(1.0, 0.95), maturities=(2, 2)).for_market(market)
    >>> hedge = grid.tensors(market.simulate(4))
    >>> grid.names, hedge.mask[:, 0, 0].numpy(), round(float(hedge.premiums[0, 0, 0]), 3)
    (('C1x2', 'P0.95x2'), array([1., 1., 0.], dtype=float32), 0.591)
    """

    moneyness: Tuple[float, ...]
    maturities: Tuple[int, ...]
    premium_over_spot: Optional[Callable[[tf.Tensor], tf.Tensor]] = None
    cost: float = 1e-2

    def for_market(self, market) -> "FloatingGrid":
        """This grid with the market's premium model (``market.premium_model``) unless it has one."""
        if self.premium_over_spot is not None:
            return self
        model = _capability(market, "premium_model", "FloatingGrid", "option premiums")
        years = [int(n) * float(market.dt) for n in self.maturities]
        return dataclasses.replace(self, premium_over_spot=model(self.moneyness, years))

    def __post_init__(self):
        if len(self.moneyness) != len(self.maturities) or not self.moneyness:
            raise ValueError("FloatingGrid: moneyness and maturities need the same, non-zero length")
        if any(m <= 0 for m in self.moneyness) or any(int(t) < 1 for t in self.maturities):
            raise ValueError("FloatingGrid: moneyness must be > 0 and maturities >= 1 step")

    @property
    def names(self) -> Tuple[str, ...]:
        kind = ["C" if c else "P" for c in option_is_call(self.moneyness)]
        return tuple(f"{k}{m:g}x{t}" for k, m, t in zip(kind, self.moneyness, self.maturities))

    def tensors(self, paths: MarketPaths) -> HedgeTensors:
        _require_bound(self, "premium_over_spot")
        s = paths.spot
        steps = paths.num_steps
        spot_k = s[:-1]  # [T, B]
        premiums = spot_k[..., None] * tf.cast(self.premium_over_spot(paths.variance[:-1]), s.dtype)
        k = _decision_steps(steps, s.dtype)
        returns, masks = [], []
        for j, (m, tau) in enumerate(zip(self.moneyness, self.maturities)):
            tau = int(tau)
            available = k + tau <= steps  # [T, 1]
            strike = m * spot_k
            s_exp = _at_expiry(s, tau)
            payoff = tf.nn.relu(s_exp - strike) if m >= 1.0 else tf.nn.relu(strike - s_exp)
            mask = tf.broadcast_to(tf.cast(available, s.dtype), tf.shape(spot_k))
            returns.append(mask * (payoff - premiums[..., j]))
            masks.append(mask)
        return HedgeTensors(premiums, tf.stack(returns, -1), tf.stack(masks, -1),
                            _costs_like(premiums, self.cost), self.names)


@dataclasses.dataclass(frozen=True)
class FixedGrid:
    """The same option contracts at every decision time (Buehler et al.'s fixed instruments).

    Options with absolute ``strikes`` (calls at or above ``call_from``, puts below) and a common expiry
    ``expiry_step`` (<= the horizon).  Bought at ``t_k`` (``k < expiry_step``) at the model price and held
    to expiry: ``R_k = payoff - price_k``.

    Args:
      pricer: ``(spot [T, B, 1], strike [J], tau [T, 1, 1] years, variance [T, B, 1], is_call [J])
        -> [T, B, J]`` model prices.

    >>> from deephedge_tf.market.models import GBM
    >>> grid = FixedGrid(strikes=(95.0, 105.0), expiry_step=3).for_market(GBM(s0=100.0, steps=3))
    >>> grid.names  # a put below s0, a call above
    ('P95@3', 'C105@3')
    """

    strikes: Tuple[float, ...]
    expiry_step: int
    pricer: Optional[Callable] = None
    call_from: Optional[float] = None
    cost: float = 1e-2

    def for_market(self, market) -> "FixedGrid":
        """This grid with the market's option pricer and calls from its ``s0`` up, where not given.  The
        pricer is the market's table for this grid's times to expiry where it has one
        (``market.option_price_table(maturities, horizon)``: Heston's
        :class:`~deephedge_tf.pricing.tables.HestonStrikeTable`, built here once instead of a Fourier
        inversion per path and step), else ``market.option_pricer()``; pass ``pricer`` for another (e.g.
        ``Heston.option_pricer()``, exact and slow)."""
        pricer = self.pricer
        if pricer is None and hasattr(market, "option_price_table"):
            self._check_expiry(market.steps)
            maturities = (self.expiry_step - np.arange(self.expiry_step)) * float(market.dt)
            pricer = market.option_price_table(maturities, horizon=market.steps * float(market.dt))
        pricer = pricer or _capability(market, "option_pricer", "FixedGrid", "an option pricer")()
        call_from = float(market.s0) if self.call_from is None else self.call_from
        return dataclasses.replace(self, pricer=pricer, call_from=call_from)

    def _check_expiry(self, steps: int) -> None:
        if not 1 <= self.expiry_step <= steps:
            raise ValueError(f"FixedGrid: expiry_step {self.expiry_step} outside 1..{steps}")

    @property
    def is_call(self) -> np.ndarray:
        _require_bound(self, "call_from")
        return np.asarray(self.strikes) >= self.call_from

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(f"{'C' if c else 'P'}{k:g}@{self.expiry_step}" for k, c in zip(self.strikes, self.is_call))

    def tensors(self, paths: MarketPaths) -> HedgeTensors:
        _require_bound(self, "pricer")
        s = paths.spot
        steps, dt = paths.num_steps, s.dtype
        self._check_expiry(steps)
        k = _decision_steps(steps, dt)[..., None]  # [T, 1, 1]
        tau = tf.maximum(self.expiry_step - k, 0.0) * to_float(paths.dt, dt)
        strikes = tf.constant(self.strikes, dt)
        is_call = tf.constant(self.is_call)
        prices = tf.cast(self.pricer(s[:-1, :, None], strikes, tau, paths.variance[:-1, :, None], is_call), dt)
        s_exp = s[self.expiry_step][None, :, None]
        payoff = tf.where(is_call, tf.nn.relu(s_exp - strikes), tf.nn.relu(strikes - s_exp))
        mask = tf.broadcast_to(tf.cast(k < self.expiry_step, dt), tf.shape(prices))
        return HedgeTensors(prices, mask * (payoff - prices), mask, _costs_like(prices, self.cost), self.names)


def black_scholes_pricer(spot, strike, tau, variance, is_call):
    """FixedGrid pricer: Black-Scholes at volatility ``sqrt(variance)``."""
    return bs_price(spot, strike, tau, tf.sqrt(tf.maximum(variance, 0.0)), is_call=is_call, dtype=spot.dtype)


def variance_swap_weights(steps: int, dt: float, kappa: float) -> np.ndarray:
    """``w_n = sum_{i<n} (q^i + q^{i+1}) / 2``, ``q = exp(-kappa dt)``, for ``n = 0..steps``.

    With the trapezoid rule for integrated variance and ``E[v_{k+i} | v_k] = theta + (v_k - theta) q^i``
    (exact in the QE and exact schemes), ``E[int_{t_k}^{t_T} v | v_k] = n dt theta + (v_k - theta) dt w_n``
    with ``n = T - k``: the discrete counterpart of ``L(t, v)``, which makes ``S2`` an exact martingale
    of the simulated scheme.
    """
    q = np.exp(-kappa * dt) ** np.arange(steps + 1)
    terms = 0.5 * (q[:-1] + q[1:])
    return np.concatenate([[0.0], np.cumsum(terms)])


def variance_swap_value(integrated_variance, variance, steps_left, dt, kappa, theta, weights):
    """``S2 = int_0^t v ds + L(t, v)`` with the discrete ``L`` of :func:`variance_swap_weights`."""
    w = tf.gather(tf.constant(weights, integrated_variance.dtype), steps_left)
    n = tf.cast(steps_left, integrated_variance.dtype)
    return integrated_variance + dt * (n * theta + (variance - theta) * w)


@dataclasses.dataclass(frozen=True)
class VarianceSwapHedge:
    """Buehler et al.'s variance-swap instrument under Heston: ``S2_k = I_k + L(t_k, v_k)``.

    ``I_k`` is the path's integrated variance and ``L`` the (discrete-scheme) expected remaining
    integrated variance, so ``S2_T = I_T`` and ``R_k = S2_T - S2_k`` has zero conditional mean.

    A Monte Carlo check of that mean, within three standard errors:

    >>> from deephedge_tf.market.models import Heston
    >>> market = Heston(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7, steps=30, dt=1 / 365)
    >>> swap = VarianceSwapHedge().for_market(market)
    >>> gain = swap.tensors(market.simulate(100_000)).returns[0, :, 0].numpy()
    >>> swap, bool(abs(gain.mean()) < 3 * gain.std() / len(gain) ** 0.5)
    (VarianceSwapHedge(kappa=1.0, theta=0.04, cost=0.0), True)
    """

    kappa: Optional[float] = None
    theta: Optional[float] = None
    cost: float = 0.0

    def for_market(self, market) -> "VarianceSwapHedge":
        """This instrument with the market's variance mean reversion (``market.variance_reversion()``)."""
        if self.kappa is not None and self.theta is not None:
            return self
        kappa, theta = _capability(market, "variance_reversion", "VarianceSwapHedge",
                                   "a mean-reverting variance (kappa, theta), e.g. Heston")()
        return dataclasses.replace(self, kappa=kappa if self.kappa is None else self.kappa,
                                   theta=theta if self.theta is None else self.theta)

    def tensors(self, paths: MarketPaths) -> HedgeTensors:
        _require_bound(self, "kappa", "theta")
        steps, dt = paths.num_steps, paths.dt
        weights = variance_swap_weights(steps, dt, self.kappa)
        steps_left = tf.range(steps, -1, -1)[:, None]  # [T + 1, 1]: T - k
        s2 = variance_swap_value(paths.integrated_variance, paths.variance, steps_left, dt, self.kappa,
                                 self.theta, weights)
        premiums = s2[:-1, :, None]
        returns = (s2[-1] - s2[:-1])[:, :, None]
        return HedgeTensors(premiums, returns, tf.ones_like(premiums), _costs_like(premiums, self.cost),
                            ("varswap",))


def _capability(market, name: str, instrument: str, what: str):
    fn = getattr(market, name, None)
    if fn is None:
        raise DeepHedgeError(f"{instrument}: the market {type(market).__name__} has no {name} ({what}); pass "
                             "the missing argument to the instrument, or use a market that has it")
    return fn


def _require_bound(instrument, *fields: str) -> None:
    missing = [f for f in fields if getattr(instrument, f) is None]
    if missing:
        raise DeepHedgeError(f"{type(instrument).__name__}: {', '.join(missing)} not set; pass it, or bind the "
                             "instrument to its market first (bind_instruments; PathBatches and evaluate do)")


def bind_instruments(instruments, market) -> list:
    """Each instrument completed from the market where it needs it (``for_market``; an instrument
    without that method is used as it is): premium models, pricers, variance reversion.

        >>> from deephedge_tf.market.models import Heston
        >>> market = Heston(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7)
        >>> bind_instruments([Spot(cost=1e-4), VarianceSwapHedge()], market)[1]
        VarianceSwapHedge(kappa=1.0, theta=0.04, cost=0.0)
    """
    return [i.for_market(market) if hasattr(i, "for_market") else i for i in instruments]


def hedge_tensors(instruments, paths: MarketPaths) -> HedgeTensors:
    """All instruments' tensors for ``paths``, stacked in order along the last axis."""
    return HedgeTensors.concat([i.tensors(paths) for i in instruments])
