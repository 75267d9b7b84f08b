"""Market and pricing throughput on this machine.

Measures, in one process and one run (so ratios between lines are meaningful):
  * Heston path generation in path-steps per second (QE and exact schemes, float32 and float64),
    and GBM for scale, at the DH-KFAC paper's size (240 steps);
  * floating-grid pricing: building a Heston premium table (direct Fourier prices per second) and
    pricing a batch of paths through the table (premiums per second), against the direct pricer;
  * fixed-grid pricing: building the fixed-strike table of implied volatilities for every decision step
    (seconds) and pricing a batch through it, against the per-path Fourier pricer.

Usage (from the repo root, in the project venv):
    .venv/bin/python benchmarks/bench_market.py [--quick] [--write BENCHMARKS.md]

Each timing is the best of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import sys
import time


import numpy as np
import tensorflow as tf

import report
from deephedge_tf.market.gbm import simulate_gbm
from deephedge_tf.market.heston import simulate_heston
from deephedge_tf.pricing.heston import heston_price_tf
from deephedge_tf.pricing.tables import HestonPremiumTable, HestonStrikeTable

HESTON = dict(v0=0.0625, kappa=8.0, theta=0.0625, xi=1.0, rho=-0.7)
# The DH-KFAC floating grid (maturities in trading days, moneyness per maturity).
GRID = [(m, t) for t, ms in ((10, (0.95, 0.99, 1.0, 1.01, 1.05)), (20, (0.91, 0.97, 1.0, 1.03, 1.09)),
                              (40, (0.91, 1.0, 1.09)), (80, (0.85, 1.0, 1.15)), (120, (0.85, 1.0, 1.15)))
        for m in ms]
DT = 1 / 250


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (graph building, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_paths(paths: int, steps: int, repeats: int) -> list[tuple[str, float, str]]:
    rows = []
    cases = [
        ("Heston QE, float32", lambda: simulate_heston(paths, steps, DT, scheme="qe", dtype=tf.float32, **HESTON)),
        ("Heston QE, float64", lambda: simulate_heston(paths, steps, DT, scheme="qe", dtype=tf.float64, **HESTON)),
        ("Heston exact, float32",
         lambda: simulate_heston(paths, steps, DT, scheme="exact", dtype=tf.float32, **HESTON)),
        ("GBM, float32", lambda: simulate_gbm(paths, steps, DT, sigma=0.25, dtype=tf.float32)),
    ]
    for name, fn in cases:
        t = best_time(lambda: fn().spot.numpy(), repeats)
        rows.append((f"{name}: {paths} paths x {steps} steps", paths * steps / t, "path-steps/s"))
    return rows


def bench_pricing(paths: int, steps: int, repeats: int) -> list[tuple[str, float, str]]:
    moneyness = [m for m, _ in GRID]
    years = [t * DT for _, t in GRID]
    rows = []
    build = best_time(lambda: HestonPremiumTable(moneyness, years, **HESTON), repeats)
    table = HestonPremiumTable(moneyness, years, **HESTON)
    n_nodes = len(table.variance_nodes)
    rows.append((f"premium table build: {len(GRID)} options x {n_nodes} variance nodes",
                 len(GRID) * n_nodes / build, "Fourier prices/s"))
    variance = simulate_heston(paths, steps, DT, **HESTON).variance[:-1]  # [T, B]
    lookup = tf.function(table.__call__)
    t = best_time(lambda: lookup(variance).numpy(), repeats)
    rows.append((f"table lookup: {steps} steps x {paths} paths x {len(GRID)} options",
                 steps * paths * len(GRID) / t, "premiums/s"))
    # Direct Fourier pricing of a sample of the same points, to show what the table saves.
    n_direct = 20000
    v = tf.reshape(tf.cast(variance, tf.float64), [-1])[:n_direct]
    m = tf.constant(moneyness, tf.float64)
    tau = tf.constant(years, tf.float64)
    is_call = tf.constant(np.asarray(moneyness) >= 1.0)
    t = best_time(lambda: heston_price_tf(1.0, m, tau, v[:, None], HESTON["kappa"], HESTON["theta"],
                                          HESTON["xi"], HESTON["rho"], is_call=is_call).numpy(), repeats)
    rows.append((f"direct Fourier pricer: {n_direct} variances x {len(GRID)} options",
                 n_direct * len(GRID) / t, "premiums/s"))
    return rows


def bench_fixed_grid(paths: int, steps: int, repeats: int) -> list[tuple[str, float, str]]:
    """Five fixed strikes expiring at the horizon, priced at every decision step of Heston paths."""
    strikes = tf.constant([0.9, 0.95, 1.0, 1.05, 1.1], tf.float32)
    is_call = tf.constant([False, False, True, True, True])
    maturities = (steps - np.arange(steps)) * DT
    start = time.perf_counter()
    table = HestonStrikeTable(maturities, v0=HESTON["v0"], kappa=HESTON["kappa"], theta=HESTON["theta"],
                              xi=HESTON["xi"], rho=HESTON["rho"])
    build = time.perf_counter() - start
    paths_ = simulate_heston(paths, steps, DT, **HESTON)
    spot, variance = paths_.spot[:-1, :, None], paths_.variance[:-1, :, None]          # [T, B, 1]
    tau = tf.constant(maturities, tf.float32)[:, None, None]
    lookup = tf.function(table.__call__)
    t = best_time(lambda: lookup(spot, strikes, tau, variance, is_call).numpy(), repeats)
    rows = [(f"fixed-strike table build: {steps} maturities x 32 x 48 nodes", build, "s (once per grid)"),
            (f"fixed-strike table: {steps} steps x {paths} paths x 5 strikes", steps * paths * 5 / t, "prices/s")]
    n = 256  # the per-path Fourier pricer on the first paths only (it is slow)
    t = best_time(lambda: heston_price_tf(tf.cast(spot[:, :n], tf.float64), tf.cast(strikes, tf.float64),
                                          tf.cast(tau, tf.float64), tf.cast(variance[:, :n], tf.float64),
                                          HESTON["kappa"], HESTON["theta"], HESTON["xi"], HESTON["rho"],
                                          is_call=is_call).numpy(), 1)
    rows.append((f"per-path Fourier pricer: {steps} steps x {n} paths x 5 strikes", steps * n * 5 / t, "prices/s"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", metavar="FILE", help="append a results section to FILE")
    args = ap.parse_args(argv)
    paths, steps = (1024, 30) if args.quick else (8192, 240)
    rows = (bench_paths(paths, steps, args.repeats) + bench_pricing(paths, 30 if args.quick else 60, args.repeats)
            + bench_fixed_grid(paths, 30 if args.quick else 60, args.repeats))
    cmd = "python benchmarks/bench_market.py" + (" --quick" if args.quick else "")
    text = report.section("Market and pricing throughput", cmd, f"best of {args.repeats} after a warm-up.",
                          ["what", "throughput", "unit"], ["---", "---:", "---"],
                          [[name, f"{value:,.0f}", unit] for name, value, unit in rows])
    report.publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
