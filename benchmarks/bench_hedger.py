"""Compile time and step time of the hedger's train step, by time loop and optimizer.

With ``training.time_loop: python`` the hedger unrolls the policy over T in Python inside the traced
train step: tracing/compilation time grows with T.  ``graph`` runs the decisions as one
``tf.while_loop`` (curvature capture included).  This measures, for several T, the first call (trace +
graph optimisation + one step) and the steady-state time per step, with the DH-KFAC paper's policy (4
residual RMSNorm + LSTM blocks of width 32), for Adam and DH-KFAC with its defaults.

``--config FILE`` measures a task config instead (its horizon, policy, hedges and batch size; ``--set``
overrides any key), e.g. the optimizer suite's band task with both loops.

Usage (repo root, project venv):
    .venv/bin/python benchmarks/bench_hedger.py [--steps 30 120 240] [--batch 1024] \
        [--time-loop python graph] [--optimizer adam dhkfac] [--write BENCHMARKS.md]
    .venv/bin/python benchmarks/bench_hedger.py --config configs/suite/ntb_entropic_gbm.yaml \
        --time-loop python graph --optimizer adam dhkfac [--set training.kfac.preconditioner=kronecker]
"""

from __future__ import annotations

import argparse
import sys
import time

import keras
import tensorflow as tf

import report
from deephedge_tf.builders import build_optimizer
from deephedge_tf.config import from_dict, load_config
from deephedge_tf.features import make_batch
from deephedge_tf.training import build_parts, make_hedger


def measure(steps: int, batch, repeats: int, jit: bool, time_loop: str = "python",
            optimizer: str = "adam", config=None, overrides=()) -> tuple[float, float]:
    chosen = [f"training.time_loop={time_loop}", f"training.optimizer={optimizer}", *overrides]
    if config is None:
        cfg = from_dict({}, ["market.model=gbm", f"time.steps={steps}", "time.dt=0.004", "objective.gamma=1000.0",
                             "policy.num_blocks=4", "policy.width=32", *chosen])
    else:
        cfg = load_config(config, chosen)
    batch = (1024 if config is None else cfg.training.batch_size) if batch is None else batch
    parts = build_parts(cfg)
    data = make_batch(parts.market.simulate(batch), parts.derivative, parts.instruments)
    hedger = make_hedger(cfg, parts, compile=False)
    opt = keras.optimizers.Adam(1e-3) if optimizer == "adam" else build_optimizer(cfg)
    hedger.compile(optimizer=opt, jit_compile=jit)
    hedger.build_from_batch(data)
    step = tf.function(hedger.train_step, jit_compile=jit)
    t0 = time.perf_counter()
    float(step(data)["loss"])
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(step(data)["loss"])
        times.append(time.perf_counter() - t0)
    return first, min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[30, 120, 240])
    ap.add_argument("--batch", type=int, default=None, help="paths per batch (default 1024, or the config's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jit", action="store_true", help="also measure jit_compile=True (slow on CPU)")
    ap.add_argument("--time-loop", nargs="+", default=["python"], choices=["python", "graph"])
    ap.add_argument("--optimizer", nargs="+", default=["adam"], choices=["adam", "dhkfac"])
    ap.add_argument("--config", metavar="FILE", help="a task config instead of the built-in policy (ignores --steps)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args(argv)
    if args.config is not None:
        args.steps = [load_config(args.config, args.set).time.steps]
    rows = []
    for t in args.steps:
        for optimizer in args.optimizer:
            for loop in args.time_loop:
                for jit in ((False, True) if args.jit else (False,)):
                    first, per_step = measure(t, args.batch, args.repeats, jit, loop, optimizer, args.config,
                                              args.set)
                    rows.append((t, optimizer, loop, jit, first, per_step))
                    print(f"T={t} {optimizer} time_loop={loop} jit={jit}: first call {first:.1f} s, "
                          f"step {per_step * 1e3:.0f} ms", flush=True)
    source = ["--config", args.config] if args.config else ["--steps", *map(str, args.steps)]
    cmd = "python benchmarks/bench_hedger.py " + " ".join(
        source + ([] if args.batch is None else ["--batch", str(args.batch)]) + ["--time-loop", *args.time_loop,
         "--optimizer", *args.optimizer] + (["--set", *args.set] if args.set else []) + (["--jit"] if args.jit else []))
    text = report.section(
        "Hedger train step: compile and step time", cmd,
        (f"{args.config} (its policy, hedges and batch size{'; ' + ', '.join(args.set) if args.set else ''})"
         if args.config else f"recurrent policy 4 x 32, spot hedge, B = {args.batch or 1024}")
        + f"; DH-KFAC with its defaults; step time best of {args.repeats}.",
        ["T", "optimizer", "time loop", "XLA", "first call (trace + compile + 1 step)", "step", "first / step"],
        ["---:", "---", "---", "---", "---:", "---:", "---:"],
        [[t, o, lp, "on" if j else "off", f"{f:.1f} s", f"{s * 1e3:.0f} ms", f"{f / s:.0f}"]
         for t, o, lp, j, f, s in rows])
    report.publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
