"""The jobs behind the command line.

* :func:`train_job` (``deephedge train``, ``make train``): train the configured policy, evaluate it
  out of sample against baselines, write the run directory.
* :func:`evaluate_job` (``deephedge evaluate``): re-evaluate a finished run from its final weights.
* :func:`export_job` (``deephedge export``): the SavedModel of a finished run (whole-path and
  one-step serving signatures; see :mod:`deephedge_tf.export`).
* :func:`backtest_job` (``deephedge backtest``): a finished run's hedger on rolling windows of a real
  price series next to the Black-Scholes delta hedge (an out-of-model test).
* :func:`calibrate_job` (``deephedge calibrate``): Heston calibrated to an option chain (parameters for
  ``market.calibration``, fit table and plot).
* :func:`simulate_job` (``deephedge simulate``): simulate the market, price the derivative by Monte Carlo
  next to its closed-form or Fourier reference where one exists, and tabulate the hedging instruments
  (premium, mean return per unit with its standard error: under the pricing model every return is a
  martingale increment, so the t-statistics should be small).

Every file is written atomically (temporary name, then rename): nothing is half-written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from deephedge_tf.builders import build_derivative, build_hedges, build_market
from deephedge_tf.config import Config, dump_config
from deephedge_tf.errors import DataError, DeepHedgeError
from deephedge_tf.files import write_atomic
from deephedge_tf.instruments.hedges import hedge_tensors, option_is_call
from deephedge_tf.training import instrument_names


def mean_and_se(x) -> tuple[float, float]:
    """Sample mean and its standard error.

    >>> mean_and_se([1.0, 2.0, 3.0])  # se = 1 / sqrt(3)
    (2.0, 0.5773502691896258)
    """
    x = np.asarray(x, np.float64).ravel()
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def reference_price(market, derivative):
    """(price, method) of the derivative from the market's pricer (``derivative.reference_price(market)``),
    or (None, why not): the derivative has no closed form, the market no pricing model, or a drift.

    >>> import deephedge_tf as dh
    >>> market, call = dh.GBM(s0=100.0, steps=5, dt=1 / 365), dh.EuropeanOption(strike=100.0)
    >>> price, method = reference_price(market, call)
    >>> round(price, 4), method
    (0.9338, 'Black-Scholes')
    >>> reference_price(dh.RoughBergomi(s0=100.0), call)
    (None, 'none (RoughBergomi has no pricing model)')
