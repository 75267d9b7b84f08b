"""Optimizer benchmark: ``deephedge benchmark kfac-vs-adam --config CONFIG --out DIR``.

How many training steps, and how much wall time, DH-KFAC and a tuned Adam need to reach the same
validation-loss target on the same paths and seeds.  Procedure:

1. **Adam learning-rate sweep** (skipped with a single ``--lrs`` value): each peak learning rate in
   ``--lrs`` trains ``--sweep-steps`` steps on the first seed; the best final validation loss picks the
   rate (a non-finite loss counts as +inf).  Every Adam run uses the config's warm-up, exponential
   decay and ``clipnorm`` (``training.*``) around that peak.
2. **Adam, full budget**, per seed: ``--adam-steps`` steps, validation loss every ``--eval-every`` steps.
   The seed's **target** is ``--target-factor`` x the best validation loss of this run (per seed: the
   target is then reached by Adam in every seed, and both optimizers of a seed are compared on the same
   validation set).
3. **DH-KFAC**, per seed: the config with ``training.optimizer = dhkfac``, ``training.kfac.max_step =
   --kfac-lr`` (its maximum step size eta_max; 1 is the damped Newton step; Adam's schedule and clipping
   do not apply to it), then ``--kfac-set`` overrides; it stops at the first evaluation at or below the seed's
   target, or after ``--kfac-steps``.
4. **Other DH-KFAC rules** (optional, ``--compare NAME KEY=VALUE ...``, repeatable): each named rule is
   phase 3 again with its own overrides on top of ``--kfac-set``, against the same targets, in the same
   run (so that its ratios are measured beside the default's, e.g. the paper's algorithm:
   ``--compare paper training.kfac.preconditioner=kronecker training.kfac.ggn_mode=exact``).
   Results: ``compare[NAME]``.

Both optimizers of a seed start from the same initial weights and draw the same training batches:
step ``k`` uses batch ``k % n`` of epoch ``k // n`` of the config's training stream (``cfg.seed``,
``n = training.batches_per_epoch``), exactly what ``fit_hedger`` feeds.  With
``training.fresh_paths`` every step sees new paths (no training set to over-fit); without it the fixed
training set must hold at least :data:`MIN_FIXED_TRAINING_PATHS` paths.

The validation loss is the objective on the whole validation set of ``datasets(cfg)`` (seed
``cfg.seed + 1``, ``training.validation_paths`` rounded up to whole batches), so it is a deterministic
function of the weights; the weights scored are those the optimizer hands out (its average of the
iterates where it keeps one, ``use_ema``: DH-KFAC's Gauss-Newton default; Adam keeps Keras' default, no
average), and a run ends on them as ``fit`` does.  Its Monte Carlo standard error (from the spread of the per-batch losses) is
recorded next to it.  Both optimizers are scored on the same validation paths, so most of that error is
common to both and cancels when their losses are compared: the noise that decides "reached the target"
is that of the difference.  After each DH-KFAC run its weights (where it stopped) and Adam's best
weights are scored on the same chunks of validation paths (:func:`paired_difference`), and the target's
margin ``(target_factor - 1) x Adam's best`` is reported in units of both standard errors
(``target_margin_in_se``, ``target_margin_in_paired_se``).

Timing: each optimizer's train step is traced once per benchmark and reused across seeds and learning
rates (weights and optimizer state are restored between runs); that first call (trace + compile + one
step) is reported as ``first_call_s`` and excluded from the runs.  ``wall_s`` of a run is the time of
its training steps (path simulation + train step), without the validation passes.
``steps_to_target`` and ``wall_s_to_target`` are those at the first evaluation at or below the target,
so their resolution is ``--eval-every`` steps for both optimizers.

Writes ``DIR/results.json`` and ``DIR/learning_curves.png`` (validation loss vs steps and vs wall
time, both optimizers, all seeds, with the targets).  Programmatic use: :func:`kfac_vs_adam`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from deephedge_tf.config import Config, load_config
from deephedge_tf.errors import ConfigError, DeepHedgeError
from deephedge_tf.files import write_atomic

# Below this many paths a fixed training set can be over-fitted within the budgets used here.
MIN_FIXED_TRAINING_PATHS = 65536

# Validation paths per sample of the paired standard error (see paired_difference).
PAIRED_CHUNK_PATHS = 256
PAIRED_MIN_CHUNKS = 8

# The name of the DH-KFAC runs with the optimizer's defaults (plus --kfac-set); --compare adds others.
DEFAULT_RULE = "default"

# The goal this benchmark checks: DH-KFAC reaches the target in at most this fraction of Adam's steps.
GOAL_STEP_FRACTION = 0.25

# The budgets of the configs/cliquet_small.yaml run in BENCHMARKS.md (about 30 minutes on 2 CPU cores).
# Adam's 800 steps are four halvings of its learning rate (decay 0.5 per 200 steps): its validation loss
# is flat by then, so its best loss -- the target -- is that of a converged run, not of a cut-off one.
DEFAULTS = dict(seeds=(0, 1, 2), adam_steps=800, kfac_steps=300, sweep_steps=200, eval_every=10,
                target_factor=1.01, lrs=(1e-3, 3e-3, 1e-2), kfac_lr=1.0)


# -- command line ----------------------------------------------------------------------------------

def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``benchmark kfac-vs-adam ...`` to an argparse ``subparsers`` object; returns the parser
    of ``benchmark``.  Dispatch the parsed arguments with :func:`run_benchmark`."""
    bench = subparsers.add_parser("benchmark", help="optimizer benchmarks (steps and wall time to a target)")
    sub = bench.add_subparsers(dest="benchmark_command", required=True)
    p = sub.add_parser("kfac-vs-adam", help="DH-KFAC vs a tuned Adam to a validation-loss target",
                       description="Adam (learning rate swept, warm-up, decay, clipping) and DH-KFAC train "
                       "on the same paths and seeds; the target is --target-factor x Adam's best validation "
                       "loss per seed; writes steps and wall time to the target, per-step times and "
                       "learning curves.  See the optimizer_bench.protocol module docstring (benchmarks/).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/cliquet_small.yaml)")
    p.add_argument("--out", required=True, help="output directory (created): results.json, learning_curves.png")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULTS["seeds"]),
                   help="seeds (config `seed`: initial weights and path streams) compared one by one")
    p.add_argument("--adam-steps", type=int, default=DEFAULTS["adam_steps"],
                   help="Adam's full budget per seed (its best loss there sets the target)")
    p.add_argument("--kfac-steps", type=int, default=DEFAULTS["kfac_steps"],
                   help="DH-KFAC's budget per seed (it stops earlier at the target)")
    p.add_argument("--sweep-steps", type=int, default=DEFAULTS["sweep_steps"],
                   help="steps of each Adam learning-rate sweep run (first seed)")
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"],
                   help="training steps between validation losses (both optimizers)")
    p.add_argument("--target-factor", type=float, default=DEFAULTS["target_factor"],
                   help="target = this x the best validation loss of Adam's full run, per seed (> 1)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULTS["lrs"]),
                   help="Adam peak learning rates swept (one value: no sweep)")
    p.add_argument("--kfac-lr", type=float, default=DEFAULTS["kfac_lr"],
                   help="DH-KFAC's maximum step size eta_max (training.kfac.max_step of its runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both optimizers (repeatable)")
    p.add_argument("--kfac-set", dest="kfac_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the DH-KFAC runs only, e.g. training.kfac.damping=0.3 (repeatable)")
    add_compare_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    from optimizer_bench.suite import add_suite_parser

    add_suite_parser(sub)
    return bench


