"""Experiment ``price_vs_cost``: how the indifference price grows with proportional transaction costs.

Published (Buehler, Gonon, Teichmann, Wood 2019; shared/design/REFERENCE-VALUES.md): the entropic
(lambda = 1) indifference price of an ATM call minus its price without costs grows like
``cost^(2/3)`` (the asymptotics of Whalley and Wilmott and of Kallsen and Muhle-Karbe); the paper's
fitted log-log slopes are 0.67 under Black-Scholes (sigma 0.2) and 0.71 under its Heston model.

What runs, per market and seed: one feed-forward policy per cost rate (the MLP sees its position
before trading, so it can learn to leave it alone), trained with the library's default optimizer
(DH-KFAC) on fresh paths under the entropic risk with a = 1, evaluated on the same out-of-sample paths
as the policy trained without costs, so each difference ``price(cost) - price(0)`` is paired (its standard error by the delta
method).  The slope is a weighted least-squares fit of ``log(difference)`` on ``log(cost)``, weights
from the differences' standard errors (over seeds at the full scale).  Markets: ``bs``, GBM sigma 0.2,
S0 = K = 100, 30 daily steps, the spot with the cost; ``heston``, the paper's Heston (alpha 1, b 0.04,
sigma 2, rho -0.7, v0 0.04), the spot and the variance swap, both with the cost.

Scales: ``small`` (seed 0): costs 5e-4 .. 8e-3 (five rates, a factor 16) and none, 60 steps of 4,096
paths each (400 Adam steps priced higher at every rate with the same slope), 131,072 evaluation paths;
``full`` (seeds 0, 1, 2): the same rates, 500 steps of 16,384 paths, 1,000,000 evaluation paths (not
run yet).  Band of the slopes: 0.1 at the small scale, 0.05 at the full scale.  The slopes do not
reproduce the published ones in this setting (docs/experiments.md: daily trading, not the band, sets
the turnover at small costs here).
"""

from __future__ import annotations

import math

import numpy as np

from deephedge_tf.experiments import Figure, over_seeds, register, train

