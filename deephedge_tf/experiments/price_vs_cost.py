"""Experiment ``price_vs_cost``: how the indifference price grows with proportional transaction costs.

Published (Buehler, Gonon, Teichmann, Wood 2019, section 5.3; shared/design/REFERENCE-VALUES.md): the
entropic (lambda = 1) indifference price ``p_eps`` of an ATM call grows with the proportional cost rate
``eps`` like ``p_eps - p_0 = O(eps^(2/3))`` (Whalley and Wilmott; Kallsen and Muhle-Karbe); the paper's
fitted log-log slopes are 0.67 under Black-Scholes (sigma 0.2, s0 = K = 100) and 0.71 under its Heston
model with the spot and the variance swap.  The asymptotics are for continuous trading, where ``p_0`` is
the risk-neutral price ``q``, and the paper says it "compared to the risk-neutral price q here (thus
neglecting the discrete-time friction in p_eps)": its figures plot ``log(p_eps - q)``.  That difference
is the headline here (``slope_bs``, ``slope_heston``).  The paired difference to the discrete-time price
without costs, ``p_eps - p_0``, is reported beside it (``slope_*_vs_no_cost``, no published value): with
daily trading its slope is nearer 1 at small costs, where the optimal strategy still trades every day
(docs/experiments.md).  The paper's rates, ``eps_i = 2^(-i+5)``, i = 1..5, cannot be rates of its cost
formula at s0 = 100 as printed (16 .. 1); the rates here span the same factor 16 in five doublings.

What runs, per market and seed: one feed-forward policy per cost rate (the MLP sees its position
before trading, so it can learn to leave it alone), trained with the library's default optimizer
(DH-KFAC) on fresh paths under the entropic risk with a = 1.  Every policy is evaluated at every rate on
131,072 paths of their own and the one with the lowest risk there is priced at that rate (the
indifference price is an infimum over strategies; ``policy_trained_at`` in prices.csv says which policy
it was) on the evaluation paths, the same for every rate, so
``p_eps - p_0`` is paired (its standard error by the delta method); ``q`` is exact (the Black-Scholes
formula, the library's Heston Fourier price).  A slope is a weighted least-squares fit of
``log(difference)`` on ``log(cost)``, weights from the differences' standard errors (over seeds at the
full scale).  Markets: ``bs``, GBM sigma 0.2, S0 = K = 100, 30 daily steps, the spot with the cost;
``heston``, the paper's Heston (alpha 1, b 0.04, sigma 2, rho -0.7, v0 0.04), the spot and the variance
swap, both with the cost.

Scales: ``small`` (seed 0): costs 5e-4 .. 8e-3 (five rates, a factor 16) and none, 60 steps of 4,096
paths each (400 Adam steps priced higher at every rate with the same slope), 131,072 evaluation paths;
``full`` (seeds 0, 1, 2): the same rates, 500 steps of 16,384 paths, 1,000,000 evaluation paths (seed 0:
81 minutes on 2 CPU cores, slopes 0.72 and 0.63; docs/experiments.md).  Band of the slopes: 0.1 at the
small scale, 0.05 at the full scale.
"""

from __future__ import annotations

import math

import numpy as np

from deephedge_tf.experiments import Figure, over_seeds, register, train
from deephedge_tf.experiments import buehler_heston

