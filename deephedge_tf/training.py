"""Training a hedger from a config: optimizer, datasets, callbacks.

    parts = build_parts(cfg)                 # market, derivative, instruments
    hedger = make_hedger(cfg, parts)         # Hedger(policy, objective), compiled
    history = fit_hedger(cfg, hedger, parts, callbacks=[...])

Seeds: training paths use ``cfg.seed``, validation paths ``cfg.seed + 1``, evaluation paths
``cfg.seed + 2`` (independent streams of the same market).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from deephedge_tf.builders import (build_derivative, build_hedges, build_market, build_objective, build_optimizer,
                                   build_policy)
from deephedge_tf.config import Config
from deephedge_tf.data import PathBatches
from deephedge_tf.distribute import strategy_for
from deephedge_tf.features import has_greeks
from deephedge_tf.hedger import Hedger
from deephedge_tf.errors import ConfigError
from deephedge_tf.files import write_atomic
from deephedge_tf.optimizers.averaging import AveragedEarlyStopping

VALIDATION_SEED_OFFSET = 1


@dataclasses.dataclass
class RunParts:
    """The market, liability and hedging instruments of a config (built once, shared by datasets)."""

    market: object
    derivative: object
    instruments: list


def build_parts(cfg: Config) -> RunParts:
    market = build_market(cfg)
    return RunParts(market, build_derivative(cfg), build_hedges(cfg, market))


def _check_delta(cfg: Config, derivative) -> None:
    """A policy built on the Black-Scholes delta needs a derivative with greeks (a python derivative may
    lack them; the config cannot tell)."""
    if cfg.policy.uses_delta and not has_greeks(derivative):
        raise ConfigError("policy.kind", cfg.policy.kind, f"a policy without a Black-Scholes delta: the derivative "
                          f"{derivative!r} has no greeks")


def instrument_names(parts: RunParts) -> list[str]:
    """Names of the hedging instruments in action-column order (N of them), from a one-path batch."""
    paths = parts.market.simulate(1)
    return [n for i in parts.instruments for n in i.tensors(paths).names]


@keras.saving.register_keras_serializable(package="deephedge_tf")
class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then ``peak * rate ** (s / decay_steps)``.

    >>> schedule = WarmupExponentialDecay(1e-2, warmup_steps=10, decay_rate=0.5, decay_steps=100)
    >>> [round(float(schedule(step)), 6) for step in (0, 9, 110)]  # ramping, at the peak, one halving later
    [0.001, 0.01, 0.005]
"""

    def __init__(self, peak: float, warmup_steps: int = 0, decay_rate: float = 1.0, decay_steps: int = 1000):
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)
        self.decay_rate, self.decay_steps = float(decay_rate), int(decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = float(max(self.warmup_steps, 1))
        ramp = tf.minimum((step + 1.0) / warm, 1.0) if self.warmup_steps else 1.0
        after = tf.maximum(step - self.warmup_steps, 0.0)
        return self.peak * ramp * tf.pow(self.decay_rate, after / self.decay_steps)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, decay_rate=self.decay_rate,
                    decay_steps=self.decay_steps)


def make_hedger(cfg: Config, parts: RunParts, policy_kind: str | None = None, compile: bool = True) -> Hedger:
    """A Hedger for ``cfg`` (``policy_kind`` overrides ``cfg.policy.kind``, e.g. for baselines).

    Weight initialisation is seeded from ``cfg.seed`` (Keras' global seed), so the same config gives
    the same initial weights in every process.
    """
    keras.utils.set_random_seed(cfg.seed)
    n = len(instrument_names(parts))
    # Under training.distribute the model, its weights and the optimizer live in the strategy's scope;
    # Keras' fit then splits each batch across the replicas.
    with distribution_strategy(cfg).scope():
        policy = build_policy(cfg, n, policy_kind)
        objective = build_objective(cfg)
        if policy_kind is None:
            _check_delta(cfg, parts.derivative)
        k = cfg.training.kfac
        hedger = Hedger(policy, objective, ggn_mode=k.ggn_mode, ggn_cost_l2=k.ggn_cost_l2,
                        ggn_cost_floor=k.ggn_cost_floor, curvature_paths=k.curvature_paths,
                        natural_units=cfg.hedges.natural_units, time_loop=cfg.training.time_loop, dtype=cfg.dtype)
        if compile:
            jit = "auto" if cfg.training.jit_compile is None else cfg.training.jit_compile
            hedger.compile(optimizer=build_optimizer(cfg), jit_compile=jit)
    return hedger


