"""From a validated :class:`~deephedge_tf.config.Config` to the objects of a run.

The only place that knows how config sections map onto markets, derivatives and instruments, so the
CLI, notebooks and tests build runs the same way::

    cfg = load_config("configs/quickstart.yaml")
    market = build_market(cfg)                    # simulate(num_paths, start, seed) -> MarketPaths
    paths = market.simulate(4096)
    liability = derivative_from_config(cfg)       # .payoff(paths) -> [B]
    hedges = hedge_tensors(build_hedges(cfg), paths)
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Optional

from deephedge_tf.config import Config, steps_of
from deephedge_tf.errors import ConfigError
from deephedge_tf.instruments.hedges import (
    BlackScholesPremiums, FixedGrid, FloatingGrid, Spot, VarianceSwapHedge, black_scholes_pricer)
from deephedge_tf.market.paths import MarketPaths

_REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_data_file(name: str, key: str) -> Path:
    """A data file named in a config: absolute, relative to the working directory, or to the repo."""
    p = Path(name)
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, _REPO_ROOT / p]):
        if candidate.is_file():
            return candidate
    raise ConfigError(key, name, "an existing file (absolute, or relative to the working directory "
                      f"or to {_REPO_ROOT})")


@dataclasses.dataclass
class Market:
    """A configured market: ``simulate(num_paths, start=0, seed=None) -> MarketPaths``.

    ``start`` indexes the global path stream (same seed, same path ``i`` whatever the split);
    ``seed=None`` uses the config's seed.
    """

    cfg: Config

    @cached_property
    def _historical(self):
        from deephedge_tf.market.historical import HistoricalMarket, load_price_series

        h = self.cfg.market.historical
        prices = load_price_series(resolve_data_file(h.file, "market.historical.file"))
        return HistoricalMarket(prices, dt=self.cfg.time.dt, vol_window=h.vol_window)

    def simulate(self, num_paths: int, start: int = 0, seed: Optional[int] = None) -> MarketPaths:
        cfg = self.cfg
        m, t = cfg.market, cfg.time
        seed = cfg.seed if seed is None else seed
        common = dict(num_paths=num_paths, steps=t.steps, dt=t.dt, s0=m.s0, seed=seed, start=start,
                      dtype=cfg.dtype)
        if m.model == "heston":
            from deephedge_tf.market.heston import simulate_heston

            h = m.heston
            return simulate_heston(v0=h.v0, kappa=h.kappa, theta=h.theta, xi=h.xi, rho=h.rho, mu=h.mu,
                                   scheme=h.scheme, antithetic=m.sampling.antithetic, sobol=m.sampling.sobol,
                                   **common)
        if m.model == "gbm":
            from deephedge_tf.market.gbm import simulate_gbm

            return simulate_gbm(mu=m.gbm.mu, sigma=m.gbm.sigma, antithetic=m.sampling.antithetic,
                                sobol=m.sampling.sobol, **common)
        hist = self._historical
        h = m.historical
        if h.method == "rolling":
            # Real windows are finite: at most every window of the series, fewer paths than asked
            # for when the series is short.
            paths = hist.rolling_windows(t.steps, stride=h.stride, normalize=True, dtype=cfg.dtype)
            total = int(paths.spot.shape[1])
            if start >= total:
                raise ValueError(f"rolling windows: start {start} >= the {total} windows of the series")
            paths = paths.slice_paths(start, min(start + num_paths, total))
            return paths if m.s0 == 1.0 else dataclasses.replace(paths, spot=paths.spot * m.s0)
        return hist.block_bootstrap(num_paths, t.steps, block_length=h.block_length, seed=seed, s0=m.s0,
                                    start=start, dtype=cfg.dtype)


def build_market(cfg: Config) -> Market:
    return Market(cfg)


def floating_grid_premiums(cfg: Config):
    """The premium model of the floating grid: a Heston table, or Black-Scholes at sqrt(variance)."""
    fg = cfg.hedges.floating_grid
    years = [n * cfg.time.dt for n in fg.maturities]
    if cfg.market.model == "heston":
        from deephedge_tf.pricing.tables import HestonPremiumTable

        h = cfg.market.heston
        return HestonPremiumTable(fg.moneyness, years, kappa=h.kappa, theta=h.theta, xi=h.xi, rho=h.rho,
                                  v0=h.v0, num_nodes=cfg.simulation.premium_table_nodes)
    return BlackScholesPremiums(fg.moneyness, years)


def _heston_pricer(h):
    from deephedge_tf.pricing.heston import heston_price_tf

    def pricer(spot, strike, tau, variance, is_call):
        return heston_price_tf(spot, strike, tau, variance, h.kappa, h.theta, h.xi, h.rho, is_call=is_call)

    return pricer


def build_hedges(cfg: Config) -> list:
    """Hedging instruments in the order spot, floating grid, fixed grid, variance swap."""
    hc, s0 = cfg.hedges, cfg.market.s0
    out = []
    if hc.spot.enabled:
        out.append(Spot(cost=hc.spot.cost))
    fg = hc.floating_grid
    if fg.moneyness:
        out.append(FloatingGrid(fg.moneyness, fg.maturities, floating_grid_premiums(cfg), cost=fg.cost))
    fx = hc.fixed_grid
    if fx.strikes:
        pricer = _heston_pricer(cfg.market.heston) if cfg.market.model == "heston" else black_scholes_pricer
        out.append(FixedGrid(tuple(k * s0 for k in fx.strikes), steps_of(fx.maturity, cfg.time), pricer,
                             call_from=s0, cost=fx.cost))
    if hc.variance_swap.enabled:
        h = cfg.market.heston
        out.append(VarianceSwapHedge(kappa=h.kappa, theta=h.theta, cost=hc.variance_swap.cost))
    return out
