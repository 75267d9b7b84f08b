"""How much a better Levenberg-Marquardt damping could gain: a greedy oracle that sees held-out paths.

At every Gauss-Newton step the oracle tries ``lambda x m`` for each multiplier ``m`` of ``--mults`` (from
the same weights, optimizer state and batch), scores each result (the weights the optimizer hands out,
its average of the iterates) on an independent fresh batch of ``--held-batches`` training-size batches
(a path stream of its own, never the validation paths), and keeps the best; the damping then adapts from
there as usual.  Steps to the target a suite run's Adam set (``--targets``), as
``benchmarks/kfac_to_target.py`` counts them.  A rule that sets ``lambda`` from the batch alone (its
noise, say) cannot beat this oracle, so its gain over the default bounds what such a rule can give.

Usage (repo root, project venv; ~1 minute per seed and multiplier on the Heston CVaR task):
    .venv/bin/python benchmarks/damping_oracle.py --task buehler_heston_cvar --seeds 0 1 \\
        --targets benchmarks/results/suite_adam_averaged --mults 0.3 1 3 10 --held-batches 16
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from kfac_to_target import add_task_arguments, load_task_runs
from optimizer_bench import protocol as benchmark
from deephedge_tf.builders import build_optimizer
from deephedge_tf.config import load_config
from deephedge_tf.training import datasets

HELD_OUT_SEED_OFFSET = 7919  # the held-out stream's seed: seed + this (neither training nor validation paths)


def _snapshot(runner):
    return runner.hedger.get_weights(), [v.numpy() for v in runner.optimizer.variables]


def _restore(runner, snapshot, damping=None):
    weights, state = snapshot
    runner.hedger.set_weights(weights)
    for variable, value in zip(runner.optimizer.variables, state):
        variable.assign(value)
    if damping is not None and damping > 0:  # 0: not adapted yet (the first step derives it from the rows)
        runner.optimizer.lm_damping.assign(damping)


def oracle_run(runner, cfg, parts, weights, steps, eval_every, valid, target, mults, held_batches):
    """``(steps to target or None, chosen multipliers)`` of one greedy-oracle run from ``weights``."""
    runner.reset(weights, None)
    train, _ = datasets(cfg, parts)
    held, _ = datasets(dataclasses.replace(cfg, seed=cfg.seed + HELD_OUT_SEED_OFFSET), parts)
    chosen, drawn = [], 0
    for k in range(steps):
        train.epoch = k // len(train)
        batch = train[k % len(train)]
        if len(mults) > 1:  # one multiplier: the default rule, nothing to score (no held-out paths drawn)
            scoring = []
            for _ in range(held_batches):
                held.epoch = drawn // len(held)
                scoring.append(held[drawn % len(held)])
                drawn += 1
            before = _snapshot(runner)
            lam = float(runner.optimizer.lm_damping.numpy())
            scores = []
            for m in mults:
                _restore(runner, before, lam * m)
                runner.train_step(batch)
                scores.append(runner.validate(scoring)[0])
            best = mults[int(np.argmin(scores))]
            chosen.append(best)
            _restore(runner, before, lam * best)
        runner.train_step(batch)
        if (k + 1) % eval_every == 0 and runner.validate(valid)[0] <= target:
            return k + 1, chosen
    return None, chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_arguments(ap)
    ap.add_argument("--mults", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0],
                    help="damping multipliers tried each step (one value: no oracle, the default rule)")
    ap.add_argument("--held-batches", type=int, default=16, help="held-out batches that score each candidate")
    args = ap.parse_args(argv)
    runs = load_task_runs(ap, args)
    task, targets, parts, inits, valids = runs.task, runs.targets, runs.parts, runs.inits, runs.valids
    cfg0 = load_config(task.config, overrides=benchmark._kfac_overrides(1.0, []))
    runner = benchmark._Runner(cfg0, parts, build_optimizer(cfg0), None, runs.warm, None)
    for s in args.seeds:
        target, adam_steps = targets[s]
        steps, chosen = oracle_run(runner, dataclasses.replace(cfg0, seed=s), parts, inits[s], args.steps,
                                   task.eval_every, valids[s], target, args.mults, args.held_batches)
        logs = np.log10(chosen) if chosen else np.zeros(1)
        print(f"{args.task} seed {s} mults {args.mults}: steps {steps} (Adam {adam_steps}), chosen multiplier: "
              f"mean log10 {logs.mean():+.2f}, share below 1 {np.mean(logs < 0):.2f}, above 1 {np.mean(logs > 0):.2f}, "
              f"rejected {int(runner.optimizer.rejected_steps.numpy())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