def distribution_strategy(cfg: Config) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy of ``training.distribute`` (:func:`deephedge_tf.distribute.strategy_for`)."""
    return strategy_for(cfg.training.distribute)


def datasets(cfg: Config, parts: RunParts):
    """(training PathBatches, validation PathBatches)."""
    t = cfg.training
    train = PathBatches(parts.market, parts.derivative, parts.instruments, t.batch_size, t.batches_per_epoch,
                        fresh=t.fresh_paths, seed=cfg.seed)
    n_valid_batches = max(1, math.ceil(t.validation_paths / t.batch_size))
    valid = PathBatches(parts.market, parts.derivative, parts.instruments,
                        min(t.batch_size, t.validation_paths), n_valid_batches, fresh=False,
                        seed=cfg.seed + VALIDATION_SEED_OFFSET)
    return train, valid


class TargetLossStopping(keras.callbacks.Callback):
    """Stops training once ``monitor`` (default ``val_loss``) is at or below ``target``.

    After training, ``reached_at_step`` is the number of optimizer steps taken when the target was
    first reached (None if never): the quantity the optimizer benchmarks compare.
    """

    def __init__(self, target: float, monitor: str = "val_loss"):
        super().__init__()
        self.target, self.monitor = float(target), monitor
        self.reached_at_step = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value <= self.target and self.reached_at_step is None:
            self.reached_at_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


class RunHistory(keras.callbacks.Callback):
    """``history.csv`` of a run that may be killed and started again: one row per epoch over the whole
    run, with ``wall_s``, the training time up to the end of that epoch, summed over restarts.

    Put it after ``keras.callbacks.BackupAndRestore`` in the callback list: a restarted ``fit`` resumes
    at the epoch after the last backup (Keras stores it as the model's initial epoch when the backup is
    restored), and this keeps the earlier rows up to there and drops any written after the backup (the
    restart repeats those epochs).  The file is rewritten whole, atomically, after every epoch.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def on_train_begin(self, logs=None):
        first = int(getattr(self.model, "_initial_epoch", 0) or 0)
        self.rows = [r for r in self._read() if int(r["epoch"]) < first] if first else []
        self._earlier = self.rows[-1]["wall_s"] if self.rows else 0.0
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": float(epoch), **{k: float(v) for k, v in (logs or {}).items()}}
        row["wall_s"] = self._earlier + time.perf_counter() - self._start
        self.rows.append(row)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys, restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (int(v) if k == "epoch" else repr(v)) for k, v in r.items()})
        write_atomic(self.path, text.getvalue())

    def history(self) -> dict:
        """``{metric: [per-epoch values]}`` of the whole run (the form of Keras' ``History.history``)."""
        keys = [k for k in dict.fromkeys(k for r in self.rows for k in r) if k not in ("epoch", "wall_s")]
        return {k: [r.get(k, float("nan")) for r in self.rows] for k in keys}


class OptimizerDiagnostics(keras.callbacks.Callback):
    """Adds the optimizer's own state to each epoch's logs, as ``opt_<name>`` (:attr:`PREFIX`):
    ``opt_learning_rate`` for a Keras optimizer, and whatever ``optimizer.diagnostics()`` reports (DH-KFAC:
    step size, damping or trust radius, reduction ratio, rejected and skipped steps;
    :meth:`DHKFAC.diagnostics`).  Callbacks after it
    (``RunHistory``'s history.csv, Keras' ``History`` and ``TensorBoard``) record them with the losses, so
    put it before those.

        >>> import deephedge_tf as dh
        >>> market = dh.GBM(s0=1.0, steps=5, dt=1 / 365)
        >>> data = dh.PathBatches(market, dh.EuropeanOption(strike=1.0), [dh.Spot()], batch_size=64,
        ...                       batches_per_epoch=2)
        >>> hedger = dh.Hedger(dh.MLPPolicy(num_layers=1, width=4), dh.MeanVariance(gamma=1.0))
        >>> hedger.compile(optimizer=dh.DHKFAC())
        >>> history = hedger.fit(data, epochs=1, verbose=0, callbacks=[OptimizerDiagnostics()])
        >>> sorted(k for k in history.history if k.startswith("opt_"))[:3]
        ['opt_damping', 'opt_learning_rate', 'opt_predicted_decrease']
    """

    PREFIX = "opt_"  # what tells a diagnostic from a loss or metric in the logs and history.csv

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        rate = getattr(optimizer, "learning_rate", None)
        if rate is not None:
            logs[f"{self.PREFIX}learning_rate"] = float(keras.ops.convert_to_numpy(rate))
        diagnostics = getattr(optimizer, "diagnostics", None)
        if callable(diagnostics):
            logs.update({f"{self.PREFIX}{name}": value for name, value in diagnostics().items()})


def standard_callbacks(cfg: Config) -> list:
    t = cfg.training
    out = [keras.callbacks.TerminateOnNaN()]
    if t.early_stopping_patience is not None:
        # The best epoch's validated weights: the optimizer's average of its iterates when it keeps one.
        out.append(AveragedEarlyStopping(monitor="val_loss", patience=t.early_stopping_patience,
                                         restore_best_weights=True))
    if t.target_loss is not None:
        out.append(TargetLossStopping(t.target_loss))
    return out


def fit_hedger(cfg: Config, hedger: Hedger, parts: RunParts, callbacks=(), verbose="auto"):
    """``hedger.fit`` on the config's datasets; returns the Keras History."""
    train, valid = datasets(cfg, parts)
    return hedger.fit(train, validation_data=valid, epochs=cfg.training.epochs,
                      callbacks=standard_callbacks(cfg) + list(callbacks), verbose=verbose)