def run_benchmark(args) -> int:
    """Runs the benchmark selected by parsed arguments; exit status 0, or 2 on a usage or config error
    (message on stderr), like the other ``deephedge`` commands."""
    if getattr(args, "benchmark_command", None) == "suite":
        from optimizer_bench.suite import run_suite_command

        return run_suite_command(args)
    if getattr(args, "benchmark_command", None) != "kfac-vs-adam":
        print(f"deephedge: error: unknown benchmark {getattr(args, 'benchmark_command', None)!r}", file=sys.stderr)
        return 2
    try:
        results = kfac_vs_adam(
            args.config, args.out, seeds=args.seeds, adam_steps=args.adam_steps, kfac_steps=args.kfac_steps,
            sweep_steps=args.sweep_steps, eval_every=args.eval_every, target_factor=args.target_factor,
            lrs=args.lrs, kfac_lr=args.kfac_lr, overrides=args.overrides, kfac_overrides=args.kfac_overrides,
            compare=compare_rules(args.compare), log=None if args.quiet else _stderr)
    except DeepHedgeError as e:
        print(f"deephedge: error: {e}", file=sys.stderr)
        return 2
    print(_summary_text(results))
    return 0


def main(argv=None) -> int:
    """``python -m optimizer_bench.protocol kfac-vs-adam ...`` from benchmarks/ (the same as ``deephedge
    benchmark ...``)."""
    parser = argparse.ArgumentParser(prog="python -m optimizer_bench.protocol")
    sub = parser.add_subparsers(dest="command", required=True)
    add_benchmark_parser(sub)
    # Accept the arguments with or without the leading "benchmark".
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "benchmark":
        argv = ["benchmark"] + argv
    return run_benchmark(parser.parse_args(argv))


def add_compare_argument(p) -> None:
    """``--compare NAME KEY=VALUE ...`` (repeatable): another DH-KFAC rule run against the same targets."""
    p.add_argument("--compare", action="append", nargs="+", default=[], metavar="NAME_OR_KEY=VALUE",
                   help="another DH-KFAC rule, run beside the default against the same Adam targets: a name, "
                   "then its config overrides (repeatable), e.g. --compare paper "
                   "training.kfac.preconditioner=kronecker training.kfac.ggn_mode=exact")


def compare_rules(groups) -> dict:
    """``--compare`` groups ``[[NAME, KEY=VALUE, ...], ...]`` as ``{NAME: [KEY=VALUE, ...]}``, checked."""
    names = [group[0] for group in groups]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError("--compare", repeated, "each rule name once")
    return _checked_compare({group[0]: list(group[1:]) for group in groups})


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- validation --------------------------------------------------------------------------------------

