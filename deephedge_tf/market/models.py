"""Market objects: a model's parameters, its time grid and what it can do.

A *market* is any object with

* ``steps`` (``T``), ``dt`` (years per step), ``s0`` and
* ``simulate(num_paths, start=0, seed=None) -> MarketPaths`` (``[T + 1, B]`` tensors; ``start`` indexes
  one split-invariant stream of paths, ``seed=None`` the market's own seed),

and, where the model has them, these capabilities (absent, not faked, where it has not):

* ``vanilla_price(strike, years, is_call) -> float``: today's price of a European option under the
  simulation measure, for reference prices (``pricing_method`` names the method).  Markets with a
  drift are not the pricing measure and have none;
* ``premium_model(moneyness, years) -> callable``: ``variance [...] -> [..., J]`` premium / spot of
  floating-grid options (:class:`deephedge_tf.instruments.FloatingGrid`);
* ``option_pricer() -> callable``: model prices of fixed-strike options on every path and step
  (:class:`deephedge_tf.instruments.FixedGrid`);
* ``variance_reversion() -> (kappa, theta)``: the mean reversion of the variance, which the variance
  swap instrument (:class:`deephedge_tf.instruments.VarianceSwapHedge`) needs.

:class:`GBM` and :class:`Heston` are the simulated markets; :class:`deephedge_tf.market.historical.
HistoricalPaths` serves windows of a price series.  A user's market needs only the first two items.

    >>> market = GBM(s0=100.0, sigma=0.2, steps=30, dt=1 / 365)
    >>> paths = market.simulate(8)
    >>> tuple(paths.spot.shape)
    (31, 8)
    >>> round(market.vanilla_price(100.0, 30 / 365, is_call=True), 4)
    2.2872
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.validation import check_int, check_real
from deephedge_tf.market.paths import MarketPaths

__all__ = ["GBM", "Heston", "check_market"]


def check_market(market, what: str = "market") -> None:
    """A clear error when ``market`` lacks what every market needs (see the module doc)."""
    missing = [name for name in ("simulate", "steps", "dt") if not hasattr(market, name)]
    if missing:
        raise DeepHedgeError(f"{what}: {type(market).__name__} has no {', '.join(missing)}; a market needs "
                             "steps, dt and simulate(num_paths, start=0, seed=None) -> MarketPaths")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Grid:
    steps: int = 30
    dt: float = 1.0 / 365.0
    seed: int = 0
    antithetic: bool = False
    sobol: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        # The simulators check every argument too; checking here makes a bad market fail where it is
        # made, with the same message.
        name = type(self).__name__
        check_int(name, "steps", self.steps, 1)
        check_real(name, "dt", self.dt, low=0.0, low_open=True)
        check_real(name, "s0", self.s0, low=0.0, low_open=True)
        check_real(name, "mu", self.mu)
        if str(self.dtype) not in ("float32", "float64"):
            raise DeepHedgeError(f"{name}: dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        self._check()

    def _common(self, num_paths, start, seed):
        return dict(num_paths=num_paths, steps=self.steps, dt=self.dt, seed=self.seed if seed is None else seed,
                    start=start, antithetic=self.antithetic, sobol=self.sobol, dtype=self.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GBM(_Grid):
    """Black-Scholes market: ``dS = mu S dt + sigma S dW``, exact paths on ``t_k = k dt``.

    Args:
      s0: initial spot (> 0).  sigma: volatility per sqrt(year) (>= 0).  mu: drift per year (0: the
      simulation measure is the pricing measure).  steps, dt: the grid (``T`` steps of ``dt`` years).
      seed: the path stream's seed.  antithetic, sobol: sampling (:func:`deephedge_tf.market.random.
      path_normals`).  dtype: ``"float32"`` or ``"float64"``.

    Without drift the spot is a martingale; a Monte Carlo check within three standard errors:

    >>> market = GBM(s0=100.0, sigma=0.2, steps=30, dt=1 / 365)
    >>> final = market.simulate(100_000).spot[-1].numpy()
    >>> bool(abs(final.mean() - 100.0) < 3 * final.std() / len(final) ** 0.5)
    True
    """

    s0: float = 1.0
    sigma: float = 0.2
    mu: float = 0.0
    pricing_method = "Black-Scholes"

    def _check(self):
        check_real("GBM", "sigma", self.sigma, low=0.0)

    def simulate(self, num_paths: int, start: int = 0, seed: Optional[int] = None) -> MarketPaths:
        from deephedge_tf.market.gbm import simulate_gbm

        return simulate_gbm(s0=self.s0, mu=self.mu, sigma=self.sigma, **self._common(num_paths, start, seed))

    def vanilla_price(self, strike: float, years: float, is_call: bool = True) -> float:
        """Black-Scholes price at ``sigma`` (zero rates)."""
        from deephedge_tf.pricing.black_scholes import bs_price

        _require_martingale(self)
        return float(bs_price(self.s0, strike, years, self.sigma, is_call=is_call))

    def premium_model(self, moneyness: Sequence[float], years: Sequence[float]):
        """Black-Scholes premium / spot at volatility ``sqrt(variance)`` (here ``sigma``)."""
        from deephedge_tf.instruments.hedges import BlackScholesPremiums

        return BlackScholesPremiums(moneyness, years)

    def option_pricer(self):
        from deephedge_tf.instruments.hedges import black_scholes_pricer

        return black_scholes_pricer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heston(_Grid):
    """Heston market: ``dS = mu S dt + sqrt(v) S dW``, ``dv = kappa (theta - v) dt + xi sqrt(v) dZ``,
    ``d<W, Z> = rho dt`` (:func:`deephedge_tf.market.heston.simulate_heston`).

    Args:
      s0, v0, kappa, theta, xi, rho, mu: the model (spot, initial and long-run variance, reversion speed,
      vol of variance, correlation, spot drift).  scheme: ``"qe"`` or ``"exact"``.
      premium_table_nodes: variance nodes of the floating-grid premium table.  steps, dt, seed,
      antithetic, sobol, dtype: as for :class:`GBM`.

        >>> market = Heston(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7, steps=30, dt=1 / 365)
        >>> market.variance_reversion()
        (1.0, 0.04)
    """

    s0: float = 1.0
    v0: float = 0.0625
    kappa: float = 8.0
    theta: float = 0.0625
    xi: float = 1.0
    rho: float = -0.7
    mu: float = 0.0
    scheme: str = "qe"
    premium_table_nodes: int = 64
    pricing_method = "Heston Fourier"

    def _check(self):
        for name, low, low_open in (("v0", 0.0, False), ("kappa", 0.0, False), ("theta", 0.0, False),
                                    ("xi", 0.0, True)):
            check_real("Heston", name, getattr(self, name), low=low, low_open=low_open)
        check_real("Heston", "rho", self.rho, low=-1.0, high=1.0)
        if self.scheme not in ("qe", "exact"):
            raise DeepHedgeError(f"Heston: scheme must be one of ('qe', 'exact'); got {self.scheme!r}")
        check_int("Heston", "premium_table_nodes", self.premium_table_nodes, 4)

    def simulate(self, num_paths: int, start: int = 0, seed: Optional[int] = None) -> MarketPaths:
        from deephedge_tf.market.heston import simulate_heston

        return simulate_heston(s0=self.s0, v0=self.v0, kappa=self.kappa, theta=self.theta, xi=self.xi,
                               rho=self.rho, mu=self.mu, scheme=self.scheme,
                               **self._common(num_paths, start, seed))

    def vanilla_price(self, strike: float, years: float, is_call: bool = True) -> float:
        """Fourier price at ``v0`` (zero rates)."""
        from deephedge_tf.pricing.heston import heston_price

        _require_martingale(self)
        return float(heston_price(self.s0, strike, years, self.v0, self.kappa, self.theta, self.xi, self.rho,
                                  is_call=is_call))

    def premium_model(self, moneyness: Sequence[float], years: Sequence[float]):
        """A premium table in ``sqrt(v)`` (:class:`deephedge_tf.pricing.tables.HestonPremiumTable`)."""
        from deephedge_tf.pricing.tables import HestonPremiumTable

        return HestonPremiumTable(moneyness, years, kappa=self.kappa, theta=self.theta, xi=self.xi, rho=self.rho,
                                  v0=self.v0, num_nodes=self.premium_table_nodes)

    def option_price_table(self, maturities, horizon: Optional[float] = None):
        """Fixed-strike option prices at ``maturities`` (years) from a table of implied volatilities
        (:class:`deephedge_tf.pricing.tables.HestonStrikeTable`; variance grid to the ``horizon``'s quantile)."""
        from deephedge_tf.pricing.tables import HestonStrikeTable

        return HestonStrikeTable(maturities, kappa=self.kappa, theta=self.theta, xi=self.xi, rho=self.rho,
                                 v0=self.v0, horizon=horizon)

    def option_pricer(self):
        """Exact per-path Fourier prices (:func:`deephedge_tf.pricing.heston.heston_price_tf`): slow on
        many paths; fixed-grid options use :meth:`option_price_table`."""
        from deephedge_tf.pricing.heston import heston_price_tf

        kappa, theta, xi, rho = self.kappa, self.theta, self.xi, self.rho

        def pricer(spot, strike, tau, variance, is_call):
            return heston_price_tf(spot, strike, tau, variance, kappa, theta, xi, rho, is_call=is_call)

        return pricer

    def variance_reversion(self) -> tuple[float, float]:
        return float(self.kappa), float(self.theta)


class NoPricingMeasure(DeepHedgeError):
    """The market simulates under a measure with a drift: prices would not be arbitrage-free."""


def _require_martingale(market) -> None:
    if market.mu != 0.0:
        raise NoPricingMeasure(f"{type(market).__name__}: mu = {market.mu} is a drift, not the pricing measure; "
                               "no reference price")
