"""A trained hedger against the baselines, out of sample, on the same paths.

:func:`evaluate` is the one-call comparison of the Python API; :func:`strategy_outputs` is its loop
(the ``deephedge train`` report uses it too).  Baselines, where they apply (:func:`baseline_hedgers`):
``unhedged`` (never trades) and ``bs_delta`` (the Black-Scholes delta on the spot, for a derivative with
``greeks`` when the first hedging instrument is the spot).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from deephedge_tf.errors import DeepHedgeError

__all__ = ["baseline_hedgers", "evaluate", "objective_value", "outputs_table", "strategy_outputs"]

#: Evaluation paths come from the market's stream with this offset on its seed (training uses the seed
#: itself and validation seed + 1), so a policy is never scored on the paths it trained on.
EVALUATION_SEED_OFFSET = 2


def baseline_hedgers(hedger, derivative, instruments) -> dict:
    """``{"unhedged": ..., "bs_delta": ...}``: Hedgers of the baselines that apply, with ``hedger``'s
    objective and dtype."""
    from deephedge_tf.features import has_greeks
    from deephedge_tf.hedger import Hedger
    from deephedge_tf.instruments.hedges import Spot
    from deephedge_tf.policies import BlackScholesDeltaPolicy, NoHedgePolicy

    dtype = hedger.dtype_policy
    out = {"unhedged": NoHedgePolicy(dtype=dtype, name="no_hedge")}
    if has_greeks(derivative) and instruments and isinstance(instruments[0], Spot):
        out["bs_delta"] = BlackScholesDeltaPolicy(dtype=dtype, name="bs_delta")
    # Baselines trade in contracts (their positions are deltas), so no natural units.
    return {name: Hedger(policy, hedger.objective, natural_units=False, dtype=dtype) for name, policy in out.items()}


def strategy_outputs(models: Mapping, market, derivative, instruments, paths: int, seed: int,
                     chunk: int = 8192) -> dict:
    """Each model's ``pnl``, ``costs``, ``turnover`` (``[paths]`` arrays) and the ``actions`` of the first
    16 paths (``[T, 16, N]``), on the same paths: ``paths`` of the market's stream ``seed``, in chunks."""
    from deephedge_tf.features import make_batch

    outputs = {name: {"pnl": [], "costs": [], "turnover": []} for name in models}
    for start in range(0, int(paths), int(chunk)):
        size = min(int(chunk), int(paths) - start)
        batch = make_batch(market.simulate(size, start=start, seed=seed), derivative, instruments)
        for name, model in models.items():
            out = model(batch, training=False)
            for key in ("pnl", "costs", "turnover"):
                outputs[name][key].append(out[key].numpy())
            if start == 0:
                outputs[name]["actions"] = out["actions"].numpy()[:, :16]
    for o in outputs.values():
        for key in ("pnl", "costs", "turnover"):
            o[key] = np.concatenate(o[key])
    return outputs


def objective_value(objective, pnl, costs) -> float:
    """The training objective evaluated on a sample (the loss form: includes E[costs] for mean-variance)."""
    import tensorflow as tf

    return float(objective(tf.constant(pnl), tf.constant(costs)))


def outputs_table(outputs: Mapping, objective_of):
    """The :func:`~deephedge_tf.evaluation.metrics.metrics_table` of :func:`strategy_outputs`' ``outputs``, with
    an ``objective`` column first: ``objective_of(output)`` of each strategy's output dict."""
    from deephedge_tf.evaluation.metrics import metrics_table

    table = metrics_table({k: {kk: v[kk] for kk in ("pnl", "costs", "turnover")} for k, v in outputs.items()})
    table.insert(0, "objective", [objective_of(o) for o in outputs.values()])
    return table


def evaluate(hedger, market, derivative, hedges, paths: int = 50_000, seed: int | None = None,
             baselines: bool = True, chunk: int = 8192):
    """Out-of-sample metrics of ``hedger`` and the baselines on the same paths: a ``pandas.DataFrame``,
    one row per strategy (``hedged``, ``unhedged``, ``bs_delta`` where it applies), the columns of
    :func:`deephedge_tf.evaluation.metrics.strategy_metrics` after ``objective``, the hedger's objective
    (its exact risk) of each strategy's PnL.

    Args:
      hedger: a trained :class:`deephedge_tf.hedger.Hedger` (any policy and objective).
      market, derivative, hedges: as for :class:`deephedge_tf.data.PathBatches` (hedges are bound to the
        market, as there).
      paths: evaluation paths.  seed: their stream (None: the market's seed + 2, paths the training
        and validation streams never use).  baselines: add the baselines.  chunk: paths per forward pass.

        >>> import deephedge_tf as dh
        >>> market = dh.GBM(s0=100.0, sigma=0.2, steps=5, dt=1 / 365)
        >>> call = dh.EuropeanOption(strike=100.0)
        >>> hedger = dh.Hedger(dh.MLPPolicy(num_layers=1, width=4), dh.EntropicRisk(a=1.0))
        >>> report = dh.evaluate(hedger, market, call, [dh.Spot(cost=0.0)], paths=1000)
        >>> list(report.index), bool(report.loc["bs_delta", "pnl_std"] < report.loc["unhedged", "pnl_std"])
        (['hedged', 'unhedged', 'bs_delta'], True)
    """
    import tensorflow as tf

    from deephedge_tf.instruments.hedges import bind_instruments
    from deephedge_tf.market.models import check_market

    check_market(market)
    if not isinstance(paths, (int, np.integer)) or isinstance(paths, bool) or paths < 1:
        raise DeepHedgeError(f"evaluate: paths must be an integer >= 1; got {paths!r}")
    instruments = bind_instruments(hedges, market)
    seed = int(getattr(market, "seed", 0)) + EVALUATION_SEED_OFFSET if seed is None else seed
    models = {"hedged": hedger}
    if baselines:
        models.update(baseline_hedgers(hedger, derivative, instruments))
    outputs = strategy_outputs(models, market, derivative, instruments, paths, seed, chunk)
    risk = hedger.objective.risk
    return outputs_table(outputs, lambda o: float(risk(tf.constant(o["pnl"]))))