SOURCE = "Buehler, Gonon, Teichmann, Wood (2019), Deep Hedging, section 5 (price against cost)"
PUBLISHED_SLOPE = {"bs": 0.67, "heston": 0.71}
THEORY_SLOPE = 2.0 / 3.0
COSTS = (0.0, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
A = 1.0
# The paper's section 5.2 grid and Heston market, as buehler_heston (whose q is the Heston market's here).
S0, STEPS, DT = buehler_heston.S0, buehler_heston.STEPS, buehler_heston.DT
MARKETS = {
    "bs": {"model": "gbm", "s0": S0, "gbm": {"mu": 0.0, "sigma": 0.2}},
    "heston": {"model": "heston", "s0": S0, "heston": dict(buehler_heston.HESTON)},
}
BAND = {"small": 0.1, "full": 0.05}
EVAL_SEED = 24_680
SELECT_SEED, SELECT_PATHS = 13_579, 131_072  # paths on which the policy for each rate is chosen
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


def risk_neutral_price(market: str) -> float:
    """The ATM call's risk-neutral price ``q`` in ``market`` (the paper's reference price): the
    Black-Scholes formula for ``bs``, the library's Heston Fourier price for ``heston``.

        >>> round(risk_neutral_price("bs"), 4)
        2.2872
    """
    if market == "bs":
        from deephedge_tf.pricing.black_scholes import bs_price

        return float(bs_price(S0, S0, STEPS * DT, MARKETS["bs"]["gbm"]["sigma"], dtype="float64"))
    if market == "heston":  # the same market, strike and maturity as buehler_heston's
        return buehler_heston.risk_neutral_price()
    raise ValueError(f"risk_neutral_price: market must be one of {sorted(MARKETS)}; got {market!r}")


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
          "indifference price minus the risk-neutral price against the cost rate, log-log slope (Buehler et al. 2019)")
def run(ctx):
    import pandas as pd

    from deephedge_tf.evaluation import entropic_risk, entropic_risk_se, paired_entropic_difference
    from deephedge_tf.evaluation.compare import strategy_outputs
    from deephedge_tf.training import build_parts

    rows = []
    for market in MARKETS:
        q = risk_neutral_price(market)
        for seed in ctx.seeds:
            models = {}
            for cost in COSTS:
                models[cost], _, wall = train(cost_config(market, cost, seed, ctx.scale))
                ctx.echo(f"price_vs_cost: {market} cost {cost:g} seed {seed}: trained in {wall:.0f} s")
            # Every policy evaluated at every cost rate, all on the same paths (the differences are paired).
            # The price at a rate is an infimum over strategies, so it is the lowest risk any of the trained
            # policies reaches there: a short training that failed at one rate (seen at 5e-4 under Heston)
            # is replaced by a policy trained at a neighbouring rate instead of bending the slope.
            # The choice is made on paths of their own (SELECT_SEED), so the evaluation's noise does not pick it.
            pnl, best = {}, {}
            for cost in COSTS:
                parts = build_parts(cost_config(market, cost, seed, ctx.scale))
                chosen, _ = choose_policy(models, parts)
                best[cost] = chosen
                priced = strategy_outputs({chosen: models[chosen]}, parts.market, parts.derivative, parts.instruments,
                                          SIZES[ctx.scale]["eval_paths"], EVAL_SEED)
                pnl[cost] = priced[chosen]["pnl"]
            for cost in COSTS:
                diff, diff_se = paired_entropic_difference(pnl[cost], pnl[0.0], A)
                price = entropic_risk(pnl[cost], A)
                rows.append({"market": market, "seed": seed, "cost": cost, "price": price,
                             "price_se": entropic_risk_se(pnl[cost], A), "policy_trained_at": best[cost],
                             "risk_neutral_price": q, "minus_risk_neutral": price - q, "minus_no_cost": diff,
                             "minus_no_cost_se": diff_se})
    table = pd.DataFrame(rows)
    table.to_csv(ctx.out / "prices.csv", index=False)
    figures = []
    for market in MARKETS:
        figures.append(_slope_figure(market, table[table.market == market], ctx.scale))
    for market in MARKETS:
        figures.append(_slope_figure(market, table[table.market == market], ctx.scale, against="no_cost"))
    _plot(table, ctx.out / "price_vs_cost.png")
    return figures, ["prices.csv", "price_vs_cost.png"]