def _int_at_least(key, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(key, value, f"an integer >= {lo}")
    return int(value)


def _positive(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)


def _check_arguments(seeds, adam_steps, kfac_steps, sweep_steps, eval_every, target_factor, lrs, kfac_lr):
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("--seeds", seeds, "one or more seeds (integers >= 0)")
    seeds = [_int_at_least("--seeds", s, 0) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", seeds, "distinct seeds")
    adam_steps = _int_at_least("--adam-steps", adam_steps, 1)
    kfac_steps = _int_at_least("--kfac-steps", kfac_steps, 1)
    sweep_steps = _int_at_least("--sweep-steps", sweep_steps, 1)
    eval_every = _int_at_least("--eval-every", eval_every, 1)
    if eval_every > min(adam_steps, kfac_steps):
        raise ConfigError("--eval-every", eval_every, f"<= --adam-steps and --kfac-steps "
                          f"({min(adam_steps, kfac_steps)}): each run needs an evaluation")
    target_factor = _positive("--target-factor", target_factor)
    if not target_factor > 1.0:
        raise ConfigError("--target-factor", target_factor, "a number > 1 (the target must lie above the "
                          "best loss Adam reaches, by more than the validation noise)")
    lrs = list(lrs)
    if not lrs:
        raise ConfigError("--lrs", lrs, "one or more learning rates > 0")
    lrs = [_positive("--lrs", lr) for lr in lrs]
    if len(set(lrs)) != len(lrs):
        raise ConfigError("--lrs", lrs, "distinct learning rates")
    kfac_lr = _positive("--kfac-lr", kfac_lr)
    return seeds, adam_steps, kfac_steps, sweep_steps, eval_every, target_factor, lrs, kfac_lr


def _check_protocol(cfg: Config) -> None:
    """The benchmark's conditions on the config (raised before any tensor work)."""
    t = cfg.training
    if not t.fresh_paths and t.batch_size * t.batches_per_epoch < MIN_FIXED_TRAINING_PATHS:
        raise ConfigError("training.fresh_paths", False,
                          f"true, or a fixed training set of at least {MIN_FIXED_TRAINING_PATHS} paths "
                          f"(batch_size * batches_per_epoch = {t.batch_size * t.batches_per_epoch}): "
                          "a smaller fixed set can be over-fitted, which would bias the comparison")
    if t.validation_paths < 2:
        raise ConfigError("training.validation_paths", t.validation_paths, ">= 2")


# Training keys that may differ between the two optimizers' runs; anything else (paths, batch size,
# policy, objective, market) must be the same, or the comparison is not on the same task.
_OPTIMIZER_KEYS = ("optimizer", "learning_rate", "warmup_steps", "decay_rate", "decay_steps", "clipnorm",
                   "ema_momentum", "kfac", "jit_compile")


def _check_same_task(base: Config, kfac: Config, kfac_overrides, flag: str = "--kfac-set") -> None:
    keep = {key: getattr(base.training, key) for key in _OPTIMIZER_KEYS}
    same_training = dataclasses.replace(kfac.training, **keep) == base.training
    if not same_training or dataclasses.replace(kfac, training=base.training) != base:
        raise ConfigError(flag, list(kfac_overrides),
                          f"overrides of the optimizer only (training.{{{', '.join(_OPTIMIZER_KEYS)}}}); "
                          "use --set for the task, paths and policy, which both optimizers share")


def resolve_rules(config, overrides: Sequence[str], kfac_lr: float, kfac_overrides: Sequence[str],
                  compare: Optional[dict]) -> tuple:
    """``(Adam's config, {rule: DH-KFAC config}, {rule: all its overrides}, {compared rule: its own
    overrides})`` of a benchmark: the default rule (``--kfac-set``) and each ``compare`` rule on top of
    it, every one checked (protocol, same task, still DH-KFAC).  Raises :class:`ConfigError` naming the
    flag and rule; nothing trains before."""
    compare = _checked_compare(compare)
    overrides, kfac_overrides = list(overrides), list(kfac_overrides)
    base = load_config(config, overrides)
    base = dataclasses.replace(base, training=dataclasses.replace(base.training, optimizer="adam"))
    _check_protocol(base)
    rule_overrides = {DEFAULT_RULE: kfac_overrides}
    rule_overrides.update({name: kfac_overrides + extra for name, extra in compare.items()})
    rule_cfgs = {}
    for name, extra in rule_overrides.items():
        flag = "--kfac-set" if name == DEFAULT_RULE else f"--compare {name}"
        cfg = load_config(config, overrides + _kfac_overrides(kfac_lr, extra))
        _check_protocol(cfg)
        if cfg.training.optimizer != "dhkfac":
            raise ConfigError(flag, extra, "overrides that keep training.optimizer = dhkfac")
        _check_same_task(base, cfg, extra, flag)
        rule_cfgs[name] = cfg
    return base, rule_cfgs, rule_overrides, compare


# Names a --compare rule may not take: the default rule's, and the first_call keys of the results.
_RESERVED_RULES = (DEFAULT_RULE, "adam", "dhkfac")


def _checked_compare(compare: Optional[dict]) -> dict:
    """``compare`` as ``{name: [KEY=VALUE, ...]}``, each name and override list checked."""
    checked = {}
    for name, extra in (compare or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED_RULES:
            raise ConfigError("--compare", name, f"a rule name (letters, digits, _) other than "
                              f"{', '.join(_RESERVED_RULES)}, followed by its KEY=VALUE overrides")
        if isinstance(extra, str) or not extra or any(not isinstance(o, str) or "=" not in o for o in extra):
            raise ConfigError(f"--compare {name}", extra, "one or more KEY=VALUE overrides after the name")
        checked[name] = list(extra)
    return checked


def _kfac_overrides(kfac_lr: float, extra: Sequence[str]) -> list[str]:
    # DH-KFAC takes no Adam schedule or clipping (training.kfac.max_step caps its step).  --kfac-set wins.
    return ["training.optimizer=dhkfac", f"training.kfac.max_step={kfac_lr!r}", "training.ema_momentum=null", *extra]


# -- one optimizer, traced once ----------------------------------------------------------------------

class _Runner:
    """A hedger and its traced train / forward functions for one optimizer kind.

    Runs of other seeds or learning rates restore the initial weights and optimizer state instead of
    building a new model: the train step (0.5 to 2 minutes to trace for T = 60 on 2 CPU cores) is
    traced once.
    """

    def __init__(self, cfg: Config, parts, optimizer, schedule, warmup_batch, log):
        import tensorflow as tf

        from deephedge_tf.training import make_hedger

        self.cfg, self.schedule = cfg, schedule
        self.hedger = make_hedger(cfg, parts, compile=False)
        jit = "auto" if cfg.training.jit_compile is None else cfg.training.jit_compile
        self.hedger.compile(optimizer=optimizer, jit_compile=jit)
        self.hedger.build_from_batch(warmup_batch)
        self.optimizer = self.hedger.optimizer
        self.initial_optimizer_state = [v.numpy() for v in self.optimizer.variables]
        self.initial_weights = self.hedger.get_weights()
        # The same tf.function settings as Keras' own train function (Trainer.make_train_function).
        self.train_step = tf.function(self.hedger.train_step, jit_compile=bool(self.hedger.jit_compile),
                                      reduce_retracing=True)

        def forward(batch):
            out = self.hedger.unroll(batch, training=False)
            return out["pnl"], out["costs"]

        self.forward = tf.function(forward, reduce_retracing=True)
        t0 = time.perf_counter()
        float(self.train_step(warmup_batch)["loss"])
        self.first_call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.forward(warmup_batch)[0].numpy()
        self.first_forward_s = time.perf_counter() - t0
        if len(self.optimizer.variables) != len(self.initial_optimizer_state):
            raise AssertionError("the optimizer created variables in its first step; its state cannot be reset")
        if log:
            log(f"  traced {self.optimizer.name}: first train step {self.first_call_s:.1f} s, "
                f"first forward {self.first_forward_s:.1f} s")

    def reset(self, weights, peak: Optional[float]) -> None:
        """Initial state of a new run: ``weights``, fresh optimizer state, metrics, peak learning rate."""
        self.hedger.set_weights(weights)
        for v, value in zip(self.optimizer.variables, self.initial_optimizer_state):
            v.assign(value)
        self.hedger.reset_metrics()
        if peak is not None:
            self.schedule.peak.assign(peak)

    def _outputs(self, batches):
        """(per-batch (pnl, costs), all pnl, all costs) of the current weights on ``batches``."""
        import tensorflow as tf

        outs = [self.forward(b) for b in batches]
        return outs, tf.concat([o[0] for o in outs], axis=0), tf.concat([o[1] for o in outs], axis=0)

    def validate(self, batches) -> tuple[float, float]:
        """(objective on all validation paths, its standard error from the per-batch losses), of the
        weights the optimizer hands out: its average of the iterates when it keeps one (``use_ema``)."""
        from deephedge_tf.optimizers.averaging import averaged_weights

        with averaged_weights(self.hedger):
            outs, pnl, costs = self._outputs(batches)
        # Hedger._loss is the training loss (objective plus any layer losses): the same quantity fit's
        # val_loss reports, here on the pooled set rather than averaged over batches.
        loss = float(self.hedger._loss({"pnl": pnl, "costs": costs}))
        if len(outs) < 2:
            return loss, math.nan
        per_batch = np.array([float(self.hedger._loss({"pnl": p, "costs": c})) for p, c in outs])
        return loss, float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch)))

    def output_weights(self) -> list:
        """The hedger's weights as the optimizer hands them out (its average of the iterates, if any)."""
        from deephedge_tf.optimizers.averaging import averaged_weights

        with averaged_weights(self.hedger):
            return self.hedger.get_weights()

    def chunk_losses(self, batches) -> np.ndarray:
        """The objective on consecutive chunks of :func:`paired_chunk_paths` validation paths (a
        trailing remainder is dropped): the samples of :func:`paired_difference`."""
        _, pnl, costs = self._outputs(batches)
        chunk = paired_chunk_paths(int(pnl.shape[0]))
        n = int(pnl.shape[0]) // chunk
        return np.array([float(self.hedger._loss({"pnl": pnl[i * chunk:(i + 1) * chunk],
                                                  "costs": costs[i * chunk:(i + 1) * chunk]}))
                         for i in range(n)])