SOURCE = "Buehler, Gonon, Teichmann, Wood (2019), Deep Hedging, section 5 (price against cost)"
PUBLISHED_SLOPE = {"bs": 0.67, "heston": 0.71}
THEORY_SLOPE = 2.0 / 3.0
COSTS = (0.0, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
A = 1.0
S0, STEPS, DT = 100.0, 30, 1.0 / 365.0
MARKETS = {
    "bs": {"model": "gbm", "s0": S0, "gbm": {"mu": 0.0, "sigma": 0.2}},
    "heston": {"model": "heston", "s0": S0,
               "heston": {"v0": 0.04, "kappa": 1.0, "theta": 0.04, "xi": 2.0, "rho": -0.7, "mu": 0.0, "scheme": "qe"}},
}
BAND = {"small": 0.1, "full": 0.05}
EVAL_SEED = 24_680
SIZES = {"small": {"steps": 60, "batch": 4096, "eval_paths": 131_072},
         "full": {"steps": 500, "batch": 16_384, "eval_paths": 1_000_000}}


def cost_config(market: str, cost: float, seed: int, scale: str):
    """The config of the policy for ``market`` (``"bs"`` or ``"heston"``) at cost rate ``cost``."""
    from deephedge_tf.config import from_dict

    size = SIZES[scale]
    hedges = {"spot": {"enabled": True, "cost": cost}}
    if market == "heston":
        hedges["variance_swap"] = {"enabled": True, "cost": cost}
    return from_dict({
        "seed": seed, "dtype": "float32",
        "time": {"steps": STEPS, "dt": DT},
        "market": MARKETS[market],
        "derivative": {"kind": "european", "is_call": True, "strike": 1.0},
        "hedges": hedges,
        "policy": {"kind": "mlp", "num_layers": 2, "width": 32},
        "objective": {"kind": "entropic", "a": A},
        "training": {"optimizer": "dhkfac", "batch_size": size["batch"], "batches_per_epoch": 10,
                     "epochs": size["steps"] // 10, "fresh_paths": True, "validation_paths": 8192,
                     "time_loop": "graph"},
        "evaluation": {"paths": size["eval_paths"], "plots": False},
    })


def fit_slope(costs, differences, stderrs) -> tuple[float, float]:
    """``(slope, its s.e.)`` of the weighted least-squares line of ``log(difference)`` on ``log(cost)``,
    weights ``(difference / s.e.)^2`` (the inverse variance of ``log(difference)``).

        >>> costs = np.array([1e-3, 2e-3, 4e-3, 8e-3])
        >>> slope, se = fit_slope(costs, 3.0 * costs ** (2 / 3), np.full(4, 1e-4))
        >>> round(slope, 6)
        0.666667
    """
    x, y = np.log(np.asarray(costs, float)), np.log(np.asarray(differences, float))
    w = (np.asarray(differences, float) / np.asarray(stderrs, float)) ** 2
    xm = np.sum(w * x) / np.sum(w)
    sxx = np.sum(w * (x - xm) ** 2)
    slope = float(np.sum(w * (x - xm) * y) / sxx)
    return slope, float(1.0 / math.sqrt(sxx))


@register("price_vs_cost", {"small": (0,), "full": (0, 1, 2)},
          "indifference price minus the no-cost price against the cost rate, log-log slope (Buehler et al. 2019)")
def run(ctx):
    import pandas as pd

    from deephedge_tf.evaluation import entropic_risk, entropic_risk_se, paired_entropic_difference
    from deephedge_tf.evaluation.compare import strategy_outputs
    from deephedge_tf.training import build_parts

    rows = []
    for market in MARKETS:
        for seed in ctx.seeds:
            models = {}
            for cost in COSTS:
                models[cost], _, wall = train(cost_config(market, cost, seed, ctx.scale))
                ctx.echo(f"price_vs_cost: {market} cost {cost:g} seed {seed}: trained in {wall:.0f} s")
            # One evaluation per cost (its own transaction costs) on the same paths: the differences are paired.
            pnl = {}
            for cost, model in models.items():
                parts = build_parts(cost_config(market, cost, seed, ctx.scale))
                pnl[cost] = strategy_outputs({"m": model}, parts.market, parts.derivative, parts.instruments,
                                             SIZES[ctx.scale]["eval_paths"], EVAL_SEED)["m"]["pnl"]
            for cost in COSTS:
                diff, diff_se = paired_entropic_difference(pnl[cost], pnl[0.0], A)
                rows.append({"market": market, "seed": seed, "cost": cost, "price": entropic_risk(pnl[cost], A),
                             "price_se": entropic_risk_se(pnl[cost], A), "minus_no_cost": diff,
                             "minus_no_cost_se": diff_se})
    table = pd.DataFrame(rows)
    table.to_csv(ctx.out / "prices.csv", index=False)
    figures = []
    for market in MARKETS:
        figures.append(_slope_figure(market, table[table.market == market], ctx.scale))
    _plot(table, ctx.out / "price_vs_cost.png")
    return figures, ["prices.csv", "price_vs_cost.png"]


def _slope_figure(market: str, rows, scale: str) -> Figure:
    positive = rows[rows.cost > 0]
    slopes = []
    for _, by_seed in positive.groupby("seed"):
        slopes.append(fit_slope(by_seed.cost, by_seed.minus_no_cost.clip(lower=1e-12), by_seed.minus_no_cost_se))
    value, stderr, how = over_seeds([s for s, _ in slopes], slopes[0][1])
    how = how.replace("s.e. of the evaluation", "s.e. of the weighted fit")
    return Figure(f"slope_{market}", value, stderr, PUBLISHED_SLOPE[market], BAND[scale], SOURCE,
                  f"log-log slope of price(cost) - price(0) over costs {', '.join(f'{c:g}' for c in COSTS[1:])} "
                  f"(theory 2/3); {how}")


def _plot(table, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (market, rows) in enumerate(table[table.cost > 0].groupby("market")):
        mean = rows.groupby("cost").minus_no_cost.mean()
        se = rows.groupby("cost").minus_no_cost_se.mean()
        ax.errorbar(mean.index, mean.clip(lower=1e-12), yerr=2 * se, fmt="o", color=f"C{i}", label=market)
        ref = mean.iloc[len(mean) // 2] * (mean.index / mean.index[len(mean) // 2]) ** THEORY_SLOPE
        ax.plot(mean.index, ref, "--", color=f"C{i}", alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("proportional cost rate")
    ax.set_ylabel("price(cost) - price(0)")
    ax.set_title("entropic (a = 1) indifference price of an ATM call; dashed: slope 2/3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