"""
    from deephedge_tf.market.models import NoPricingMeasure

    price_of = getattr(derivative, "reference_price", None)
    if price_of is None:
        return None, "none (no closed form for this payoff; Monte Carlo only)"
    if getattr(market, "vanilla_price", None) is None:
        return None, f"none ({type(market).__name__} has no pricing model)"
    try:
        return float(price_of(market)), market.pricing_method
    except NoPricingMeasure:
        return None, "none (the market has a drift: not the pricing measure)"


def instrument_table(hedges) -> list[dict]:
    """Per instrument: premium at t0, mean return per unit over available trades, SE and t-stat."""
    prem = hedges.premiums.numpy()
    ret = hedges.returns.numpy()
    mask = hedges.mask.numpy()
    rows = []
    for n, name in enumerate(hedges.names):
        r0_mean, r0_se = mean_and_se(ret[0, :, n]) if mask[0, :, n].all() else (float("nan"), float("nan"))
        # Paths are independent; trades at different steps of one path are not, so the SE of the
        # pooled mean uses per-path averages of the available trades.
        avail = mask[..., n].sum(0)
        per_path = np.where(avail > 0, (ret[..., n] * mask[..., n]).sum(0) / np.maximum(avail, 1), np.nan)
        per_path = per_path[np.isfinite(per_path)]
        all_mean, all_se = mean_and_se(per_path) if per_path.size > 1 else (float("nan"), float("nan"))
        rows.append(dict(
            name=name,
            premium_t0=float(prem[0, :, n].mean()),
            return_t0_mean=r0_mean, return_t0_se=r0_se,
            return_mean=all_mean, return_se=all_se,
            t_stat=all_mean / all_se if all_se > 0 else float("nan"),
            tradable_steps=int(mask[:, 0, n].sum()),
            cost_rate=float(hedges.cost_rates[0, 0, n]),
        ))
    return rows


def premium_table_check(cfg: Config, market) -> dict | None:
    """Max interpolation error of the Heston floating-grid premium table of ``market`` (the configured
    one) against the direct pricer."""
    fg = cfg.hedges.floating_grid
    if cfg.market.model != "heston" or not fg.moneyness:
        return None
    import tensorflow as tf

    from deephedge_tf.pricing.heston import heston_price

    years = [n * cfg.time.dt for n in fg.maturities]
    table = market.premium_model(fg.moneyness, years)
    h = cfg.market.heston
    v = np.linspace(0.0, 4.0 * max(h.theta, h.v0), 41)
    interp = table(tf.constant(v, tf.float64)).numpy()  # [41, J]
    years = np.asarray(fg.maturities, np.float64) * cfg.time.dt
    direct = heston_price(1.0, np.asarray(fg.moneyness)[None], years[None], v[:, None], h.kappa, h.theta, h.xi,
                          h.rho, is_call=option_is_call(fg.moneyness)[None])
    return dict(max_abs_error_premium_over_spot=float(np.abs(interp - direct).max()),
                variance_checked=[float(v[0]), float(v[-1])], nodes=cfg.simulation.premium_table_nodes)


def simulate_job(cfg: Config, out: Path, echo=print) -> dict:
    """Runs the job, writes ``out/config.yaml`` and ``out/report.json``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(cfg))

    n = cfg.simulation.paths
    t0 = time.perf_counter()
    market = build_market(cfg)
    paths = market.simulate(n)
    sim_s = time.perf_counter() - t0
    n = int(paths.spot.shape[1])  # rolling windows of a short series may give fewer paths

    derivative = build_derivative(cfg)
    payoff = derivative.payoff(paths).numpy()
    mc, se = mean_and_se(payoff)
    ref, method = reference_price(market, derivative)

    t0 = time.perf_counter()
    hedges = hedge_tensors(build_hedges(cfg, market), paths)
    hedge_s = time.perf_counter() - t0
    rows = instrument_table(hedges)
    table_check = premium_table_check(cfg, market)

    report = {
        "stage": "market_and_pricing",
        "market": cfg.market.model,
        "derivative": cfg.derivative.kind,
        "simulation": {"paths": n, "steps": cfg.time.steps, "dt": cfg.time.dt, "wall_s": sim_s,
                       "path_steps_per_s": n * cfg.time.steps / sim_s},
        "price": {"monte_carlo": mc, "monte_carlo_se": se, "reference": ref, "reference_method": method,
                  "z_score": (mc - ref) / se if ref is not None and se > 0 else None},
        "instruments": rows,
        "instruments_wall_s": hedge_s,
        "premium_table": table_check,
    }
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=True))
    echo(format_report(report))
    echo(f"wrote {out / 'config.yaml'} and {out / 'report.json'}")
    return report


