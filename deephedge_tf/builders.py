"""From a validated :class:`~deephedge_tf.config.Config` to the objects of a run.

The only place that knows how config sections map onto markets, derivatives and instruments, so the
CLI, notebooks and tests build runs the same way::

    cfg = load_config("configs/quickstart.yaml")
    market = build_market(cfg)                    # GBM / Heston / HistoricalPaths: .simulate(num_paths, start, seed)
    paths = market.simulate(4096)
    liability = derivative_from_config(cfg)       # .payoff(paths) -> [B]
    hedges = hedge_tensors(build_hedges(cfg, market), paths)
"""

from __future__ import annotations

from pathlib import Path

from deephedge_tf.config import Config, steps_of
from deephedge_tf.errors import ConfigError
from deephedge_tf.instruments.hedges import FixedGrid, FloatingGrid, Spot, VarianceSwapHedge, bind_instruments
from deephedge_tf.market.models import GBM, Heston

_REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_data_file(name: str, key: str) -> Path:
    """A data file named in a config: absolute, relative to the working directory, or to the repo."""
    p = Path(name)
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, _REPO_ROOT / p]):
        if candidate.is_file():
            return candidate
    raise ConfigError(key, name, "an existing file (absolute, or relative to the working directory "
                      f"or to {_REPO_ROOT})")


def build_market(cfg: Config):
    """The configured market (:mod:`deephedge_tf.market.models`): :class:`GBM`, :class:`Heston` or
    :class:`~deephedge_tf.market.historical.HistoricalPaths`."""
    m, t = cfg.market, cfg.time
    common = dict(steps=t.steps, dt=t.dt, s0=m.s0, seed=cfg.seed, dtype=cfg.dtype)
    if m.model == "historical":
        from deephedge_tf.market.historical import HistoricalMarket, HistoricalPaths, load_price_series

        h = m.historical
        prices = load_price_series(resolve_data_file(h.file, "market.historical.file"))
        series = HistoricalMarket(prices, dt=t.dt, vol_window=h.vol_window)
        return HistoricalPaths(series, method=h.method, block_length=h.block_length, stride=h.stride, **common)
    sampling = dict(antithetic=m.sampling.antithetic, sobol=m.sampling.sobol)
    if m.model == "heston":
        h = m.heston
        return Heston(v0=h.v0, kappa=h.kappa, theta=h.theta, xi=h.xi, rho=h.rho, mu=h.mu, scheme=h.scheme,
                      premium_table_nodes=cfg.simulation.premium_table_nodes, **sampling, **common)
    return GBM(mu=m.gbm.mu, sigma=m.gbm.sigma, **sampling, **common)


def build_hedges(cfg: Config, market=None) -> list:
    """Hedging instruments in the order spot, floating grid, fixed grid, variance swap, bound to the
    market (``market``, or the configured one): premiums, pricers and variance reversion come from it."""
    hc, s0 = cfg.hedges, cfg.market.s0
    out = []
    if hc.spot.enabled:
        out.append(Spot(cost=hc.spot.cost))
    fg = hc.floating_grid
    if fg.moneyness:
        out.append(FloatingGrid(tuple(fg.moneyness), tuple(fg.maturities), cost=fg.cost))
    fx = hc.fixed_grid
    if fx.strikes:
        out.append(FixedGrid(tuple(k * s0 for k in fx.strikes), steps_of(fx.maturity, cfg.time), cost=fx.cost))
    if hc.variance_swap.enabled:
        out.append(VarianceSwapHedge(cost=hc.variance_swap.cost))
    return bind_instruments(out, build_market(cfg) if market is None else market)