def paired_chunk_paths(n_paths: int) -> int:
    """Paths per chunk of the paired comparison: :data:`PAIRED_CHUNK_PATHS`, fewer for small
    validation sets so that there are at least :data:`PAIRED_MIN_CHUNKS` chunks."""
    return max(1, min(PAIRED_CHUNK_PATHS, n_paths // PAIRED_MIN_CHUNKS))


def paired_difference(losses_a: np.ndarray, losses_b: np.ndarray) -> tuple[float, float]:
    """(mean of ``losses_b - losses_a``, its standard error) over chunks of the same validation paths.

    Both optimizers are scored on the same paths, so most of the Monte Carlo error of the validation
    set is common to both and cancels in their difference: this paired standard error, not the
    standard error of one loss, is the noise against which "reached the target" is decided.
    """
    d = np.asarray(losses_b, dtype=float) - np.asarray(losses_a, dtype=float)
    if d.size < 2:
        return float(d.mean()) if d.size else math.nan, math.nan
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def _make_scaled_schedule(cfg: Config):
    """Adam's config schedule (warm-up, exponential decay) with a peak held in a variable, so that the
    sweep changes the learning rate without re-tracing the train step."""
    import keras
    import tensorflow as tf

    from deephedge_tf.training import WarmupExponentialDecay

    class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, shape):
            self.shape = shape
            self.peak = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="peak_learning_rate")

        def __call__(self, step):
            return self.peak * self.shape(step)

    t = cfg.training
    return ScaledSchedule(WarmupExponentialDecay(1.0, t.warmup_steps, t.decay_rate, t.decay_steps))


def _adam(cfg: Config, schedule):
    import keras

    from deephedge_tf.builders import adam_keywords

    # As builders.adam_optimizer's Adam (clipping, average of the iterates), with the variable-peak schedule.
    return keras.optimizers.Adam(learning_rate=schedule, **adam_keywords(cfg))


def _initial_weights(cfg: Config, parts, batch):
    """The weights ``make_hedger`` initialises for ``cfg.seed`` (the same for both optimizers)."""
    from deephedge_tf.training import make_hedger

    hedger = make_hedger(cfg, parts, compile=False)
    hedger.build_from_batch(batch)
    return hedger.get_weights()