def format_report(r: dict) -> str:
    s, p = r["simulation"], r["price"]
    lines = [
        f"market {r['market']}: {s['paths']} paths x {s['steps']} steps simulated in {s['wall_s']:.2f} s "
        f"({s['path_steps_per_s']:.3g} path-steps/s)",
        f"derivative {r['derivative']}: Monte Carlo price {p['monte_carlo']:.6g} +- {p['monte_carlo_se']:.2g} "
        f"(1 s.e.)",
    ]
    if p["reference"] is not None:
        lines.append(f"  reference ({p['reference_method']}): {p['reference']:.6g}; "
                     f"MC - reference = {p['z_score']:+.2f} s.e.")
    else:
        lines.append(f"  reference: {p['reference_method']}")
    lines.append("hedging instruments (returns per unit bought, held to expiry/horizon):")
    lines.append(f"  {'name':<12}{'premium t0':>12}{'mean return':>14}{'s.e.':>11}{'t':>7}{'steps':>7}{'cost':>9}")
    for row in r["instruments"]:
        lines.append(f"  {row['name']:<12}{row['premium_t0']:>12.5g}{row['return_mean']:>14.3e}"
                     f"{row['return_se']:>11.2e}{row['t_stat']:>7.2f}{row['tradable_steps']:>7d}"
                     f"{row['cost_rate']:>9.1e}")
    if r["premium_table"]:
        t = r["premium_table"]
        lines.append(f"premium table ({t['nodes']} variance nodes): max |interpolated - direct| premium/spot = "
                     f"{t['max_abs_error_premium_over_spot']:.2e}")
    return "\n".join(lines)


# -- training job ---------------------------------------------------------------------------------

# Columns printed by `deephedge train`; metrics.csv has them all.
REPORT_KEYS = ("objective", "pnl_mean", "pnl_std", "es_95", "entropic", "cost_mean")
SUMMARY_COLUMNS = ("objective", "pnl_mean", "pnl_std", "es_95", "es_99", "entropic", "cost_mean", "turnover_mean")


def evaluate_strategies(cfg: Config, hedger, parts, num_paths: int | None = None, chunk: int = 8192) -> dict:
    """Out-of-sample outputs (pnl, costs, turnover, actions of a few paths) of the trained hedger and
    of the baselines that apply (:func:`deephedge_tf.evaluation.compare.baseline_hedgers`), on the same
    evaluation paths (seed + 2)."""
    from deephedge_tf.evaluation.compare import EVALUATION_SEED_OFFSET, baseline_hedgers, strategy_outputs

    n = num_paths or cfg.evaluation.paths
    models = {"hedged": hedger, **baseline_hedgers(hedger, parts.derivative, parts.instruments)}
    return strategy_outputs(models, parts.market, parts.derivative, parts.instruments, n,
                            cfg.seed + EVALUATION_SEED_OFFSET, chunk)


def check_run_directory(cfg: Config, out: Path, overwrite: bool = False) -> None:
    """A run directory holds one config's run: starting ``train`` again with the same config resumes it
    (from ``checkpoints/backup``); with another config it is refused, or with ``overwrite`` the old run's
    checkpoints and history are removed first, so nothing of it is resumed or mixed in."""
    written = out / "config.yaml"
    if not written.is_file() or written.read_text() == dump_config(cfg):
        return
    if not overwrite:
        raise DeepHedgeError(f"{out} holds a run of another config ({written}); train into a new --out, or "
                             "pass --overwrite to discard that run")
    import shutil

    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in ("history.csv", "report.json", "metrics.csv"):
        (out / name).unlink(missing_ok=True)


