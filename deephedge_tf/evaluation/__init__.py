"""Evaluation of hedging strategies: risk metrics, significance tests and plots.

* Risk measures of per-path terminal PnL (loss numbers, positive = loss):
  :func:`value_at_risk`, :func:`expected_shortfall`, :func:`entropic_risk` (their standard errors:
  :func:`expected_shortfall_se`, :func:`entropic_risk_se`; two strategies on the same paths:
  :func:`paired_entropic_difference`).
* Summaries: :func:`strategy_metrics` (one strategy, a dict) and :func:`metrics_table`
  (several strategies, a pandas DataFrame).
* Comparing two strategies' mean PnL: :func:`paired_t_test` (same paths) and
  :func:`welch_t_test` (independent paths).
* PNG plots: :func:`plot_pnl_histograms`, :func:`plot_hedges_over_time`,
  :func:`plot_learning_curves`, :func:`plot_implied_vol_fit`, :func:`plot_cumulative_pnl` (matplotlib Agg, no pyplot state touched).
* A trained hedger against the baselines on fresh paths: :func:`evaluate` (a DataFrame, one row per
  strategy; :mod:`deephedge_tf.evaluation.compare`); on rolling windows of a real price series:
  :func:`deephedge_tf.evaluation.backtest.backtest` (an out-of-model test).

The metrics and plots do not import TensorFlow; tensors are accepted wherever ``np.asarray`` converts
them.
"""

from deephedge_tf.evaluation.metrics import (
    DEFAULT_LEVELS, entropic_risk, entropic_risk_se, expected_shortfall, expected_shortfall_se,
    metrics_table, paired_entropic_difference,
    paired_t_test, strategy_metrics, value_at_risk, welch_t_test)
from deephedge_tf.evaluation.compare import evaluate
from deephedge_tf.evaluation.plots import (plot_cumulative_pnl, plot_hedges_over_time, plot_implied_vol_fit, plot_learning_curves,
                                          plot_pnl_histograms)

__all__ = [
    "DEFAULT_LEVELS",
    "entropic_risk",
    "entropic_risk_se",
    "evaluate",
    "expected_shortfall",
    "expected_shortfall_se",
    "metrics_table",
    "paired_entropic_difference",
    "paired_t_test",
    "plot_cumulative_pnl",
    "plot_hedges_over_time",
    "plot_implied_vol_fit",
    "plot_learning_curves",
    "plot_pnl_histograms",
    "strategy_metrics",
    "value_at_risk",
    "welch_t_test",
]