def _train(runner: _Runner, cfg: Config, parts, weights, peak, steps: int, eval_every: int, valid_batches,
           target: Optional[float] = None, log=None, label: str = "", keep_best: bool = False) -> dict:
    """One run from ``weights``; evaluates every ``eval_every`` steps and at the end; stops early at
    ``target`` (if given) or at a non-finite validation loss.  ``keep_best``: the weights of the best
    evaluation are returned under ``"best_weights"`` (not JSON; pop it before writing)."""
    from deephedge_tf.training import datasets

    runner.reset(weights, peak)
    train, _ = datasets(cfg, parts)
    n = len(train)
    val, se = runner.validate(valid_batches)
    curve = [dict(step=0, wall_s=0.0, val_loss=val, val_loss_se=se, train_loss=None)]
    best_val, best_weights = val, (runner.output_weights() if keep_best else None)
    step_s, data_s = [], []
    skipped = 0.0
    wall = 0.0
    stopped = "budget"
    for k in range(steps):
        t0 = time.perf_counter()
        train.epoch = k // n  # what SyncEpoch does in fit: step k sees the paths fit would feed it
        batch = train[k % n]
        t1 = time.perf_counter()
        logs = runner.train_step(batch)
        train_loss = float(logs["loss"])  # also waits for the step to finish
        t2 = time.perf_counter()
        data_s.append(t1 - t0)
        step_s.append(t2 - t1)
        wall += t2 - t0
        if (k + 1) % eval_every == 0 or k + 1 == steps:
            skipped += float(logs["skipped_steps"])
            val, se = runner.validate(valid_batches)
            point = dict(step=k + 1, wall_s=wall, val_loss=val, val_loss_se=se, train_loss=train_loss)
            if hasattr(runner.optimizer, "step_size"):  # DH-KFAC's eta of the last step (diagnostic)
                point["step_size"] = float(runner.optimizer.step_size.numpy())
            curve.append(point)
            runner.hedger.reset_metrics()  # train_loss: mean over the steps since the last evaluation
            if log:
                eta = f", eta {point['step_size']:.3g}" if "step_size" in point else ""
                log(f"  {label} step {k + 1}: val {val:.6g} (se {se:.2g}), train {train_loss:.6g}, "
                    f"{wall:.1f} s{eta}")
            if not math.isfinite(val):
                stopped = "diverged"
                break
            if keep_best and not val >= best_val:  # also replaces a non-finite initial loss
                best_val, best_weights = val, runner.output_weights()
            if target is not None and val <= target:
                stopped = "target"
                break
    # As fit ends: the model takes the weights the optimizer hands out (its average, if it keeps one).
    runner.optimizer.finalize_variable_values(runner.hedger.trainable_variables)
    if hasattr(runner.optimizer, "uphill_steps"):  # DH-KFAC steps its exact model blocked
        extra = dict(uphill_steps=int(runner.optimizer.uphill_steps.numpy()))
    else:
        extra = {}
    result = dict(curve=curve, steps_run=len(step_s), wall_s=wall, stopped=stopped, skipped_steps=int(skipped),
                  optimizer_iterations=int(runner.optimizer.iterations.numpy()),
                  step_time_s=_time_stats(step_s), data_time_s=_time_stats(data_s), **extra)
    if keep_best:
        result["best_weights"] = best_weights
    return result


def _time_stats(xs) -> dict:
    if not xs:
        return dict(median=None, mean=None, min=None, max=None)
    a = np.asarray(xs)
    return dict(median=float(np.median(a)), mean=float(a.mean()), min=float(a.min()), max=float(a.max()))


def first_at_or_below(curve, target: float) -> Optional[dict]:
    """The first point of ``curve`` (after step 0) whose validation loss is at or below ``target``."""
    for point in curve[1:]:
        if point["val_loss"] is not None and math.isfinite(point["val_loss"]) and point["val_loss"] <= target:
            return point
    return None


def _finite_or_none(x):
    return x if x is not None and math.isfinite(x) else None


def _with_target(run: dict, target: float) -> dict:
    hit = first_at_or_below(run["curve"], target)
    run["target"] = target
    run["reached"] = hit is not None
    run["steps_to_target"] = None if hit is None else hit["step"]
    run["wall_s_to_target"] = None if hit is None else hit["wall_s"]
    finite = [p["val_loss"] for p in run["curve"] if math.isfinite(p["val_loss"])]
    run["best_val_loss"] = min(finite) if finite else None
    return run


# -- the benchmark ------------------------------------------------------------------------------------