def train_job(cfg: Config, out: Path, echo=print, verbose="auto", overwrite: bool = False) -> dict:
    """Trains the configured policy, evaluates it against baselines, writes the run directory:
    config.yaml, report.json, metrics.csv, history.csv (losses and the optimizer's diagnostics per epoch,
    ``opt_*``), plots/*.png, saved_model/, checkpoints/, and tensorboard/ with ``training.tensorboard``.

    Killed and started again with the same command, the run resumes from its last epoch backup, ends at
    the weights of an uninterrupted run and keeps the whole history (``training.RunHistory``); a directory
    of another config is refused unless ``overwrite`` (:func:`check_run_directory`)."""
    import keras

    from deephedge_tf.distribute import is_chief
    from deephedge_tf.evaluation import plot_learning_curves
    from deephedge_tf.training import (OptimizerDiagnostics, RunHistory, build_parts, distribution_strategy,
                                       fit_hedger, make_hedger)

    # multi_worker: the strategy comes before any TensorFlow computation; every worker runs the whole job
    # (the replicas step together), worker 0 writes OUT, the others their own copy in OUT/worker-I (what
    # they need to resume with it).
    strategy = distribution_strategy(cfg)
    if not is_chief(strategy):
        out = out / f"worker-{strategy.cluster_resolver.task_id}"
    check_run_directory(cfg, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(cfg))
    parts = build_parts(cfg)
    hedger = make_hedger(cfg, parts)
    ckpt = out / "checkpoints"
    history = RunHistory(out / "history.csv")
    # Restore first; the optimizer's diagnostics go into the epoch's logs before anything records them.
    callbacks = [keras.callbacks.BackupAndRestore(str(ckpt / "backup")), OptimizerDiagnostics(), history]
    if cfg.training.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False))
    fit_hedger(cfg, hedger, parts, callbacks=callbacks, verbose=verbose)
    hedger.save_weights(str(ckpt / WEIGHTS_FILE))
    curves = history.history()
    wall = history.rows[-1]["wall_s"]
    train = {"steps": int(hedger.optimizer.iterations.numpy()), "epochs": len(history.rows),
             "wall_s": wall, "final_loss": float(curves["loss"][-1]),
             "final_val_loss": float(curves["val_loss"][-1]),
             "skipped_steps": float(sum(curves.get("skipped_steps", [0.0])))}
    if cfg.evaluation.plots:
        prefix = OptimizerDiagnostics.PREFIX
        losses = {k: v for k, v in curves.items() if not k.startswith(prefix)}
        plot_learning_curves(losses, out / "plots" / "learning_curves.png")
        diagnostics = {k[len(prefix):]: v for k, v in curves.items() if k.startswith(prefix)}
        if diagnostics:
            plot_learning_curves(diagnostics, out / "plots" / "optimizer.png", title="Optimizer diagnostics")
    export_run(cfg, hedger, parts, out / "saved_model")
    report = evaluate_run(cfg, hedger, parts, out, train, echo)
    echo(f"trained {train['steps']} steps in {wall:.1f} s")
    return report


WEIGHTS_FILE = "final.weights.h5"


def load_trained_hedger(run_dir: Path):
    """(config, parts, hedger with the run's final weights) of a run directory written by train."""
    from deephedge_tf.config import load_config
    from deephedge_tf.features import make_batch
    from deephedge_tf.training import build_parts, make_hedger

    weights = run_dir / "checkpoints" / WEIGHTS_FILE
    if not (run_dir / "config.yaml").is_file() or not weights.is_file():
        raise DataError(f"{run_dir}: not a finished training run (needs config.yaml and "
                        f"checkpoints/{WEIGHTS_FILE}; run `deephedge train` first)")
    cfg = load_config(run_dir / "config.yaml")
    parts = build_parts(cfg)
    hedger = make_hedger(cfg, parts, compile=False)
    hedger.build_from_batch(make_batch(parts.market.simulate(2), parts.derivative, parts.instruments))
    hedger.load_weights(str(weights))
    return cfg, parts, hedger


def export_run(cfg: Config, hedger, parts, path: Path) -> Path:
    """SavedModel of the trained policy (whole-path and one-step signatures) for risk systems."""
    from deephedge_tf.export import export_hedger
    from deephedge_tf.features import feature_names, make_batch

    example = make_batch(parts.market.simulate(2), parts.derivative, parts.instruments)
    return export_hedger(hedger, example, path, feature_names=list(feature_names(parts.derivative)),
                         instrument_names=instrument_names(parts), overwrite=True)


def export_job(run_dir: Path, path: Path, echo=print) -> Path:
    """``deephedge export``: the SavedModel of a finished run, written to ``path``."""
    cfg, parts, hedger = load_trained_hedger(run_dir)
    written = export_run(cfg, hedger, parts, path)
    echo(f"wrote {written}")
    return written