def choose_policy(models, parts, paths: int = SELECT_PATHS, seed: int = SELECT_SEED):
    """``(key, risks)``: the key of the policy in ``models`` with the lowest entropic risk (a = ``A``) in the
    setting of ``parts`` (market, derivative, instruments with their costs) on ``paths`` paths of stream
    ``seed``, and every policy's risk there (``{key: risk}``).  The paths are not the evaluation's, so the
    evaluation's noise does not pick the policy it then prices.

        >>> import tensorflow as tf
        >>> class Sure:   # a stand-in policy whose PnL is a sure amount on every path
        ...     def __init__(self, pnl): self.pnl = pnl
        ...     def __call__(self, batch, training=False):
        ...         n = batch["payoff"].shape[0]
        ...         return {"pnl": tf.fill([n], self.pnl), "costs": tf.zeros([n]), "turnover": tf.zeros([n]),
        ...                 "actions": tf.zeros([1, n, 1])}
        >>> from deephedge_tf.training import build_parts
        >>> parts = build_parts(cost_config("bs", 1e-3, 0, "small"))
        >>> key, risks = choose_policy({"loses 2": Sure(-2.0), "loses 1": Sure(-1.0)}, parts, paths=1024)
        >>> key, round(risks["loses 2"], 6)
        ('loses 1', 2.0)
    """
    from deephedge_tf.evaluation import entropic_risk
    from deephedge_tf.evaluation.compare import strategy_outputs

    trial = strategy_outputs(models, parts.market, parts.derivative, parts.instruments, paths, seed)
    risks = {key: float(entropic_risk(out["pnl"], A)) for key, out in trial.items()}
    return min(risks, key=risks.get), risks


def _slope_figure(market: str, rows, scale: str, against: str = "risk_neutral") -> Figure:
    """The slope of ``price(cost) - q`` (``against="risk_neutral"``, the paper's figure) or of the paired
    ``price(cost) - price(0)`` (``"no_cost"``, context: no published value)."""
    positive = rows[rows.cost > 0]
    slopes = []
    for _, by_seed in positive.groupby("seed"):
        if against == "risk_neutral":  # q is exact: the s.e. is the price's own
            slopes.append(fit_slope(by_seed.cost, by_seed.minus_risk_neutral.clip(lower=1e-12), by_seed.price_se))
        else:
            slopes.append(fit_slope(by_seed.cost, by_seed.minus_no_cost.clip(lower=1e-12), by_seed.minus_no_cost_se))
    value, stderr, how = over_seeds([s for s, _ in slopes], slopes[0][1])
    how = how.replace("s.e. of the evaluation", "s.e. of the weighted fit")
    costs = ", ".join(f"{c:g}" for c in COSTS[1:])
    if against == "risk_neutral":
        return Figure(f"slope_{market}", value, stderr, PUBLISHED_SLOPE[market], BAND[scale], SOURCE,
                      f"log-log slope of price(cost) - q (q the risk-neutral price, as the paper) over costs {costs} "
                      f"(theory 2/3); {how}")
    return Figure(f"slope_{market}_vs_no_cost", value, stderr, None, None, SOURCE,
                  f"log-log slope of the paired price(cost) - price(0) over costs {costs}; {how}")


def _plot(table, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (market, rows) in enumerate(table[table.cost > 0].groupby("market")):
        mean = rows.groupby("cost").minus_risk_neutral.mean()
        se = rows.groupby("cost").price_se.mean()
        ax.errorbar(mean.index, mean.clip(lower=1e-12), yerr=2 * se, fmt="o", color=f"C{i}", label=market)
        ref = mean.iloc[len(mean) // 2] * (mean.index / mean.index[len(mean) // 2]) ** THEORY_SLOPE
        ax.plot(mean.index, ref, "--", color=f"C{i}", alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("proportional cost rate")
    ax.set_ylabel("price(cost) - risk-neutral price")
    ax.set_title("entropic (a = 1) indifference price of an ATM call; dashed: slope 2/3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