def kfac_vs_adam(config, out, *, seeds=DEFAULTS["seeds"], adam_steps=DEFAULTS["adam_steps"],
                 kfac_steps=DEFAULTS["kfac_steps"], sweep_steps=DEFAULTS["sweep_steps"],
                 eval_every=DEFAULTS["eval_every"], target_factor=DEFAULTS["target_factor"],
                 lrs=DEFAULTS["lrs"], kfac_lr=DEFAULTS["kfac_lr"], overrides: Sequence[str] = (),
                 kfac_overrides: Sequence[str] = (), compare: Optional[dict] = None,
                 log: Optional[Callable[[str], None]] = None) -> dict:
    """Runs the benchmark of the module docstring; writes ``out/results.json`` and
    ``out/learning_curves.png`` and returns the results dict.  ``compare`` maps rule names to DH-KFAC
    overrides run beside the default (step 4).  Raises :class:`ConfigError` for a bad argument or config
    before any training."""
    seeds, adam_steps, kfac_steps, sweep_steps, eval_every, target_factor, lrs, kfac_lr = _check_arguments(
        seeds, adam_steps, kfac_steps, sweep_steps, eval_every, target_factor, lrs, kfac_lr)
    overrides = list(overrides)
    base, rule_cfgs, rule_overrides, compare = resolve_rules(config, overrides, kfac_lr, kfac_overrides, compare)
    kfac_base = rule_cfgs[DEFAULT_RULE]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "a directory (this path is a file)")
    log = log or (lambda msg: None)

    from deephedge_tf.training import build_parts, datasets

    started = time.perf_counter()
    load_start = os.getloadavg()
    cfg_of = {s: dataclasses.replace(base, seed=s) for s in seeds}
    parts = build_parts(base)  # the market, liability and instruments do not depend on the seed
    first = cfg_of[seeds[0]]
    warmup_batch = datasets(first, parts)[0][0]
    valid_of = {s: list(datasets(cfg_of[s], parts)[1]) for s in seeds}
    init_of = {s: _initial_weights(cfg_of[s], parts, warmup_batch) for s in seeds}

    log("tracing Adam's train step")
    schedule = _make_scaled_schedule(base)
    adam = _Runner(base, parts, _adam(base, schedule), schedule, warmup_batch, log)

    # Phase 1: Adam learning-rate sweep on the first seed.
    sweep = dict(seed=seeds[0], steps=sweep_steps, lrs=lrs, final_val_loss={}, runs={})
    if len(lrs) == 1:
        best_lr = lrs[0]
        sweep["skipped"] = True
    else:
        for lr in lrs:
            log(f"Adam sweep lr {lr:g}, seed {seeds[0]}")
            run = _train(adam, first, parts, init_of[seeds[0]], lr, sweep_steps, sweep_steps, valid_of[seeds[0]],
                         log=log, label=f"adam lr {lr:g}")
            final = run["curve"][-1]["val_loss"]
            sweep["final_val_loss"][repr(lr)] = _finite_or_none(final)
            sweep["runs"][repr(lr)] = run
        scores = [sweep["final_val_loss"][repr(lr)] for lr in lrs]
        best_lr = lrs[int(np.argmin([math.inf if s is None else s for s in scores]))]
        if all(s is None for s in scores):
            raise DeepHedgeError(f"every Adam learning rate of the sweep {lrs} diverged; try smaller --lrs")
        ordered = sorted(lrs)
        sweep["best_at_edge"] = len(lrs) > 2 and best_lr in (ordered[0], ordered[-1])
        if sweep["best_at_edge"]:
            log(f"warning: the best Adam learning rate {best_lr:g} is at the edge of the sweep {lrs}")
    sweep["best_lr"] = best_lr

    # Phase 2: Adam's full budget per seed sets the targets.
    runs, targets, adam_best_chunks = [], {}, {}
    for s in seeds:
        log(f"Adam lr {best_lr:g}, seed {s}, {adam_steps} steps")
        run = _train(adam, cfg_of[s], parts, init_of[s], best_lr, adam_steps, eval_every, valid_of[s],
                     log=log, label=f"adam seed {s}", keep_best=True)
        finite = [p["val_loss"] for p in run["curve"] if math.isfinite(p["val_loss"])]
        if not finite:
            raise DeepHedgeError(f"Adam diverged for seed {s} at learning rate {best_lr:g}")
        adam.hedger.set_weights(run.pop("best_weights"))
        adam_best_chunks[s] = adam.chunk_losses(valid_of[s])
        targets[s] = target_factor * min(finite)
        runs.append(dict(optimizer="adam", seed=s, learning_rate=best_lr, steps_budget=adam_steps,
                         **_with_target(run, targets[s])))
    adam_first_call = dict(first_call_s=adam.first_call_s, first_forward_s=adam.first_forward_s)
    del adam

    # Phase 3 (and 4): each DH-KFAC rule per seed until the seed's target.
    from deephedge_tf.builders import build_optimizer

    first_call = dict(adam=adam_first_call)
    for name, rule_cfg in rule_cfgs.items():
        log(f"tracing DH-KFAC's train step ({name} rule)")
        kfac = _Runner(rule_cfg, parts, build_optimizer(rule_cfg), None, warmup_batch, log)
        for s in seeds:
            log(f"DH-KFAC ({name}) seed {s}, target {targets[s]:.6g}, at most {kfac_steps} steps")
            run = _train(kfac, dataclasses.replace(rule_cfg, seed=s), parts, init_of[s], None, kfac_steps,
                         eval_every, valid_of[s], target=targets[s], log=log, label=f"dhkfac {name} seed {s}")
            # DH-KFAC's weights where it stopped (at the target if reached) against Adam's best, path by path.
            diff, diff_se = paired_difference(adam_best_chunks[s], kfac.chunk_losses(valid_of[s]))
            run["paired_vs_adam_best"] = dict(step=run["steps_run"], mean_difference=diff, se=diff_se,
                                              chunks=len(adam_best_chunks[s]))
            runs.append(dict(optimizer="dhkfac", rule=name, seed=s, learning_rate=rule_cfg.training.kfac.max_step,
                             steps_budget=kfac_steps, **_with_target(run, targets[s])))
        calls = dict(first_call_s=kfac.first_call_s, first_forward_s=kfac.first_forward_s)
        first_call["dhkfac" if name == DEFAULT_RULE else name] = calls
        del kfac

    adam_runs = [r for r in runs if r["optimizer"] == "adam"]
    rule_runs = {name: adam_runs + [r for r in runs if r.get("rule") == name] for name in rule_cfgs}
    results = dict(
        benchmark="kfac-vs-adam",
        config=str(config), overrides=overrides, kfac_overrides=_kfac_overrides(kfac_lr, kfac_overrides),
        rule_overrides=list(kfac_overrides), seeds=seeds, adam_steps=adam_steps, kfac_steps=kfac_steps,
        sweep_steps=sweep_steps,
        eval_every=eval_every, target_factor=target_factor,
        target_rule=f"per seed: {target_factor} x the best validation loss of Adam's full-budget run",
        protocol=_protocol(base, kfac_base),
        sweep=sweep,
        first_call=first_call,
        runs=runs,
        summary=_summarise(rule_runs[DEFAULT_RULE], seeds, target_factor),
        compare={name: dict(kfac_overrides=_kfac_overrides(kfac_lr, rule_overrides[name]),
                            rule_overrides=compare[name],
                            protocol=dict(dhkfac=_protocol(base, rule_cfgs[name])["dhkfac"]),
                            summary=_summarise(rule_runs[name], seeds, target_factor))
                 for name in rule_cfgs if name != DEFAULT_RULE},
        machine=_machine(load_start),
        total_wall_s=time.perf_counter() - started,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", (json.dumps(_jsonable(results), indent=2) + "\n").encode())
    plot_benchmark_curves(results, out / "learning_curves.png")
    return results


def _protocol(cfg: Config, kfac_cfg: Config) -> dict:
    t = cfg.training
    n_valid = max(1, math.ceil(t.validation_paths / t.batch_size)) * min(t.batch_size, t.validation_paths)
    k = kfac_cfg.training.kfac
    return dict(batch_size=t.batch_size, fresh_paths=t.fresh_paths,
                fixed_training_paths=None if t.fresh_paths else t.batch_size * t.batches_per_epoch,
                validation_paths=n_valid, adam=dict(warmup_steps=t.warmup_steps, decay_rate=t.decay_rate,
                                                     decay_steps=t.decay_steps, clipnorm=t.clipnorm,
                                                     ema_momentum=t.ema_momentum),
                dhkfac=dataclasses.asdict(k),
                jit_compile=t.jit_compile, dtype=cfg.dtype)


def _summarise(runs, seeds, target_factor) -> dict:
    by = {(r["optimizer"], r["seed"]): r for r in runs}
    per_seed = []
    for s in seeds:
        a, k = by[("adam", s)], by[("dhkfac", s)]
        row = dict(seed=s, target=a["target"], adam_best_val_loss=a["best_val_loss"],
                   adam_steps_to_target=a["steps_to_target"], adam_wall_s_to_target=a["wall_s_to_target"],
                   kfac_steps_to_target=k["steps_to_target"], kfac_wall_s_to_target=k["wall_s_to_target"],
                   kfac_best_val_loss=k["best_val_loss"])
        best = [p for p in a["curve"] if p["val_loss"] == a["best_val_loss"]]
        se = best[0]["val_loss_se"] if best else math.nan
        # The target's margin over the best loss, in units of the validation loss's standard error.
        row["target_margin_in_se"] = ((target_factor - 1.0) * a["best_val_loss"] / se
                                      if se and math.isfinite(se) else None)
        # The same margin against the noise of the paired difference DH-KFAC - Adam (same paths).
        paired = k.get("paired_vs_adam_best") or {}
        pse = paired.get("se")
        row["target_margin_in_paired_se"] = ((target_factor - 1.0) * a["best_val_loss"] / pse
                                             if pse and math.isfinite(pse) else None)
        tail = [p["val_loss"] for p in a["curve"][-5:]]
        # How much Adam's validation loss still moves between evaluations at the end (relative).
        row["adam_tail_relative_spread"] = float((max(tail) - min(tail)) / a["best_val_loss"]) if tail else None
        row["matched_loss"] = matched_loss(a["curve"], k["curve"])
        if k["reached"]:
            row["step_ratio"] = k["steps_to_target"] / a["steps_to_target"]
            row["wall_ratio"] = k["wall_s_to_target"] / a["wall_s_to_target"] if a["wall_s_to_target"] else None
            row["goal_steps"] = row["step_ratio"] <= GOAL_STEP_FRACTION
            row["goal_wall"] = row["wall_ratio"] is not None and row["wall_ratio"] < 1.0
        else:
            row.update(step_ratio=None, wall_ratio=None, goal_steps=False, goal_wall=False)
        per_seed.append(row)
    per_step = {}
    for name in ("adam", "dhkfac"):
        rs = [r for r in runs if r["optimizer"] == name]
        per_step[name] = dict(step_median_s=float(np.median([r["step_time_s"]["median"] for r in rs])),
                              data_median_s=float(np.median([r["data_time_s"]["median"] for r in rs])))
    goal_steps = all(r["goal_steps"] for r in per_seed)
    goal_wall = all(r["goal_wall"] for r in per_seed)
    return dict(per_seed=per_seed, per_step_time=per_step,
                goal=dict(description=f"DH-KFAC reaches the target in <= {GOAL_STEP_FRACTION:g} x Adam's steps "
                          "and in less wall time than Adam, in every seed",
                          steps=goal_steps, wall=goal_wall, met=goal_steps and goal_wall))


def matched_loss(adam_curve, kfac_curve) -> list:
    """For each DH-KFAC evaluation, the first Adam evaluation at or below the same validation loss:
    the step and wall-time ratios at equal loss, for every loss level DH-KFAC reached (not only the
    target).  ``adam_step`` is None where Adam never got that low."""
    rows = []
    for point in kfac_curve[1:]:
        if not math.isfinite(point["val_loss"]):
            continue
        hit = first_at_or_below(adam_curve, point["val_loss"])
        rows.append(dict(val_loss=point["val_loss"], kfac_step=point["step"], kfac_wall_s=point["wall_s"],
                         adam_step=None if hit is None else hit["step"],
                         adam_wall_s=None if hit is None else hit["wall_s"],
                         step_ratio=None if hit is None else point["step"] / hit["step"],
                         wall_ratio=None if hit is None or not hit["wall_s"] else point["wall_s"] / hit["wall_s"]))
    return rows


def _machine(load_start) -> dict:
    import keras
    import tensorflow as tf

    return dict(platform=platform.platform(), machine=platform.machine(), cpu_count=os.cpu_count(),
                python=platform.python_version(), tensorflow=tf.__version__, keras=keras.__version__,
                gpus=len(tf.config.list_physical_devices("GPU")), load_average_start=list(load_start),
                load_average_end=list(os.getloadavg()))


def _jsonable(x):
    """NaN and inf as null (strict JSON), numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _summary_text(results: dict) -> str:
    lines = [f"{'seed':>4} {'target':>12} {'adam steps':>10} {'adam s':>8} {'kfac steps':>10} {'kfac s':>8} "
             f"{'step ratio':>10} {'wall ratio':>10}"]

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for r in results["summary"]["per_seed"]:
        lines.append(f"{r['seed']:>4} {r['target']:>12.6g} {fmt(r['adam_steps_to_target'], '>10')} "
                     f"{fmt(r['adam_wall_s_to_target'], '>8.1f')} {fmt(r['kfac_steps_to_target'], '>10')} "
                     f"{fmt(r['kfac_wall_s_to_target'], '>8.1f')} {fmt(r['step_ratio'], '>10.3f')} "
                     f"{fmt(r['wall_ratio'], '>10.3f')}")
    g = results["summary"]["goal"]
    lines.append(f"goal ({g['description']}): {'met' if g['met'] else 'NOT met'} "
                 f"(steps: {g['steps']}, wall: {g['wall']})")
    for name, c in results.get("compare", {}).items():
        ratios = ", ".join(f"seed {r['seed']}: {fmt(r['step_ratio'], '.3f')} steps / {fmt(r['wall_ratio'], '.3f')} wall"
                           for r in c["summary"]["per_seed"])
        lines.append(f"rule {name} ({' '.join(c['rule_overrides'])}): {ratios}")
    return "\n".join(lines)


def results_markdown(results: dict) -> str:
    """The per-seed table of a results dict as Markdown (for BENCHMARKS.md)."""

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    s = results["summary"]
    step = s["per_step_time"]
    lines = ["| seed | target | Adam steps | Adam wall s | DH-KFAC steps | DH-KFAC wall s | step ratio | "
             "wall ratio | Adam best | DH-KFAC best | target margin (se / paired se) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["per_seed"]:
        lines.append(f"| {r['seed']} | {r['target']:.4e} | {f(r['adam_steps_to_target'], 'd')} | "
                     f"{f(r['adam_wall_s_to_target'], '.1f')} | {f(r['kfac_steps_to_target'], 'd')} | "
                     f"{f(r['kfac_wall_s_to_target'], '.1f')} | {f(r['step_ratio'], '.2f')} | "
                     f"{f(r['wall_ratio'], '.2f')} | {f(r['adam_best_val_loss'], '.4e')} | "
                     f"{f(r['kfac_best_val_loss'], '.4e')} | {f(r.get('target_margin_in_se'), '.1f')} / "
                     f"{f(r.get('target_margin_in_paired_se'), '.1f')} |")
    compare = results.get("compare", {})
    if compare:
        lines += ["", "| rule | seed | DH-KFAC steps | DH-KFAC wall s | step ratio | wall ratio | DH-KFAC best |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, c in compare.items():
            for r in c["summary"]["per_seed"]:
                lines.append(f"| {name} | {r['seed']} | {f(r['kfac_steps_to_target'], 'd')} | "
                             f"{f(r['kfac_wall_s_to_target'], '.1f')} | {f(r['step_ratio'], '.2f')} | "
                             f"{f(r['wall_ratio'], '.2f')} | {f(r['kfac_best_val_loss'], '.4e')} |")
    fc = results["first_call"]
    lines += ["", "| optimizer | median step (train step) | median path simulation per step | first call "
              "(trace + compile + 1 step) |", "|---|---:|---:|---:|"]
    timed = [("adam", "Adam", step["adam"]), ("dhkfac", "DH-KFAC", step["dhkfac"])]
    timed += [(name, f"DH-KFAC ({name})", c["summary"]["per_step_time"]["dhkfac"]) for name, c in compare.items()]
    for name, label, t in timed:
        lines.append(f"| {label} | {t['step_median_s'] * 1e3:.0f} ms | "
                     f"{t['data_median_s'] * 1e3:.0f} ms | {fc[name]['first_call_s']:.0f} s |")
    return "\n".join(lines) + "\n"


# -- plot -----------------------------------------------------------------------------------------------

def run_label(run: dict) -> str:
    """'Adam', 'DH-KFAC' (the default rule) or 'DH-KFAC (NAME)' for a ``--compare`` rule's run."""
    if run["optimizer"] == "adam":
        return "Adam"
    rule = run.get("rule") or DEFAULT_RULE
    return "DH-KFAC" if rule == DEFAULT_RULE else f"DH-KFAC ({rule})"


def run_colors(runs) -> dict:
    """One colour per :func:`run_label`: Adam blue, the default rule red, compared rules after those."""
    colors = {"Adam": "C0", "DH-KFAC": "C3"}
    others = iter(["C2", "C4", "C1", "C5", "C6", "C8", "C9", "C7"])
    for label in dict.fromkeys(run_label(r) for r in runs):
        if label not in colors:
            colors[label] = next(others, "0.5")  # grey once the palette is used up
    return colors


def plot_benchmark_curves(results: dict, path) -> str:
    """Validation loss vs training steps and vs wall time, every run, with each seed's target."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = results["runs"]
    seeds = results["seeds"]
    styles = ["-", "--", ":", "-."]
    colors = run_colors(runs)
    fig = Figure(figsize=(11.0, 4.6))
    axes = fig.subplots(1, 2)
    positive = all(p["val_loss"] > 0 for r in runs for p in r["curve"] if math.isfinite(p["val_loss"]))
    panels = ((axes[0], "step", "training steps"), (axes[1], "wall_s", "wall time (s, training steps only)"))
    for ax, x_key, x_label in panels:
        for r in runs:
            xs = [p[x_key] for p in r["curve"]]
            ys = [p["val_loss"] if math.isfinite(p["val_loss"]) else np.nan for p in r["curve"]]
            style = styles[seeds.index(r["seed"]) % len(styles)]
            name = run_label(r) if r["optimizer"] == "dhkfac" else f"Adam (lr {r['learning_rate']:g})"
            ax.plot(xs, ys, linestyle=style, color=colors[run_label(r)], linewidth=1.4,
                    label=f"{name}, seed {r['seed']}")
            if r["reached"]:
                hit = r["steps_to_target"] if x_key == "step" else r["wall_s_to_target"]
                ax.plot([hit], [first_at_or_below(r["curve"], r["target"])["val_loss"]], marker="o",
                        color=colors[run_label(r)], markersize=5)
        for s in seeds:
            target = next(r["target"] for r in runs if r["seed"] == s)
            ax.axhline(target, color="0.3", linewidth=0.8, linestyle=styles[seeds.index(s) % len(styles)],
                       alpha=0.7, label=f"target, seed {s}")
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation loss")
        ax.grid(True, alpha=0.3, which="both")
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(f"DH-KFAC vs Adam: {Path(results['config']).name} "
                 f"(target {results['target_factor']:g} x Adam's best; dots: target reached)")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return str(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