def calibrate_job(chain: Path, out: Path, expiries=None, echo=print) -> dict:
    """``deephedge calibrate``: Heston fitted to an option-chain CSV (:mod:`deephedge_tf.pricing.calibration`);
    writes ``out/params.json`` (for ``market.calibration``), fit.csv, summary.csv and fit.png; returns the
    params.json record."""
    from deephedge_tf.market.option_chain import load_option_chain
    from deephedge_tf.pricing.calibration import calibrate_heston

    option_chain = load_option_chain(chain)
    if expiries:
        option_chain = option_chain.select(expiries)
    fit = calibrate_heston(option_chain)
    written = fit.write(out)
    echo(", ".join(f"{name} = {value:.6g}" for name, value in fit.params.as_dict().items()))
    table = fit.by_expiry[["quotes", "rmse_vol_points", "median_spread_vol_points", "inside_spread_share",
                           "within_one_spread_share"]]
    echo(table.to_string(float_format=lambda v: f"{v:.3f}"))
    echo(f"{100 * fit.inside_share:.1f}% of {len(fit.quotes)} quotes inside the bid/ask spread; rmse "
         f"{fit.rmse_vol_points:.3f} vol points; {fit.iterations} L-BFGS iterations in {fit.seconds:.1f} s "
         f"({'converged' if fit.converged else 'NOT converged'})")
    echo(f"wrote {out}: {', '.join(Path(p).name for p in written.values())}; use it with "
         f"market.calibration: {Path(written['params.json'])}")
    return json.loads(Path(written["params.json"]).read_text())


def backtest_job(run_dir: Path, data: Path, out: Path | None = None, stride: int | None = None,
                 echo=print) -> dict:
    """``deephedge backtest``: a trained run's hedger on rolling windows of a real daily price series, next to
    the Black-Scholes delta hedge at the trailing realised volatility (:mod:`deephedge_tf.evaluation.backtest`).
    Writes ``out`` (default ``run_dir/backtest``): metrics.csv, windows.csv, report.json (with the out-of-model
    note) and plots/{pnl_histograms,cumulative_pnl}.png; returns the report."""
    from deephedge_tf.evaluation import plot_cumulative_pnl, plot_pnl_histograms
    from deephedge_tf.evaluation.backtest import backtest
    from deephedge_tf.market.historical import HistoricalPaths, load_price_series

    cfg, parts, hedger = load_trained_hedger(run_dir)
    prices = load_price_series(data)
    steps = cfg.time.steps
    stride = steps if stride is None else stride
    if not isinstance(stride, int) or stride < 1:
        raise DeepHedgeError(f"--stride: got {stride!r}; allowed: an integer >= 1 (days between window starts)")
    try:
        market = HistoricalPaths(prices, steps=steps, dt=cfg.time.dt, s0=cfg.market.s0, method="rolling",
                                 stride=stride, vol_window=cfg.market.historical.vol_window, dtype=cfg.dtype)
    except ValueError as e:
        raise DataError(f"backtest data {str(data)!r}: {e}") from None
    result = backtest(hedger, market, parts.derivative, build_hedges(cfg, market))
    out = run_dir / "backtest" if out is None else out
    write_atomic(out / "metrics.csv", result.metrics.to_csv())
    write_atomic(out / "windows.csv", result.windows.to_csv(date_format="%Y-%m-%d"))
    windows = result.windows
    report = {
        "note": result.note,
        "data": str(data),
        "windows": len(windows), "steps": steps, "stride_days": stride,
        "first_window": str(windows.index[0].date()), "last_window_end": str(windows["end"].iloc[-1].date()),
        "trained_on": cfg.market.model,
        "strategies": {name: {key: float(result.metrics.loc[name, key]) for key in REPORT_KEYS}
                       for name in result.metrics.index},
    }
    if cfg.market.model == "historical":
        report["in_sample_warning"] = ("the run was trained on paths resampled from a historical series; if that "
                                       "is this file, these windows are not out of sample")
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    names = list(result.metrics.index)
    plot_pnl_histograms({n: windows[f"pnl_{n}"].to_numpy() for n in names}, out / "plots" / "pnl_histograms.png",
                        bins=40, title=f"PnL per {steps}-day window of {Path(data).name}")
    # With a premium, the seller's result (PnL + premium): the payoff no longer swamps the hedges' differences.
    premium = windows["premium_bs"].to_numpy() if "premium_bs" in windows else 0.0
    plot_cumulative_pnl(windows.index, {n: windows[f"pnl_{n}"].to_numpy() + premium for n in names},
                        out / "plots" / "cumulative_pnl.png",
                        title="Cumulative PnL after selling at Black-Scholes with realised vol" if "premium_bs" in windows
                        else "Cumulative PnL (premium not included)")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        echo(result.metrics[list(SUMMARY_COLUMNS)].to_string(float_format=lambda x: f"{x:.5g}"))
    echo(f"{len(windows)} windows of {steps} trading days, {report['first_window']} .. {report['last_window_end']}, "
         f"every {stride} days")
    echo(result.note)
    if "in_sample_warning" in report:
        echo("warning: " + report["in_sample_warning"])
    echo(f"wrote {out}")
    return report


