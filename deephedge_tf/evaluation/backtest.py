"""Backtest: a trained hedger applied to rolling windows of a real daily price series.

Each window of ``T + 1`` consecutive closes is one path (:meth:`HistoricalMarket.rolling_windows`,
normalised to the run's ``s0``); the hedger, and next to it the Black-Scholes delta hedge at the trailing
realised volatility and no hedge, trade on it with the run's instruments, now priced as on historical
data (options at Black-Scholes with the trailing realised volatility).  Each trading day is one step of
the run's ``dt``: the policy keeps its own clock, so a run trained at ``dt = 1/365`` sees ``T`` trading
days as ``T`` calendar days.

This is an **out-of-model** test (:data:`OUT_OF_MODEL_NOTE`): the policy was trained on its configured
market, and the real paths follow no model it knows.  By default windows do not overlap
(``stride = T``), so the windows' PnLs are close to independent and the standard errors of the metrics
mean what they say; with overlapping windows they are too small.

    >>> import numpy as np, pandas as pd
    >>> import deephedge_tf as dh
    >>> from deephedge_tf.instruments.hedges import bind_instruments
    >>> prices = pd.Series(100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 300))),
    ...                    index=pd.bdate_range("2020-01-01", periods=300))
    >>> market = dh.HistoricalPaths(prices, steps=10, method="rolling", stride=10)  # windows of 10 days
    >>> hedger = dh.Hedger(dh.MLPPolicy(num_layers=1, width=4), dh.EntropicRisk(a=1.0))
    >>> result = backtest(hedger, market, dh.EuropeanOption(strike=1.0), bind_instruments([dh.Spot()], market))
    >>> list(result.metrics.index), len(result.windows)
    (['hedged', 'unhedged', 'bs_delta'], 27)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from deephedge_tf.errors import DataError

__all__ = ["BacktestResult", "OUT_OF_MODEL_NOTE", "backtest"]

OUT_OF_MODEL_NOTE = (
    "Out-of-model test: the policy was trained on simulated paths of its configured market and is applied "
    "here to real price windows that follow no model it was trained on; option premiums on these paths are "
    "Black-Scholes at the trailing realised volatility, and each trading day is one step of the run's dt. "
    "Differences to the Black-Scholes delta hedge measure robustness to the real dynamics, not the quality "
    "of the training.")


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    """Attributes:
      metrics: one row per strategy (``hedged``, ``unhedged``, ``bs_delta`` where it applies), the columns
        of :func:`deephedge_tf.evaluation.metrics.strategy_metrics`, with ``objective`` (the hedger's
        objective of each strategy's PnL) first.
      windows: one row per window, indexed by the window's first date: ``end`` (its last date), per
        strategy ``pnl_<name>`` and ``costs_<name>`` (currency of ``s0``), and for a European derivative
        ``premium_bs`` (:func:`black_scholes_premium`).
      note: :data:`OUT_OF_MODEL_NOTE`.
    """

    metrics: pd.DataFrame
    windows: pd.DataFrame
    note: str = OUT_OF_MODEL_NOTE


def backtest(hedger, market, derivative, instruments, chunk: int = 8192) -> BacktestResult:
    """Runs ``hedger`` and the baselines over every window of ``market`` (module doc).

    Args:
      hedger: a trained :class:`deephedge_tf.hedger.Hedger`.
      market: a :class:`deephedge_tf.market.historical.HistoricalPaths` with ``method="rolling"``: its
        windows (``steps`` days each, starting every ``stride`` days, scaled to start at ``s0``) are the
        paths.  Use the run's ``steps``, ``dt`` and ``s0``, so the policy sees what it was trained on.
      derivative: the liability.
      instruments: the hedging instruments bound to ``market``
        (:func:`deephedge_tf.instruments.hedges.bind_instruments`; options are then priced at
        Black-Scholes with the trailing realised volatility).
      chunk: windows per forward pass.
    """
    from deephedge_tf.evaluation.compare import baseline_hedgers, objective_value, outputs_table, strategy_outputs

    if getattr(market, "method", None) != "rolling" or not hasattr(market, "series"):
        raise DataError(f"backtest: market {type(market).__name__} (method {getattr(market, 'method', None)!r}); "
                        "allowed: HistoricalPaths with method='rolling'")
    try:
        starts = market.series.window_start_dates(market.steps, market.stride)
    except ValueError as e:
        raise DataError(f"backtest: {e}") from None
    models = {"hedged": hedger, **baseline_hedgers(hedger, derivative, instruments)}
    outputs = strategy_outputs(models, market, derivative, instruments, len(starts), seed=0, chunk=chunk)
    metrics = outputs_table(outputs, lambda o: objective_value(hedger.objective, o["pnl"], o["costs"]))
    prices = market.series.prices
    ends = prices.index[np.searchsorted(prices.index, starts) + market.steps]
    windows = pd.DataFrame({"end": ends}, index=pd.Index(starts, name="start"))
    for name, o in outputs.items():
        windows[f"pnl_{name}"] = o["pnl"]
        windows[f"costs_{name}"] = o["costs"]
    premium = black_scholes_premium(market, derivative, len(starts))
    if premium is not None:
        windows["premium_bs"] = premium
    return BacktestResult(metrics=metrics, windows=windows)


def black_scholes_premium(market, derivative, windows: int):
    """``[W]`` Black-Scholes price of a European ``derivative`` at each window's start, at the trailing realised
    volatility (what a seller quoting realised vol would charge; the PnL excludes the premium, so PnL + premium
    is the seller's result); None for other derivatives, which have no such price."""
    from deephedge_tf.instruments.derivatives import EuropeanOption
    from deephedge_tf.pricing.black_scholes import bs_price

    if not isinstance(derivative, EuropeanOption):
        return None
    paths = market.simulate(windows)
    spot0 = paths.spot[0].numpy().astype(np.float64)
    vol0 = np.sqrt(paths.variance[0].numpy().astype(np.float64))
    years = derivative.maturity_years(market)
    return bs_price(spot0, derivative.strike, years, vol0, derivative.is_call, dtype="float64").numpy()