def evaluate_job(run_dir: Path, num_paths: int | None = None, echo=print) -> dict:
    """Re-evaluates a trained run (e.g. on more paths): rewrites metrics.csv, report.json, plots."""
    cfg, parts, hedger = load_trained_hedger(run_dir)
    if num_paths is not None:
        cfg = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, paths=num_paths))
    previous = run_dir / "report.json"
    train = json.loads(previous.read_text()).get("train") if previous.is_file() else None
    return evaluate_run(cfg, hedger, parts, run_dir, train, echo)


def evaluate_run(cfg: Config, hedger, parts, out: Path, train: dict | None, echo=print) -> dict:
    """Out-of-sample metrics of the hedger and baselines -> metrics.csv, report.json, plots."""
    import pandas as pd
    import tensorflow as tf

    from deephedge_tf.evaluation import plot_hedges_over_time, plot_pnl_histograms
    from deephedge_tf.evaluation.compare import objective_value, outputs_table

    outputs = evaluate_strategies(cfg, hedger, parts)
    objective = hedger.objective
    table = outputs_table(outputs, lambda o: objective_value(objective, o["pnl"], o["costs"]))
    write_atomic(out / "metrics.csv", table.to_csv())

    ref, method = reference_price(parts.market, parts.derivative)
    hedged = outputs["hedged"]
    report = {
        "objective": objective.description,
        "strategies": {name: {key: float(table.loc[name, key]) for key in REPORT_KEYS} for name in outputs},
        "train": train,
        "price": {"indifference": float(objective.risk(tf.constant(hedged["pnl"]))),
                  "indifference_definition": "risk of the hedged short liability (hedging no liability "
                                             "has risk 0): the premium that makes the position acceptable",
                  "reference": ref, "reference_method": method},
        "evaluation_paths": int(hedged["pnl"].size),
    }
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    if cfg.evaluation.plots:
        plots = out / "plots"
        plot_pnl_histograms({k: v["pnl"] for k, v in outputs.items()}, plots / "pnl_histograms.png")
        plot_hedges_over_time(np.cumsum(hedged["actions"], axis=0), plots / "positions.png",
                              instrument_names=instrument_names(parts))
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        echo(table[list(SUMMARY_COLUMNS)].to_string(float_format=lambda x: f"{x:.5g}"))
    echo(f"(every column: {out / 'metrics.csv'})")
    echo(f"indifference price {report['price']['indifference']:.5g}"
         + (f" (model price {ref:.5g}, {method})" if ref is not None else ""))
    echo(f"wrote {out}")
    return report
