"""Named experiments that reproduce the seed papers' published figures: ``deephedge experiment NAME``.

An experiment trains and evaluates what a paper reports and writes, under its output directory,
``summary.json`` (every figure with its value, standard error, the published value and whether the two
agree within the figure's band), CSV tables and PNG figures; :func:`format_summary` is what the command
prints.  ``scale="small"`` finishes in minutes on two CPU cores (the seeded tests run it); ``"full"``
uses the paper's sizes.

    >>> sorted(EXPERIMENTS)
    ['buehler_heston', 'cliquet', 'dhlnn', 'kfac_lstm', 'ntb', 'ntb_cost', 'price_vs_cost']
    >>> run_experiment("ntb", "/tmp/x", scale="huge")
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.DeepHedgeError: experiment: scale must be one of 'small', 'full'; got 'huge'

A figure agrees with its published value when ``|value - published| <= band``; the band is stated per
figure (a multiple of the standard errors where the scale resolves the figure, else a looser stated
tolerance), so a reader sees what was checked.  An indifference price measured out of sample is the
risk of one fixed strategy, so it bounds the true (minimal) price from above: a figure of that kind is
checked one-sided (``check="at_most"``: ``value <= published + band``), and a value well below the
published one says the paper's strategy was not the optimum, not that ours is wrong.

    >>> Figure("p", value=1.0, stderr=0.01, published=1.2, band=0.05, check="at_most").agrees
    True
    >>> Figure("p", value=1.0, stderr=0.01, published=1.2, band=0.05).agrees
    False
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from deephedge_tf.errors import DeepHedgeError

__all__ = ["CHECKS", "EXPERIMENTS", "SCALES", "Context", "Figure", "format_summary", "over_seeds", "paired_bootstrap",
           "run_experiment", "train", "train_with_curve"]

SCALES = ("small", "full")
CHECKS = ("within", "at_most")


@dataclasses.dataclass(frozen=True)
class Figure:
    """One reported number of an experiment beside its published counterpart.

    Attributes:
      key: the name in ``summary.json`` (e.g. ``"ntb_european"``).
      value: ours (the mean over seeds).
      stderr: its standard error (over seeds when there are several, else the evaluation's).
      published: the paper's value (``None``: no published number, reported for context).
      band: the absolute tolerance ``|value - published| <= band`` is checked against.
      source: where the published number comes from; ``note``: how ours was measured.
      check: ``"within"`` (two-sided, the default) or ``"at_most"`` (``value <= published + band``: for a
        quantity ours bounds from above, an out-of-sample indifference price; module doc).
    """

    key: str
    value: float
    stderr: float
    published: float | None
    band: float | None
    source: str = ""
    note: str = ""
    check: str = "within"

    def __post_init__(self):
        if self.check not in CHECKS:
            raise DeepHedgeError(f"Figure {self.key!r}: check must be one of {', '.join(map(repr, CHECKS))}; "
                                 f"got {self.check!r}")

    @property
    def agrees(self) -> bool | None:
        """Whether ``value`` is within ``band`` of ``published`` (``check="at_most"``: not above
        ``published + band``); ``None`` without both."""
        if self.published is None or self.band is None:
            return None
        if self.check == "at_most":
            return self.value <= self.published + self.band
        return abs(self.value - self.published) <= self.band

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["agrees"] = self.agrees
        return out


@dataclasses.dataclass
class Context:
    """What an experiment is run with: ``out`` (created), ``scale``, ``seeds`` and ``echo`` (progress)."""

    out: Path
    scale: str
    seeds: tuple[int, ...]
    echo: Callable[[str], None] = print


def train(cfg, parts=None):
    """Builds and fits the hedger of ``cfg`` (quietly): ``(hedger, optimizer steps, wall seconds of fit)``."""
    from deephedge_tf.training import build_parts, fit_hedger, make_hedger

    parts = build_parts(cfg) if parts is None else parts
    hedger = make_hedger(cfg, parts)
    start = time.perf_counter()
    fit_hedger(cfg, hedger, parts, verbose=0)
    return hedger, int(hedger.optimizer.iterations.numpy()), time.perf_counter() - start


def train_with_curve(cfg, parts):
    """Builds and fits the hedger of ``cfg`` (quietly), recording the validation loss after every epoch:
    ``(hedger, [{"step", "wall_s", "val_loss"}, ...])`` (``wall_s``: seconds since the fit began)."""
    import keras

    from deephedge_tf.training import fit_hedger, make_hedger

    hedger = make_hedger(cfg, parts)
    curve = []

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            curve.append({"step": int(hedger.optimizer.iterations.numpy()),
                          "wall_s": time.perf_counter() - self.start, "val_loss": float(logs["val_loss"])})

    fit_hedger(cfg, hedger, parts, callbacks=[Clock()], verbose=0)
    return hedger, curve


def paired_bootstrap(statistic, *samples, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """``(statistic(*samples), its standard error)`` by the bootstrap over paths: the samples are ``[n]``
    arrays on the same paths, resampled with the same indices (so pairing is kept).

        >>> import numpy as np
        >>> x = np.random.default_rng(1).standard_normal(4000)
        >>> value, se = paired_bootstrap(lambda a, b: a.std() / b.std(), x, 2 * x)
        >>> round(value, 6), round(se, 6)  # exactly 1/2 on every resample
        (0.5, 0.0)
    """
    import numpy as np

    samples = [np.asarray(x, dtype=float) for x in samples]
    rng = np.random.default_rng(seed)
    n = samples[0].size
    values = [statistic(*(x[i] for x in samples)) for i in (rng.integers(0, n, n) for _ in range(draws))]
    return float(statistic(*samples)), float(np.std(values, ddof=1))


def over_seeds(values, single_stderr: float) -> tuple[float, float, str]:
    """``(mean, standard error, how)`` of a figure measured once per seed: the s.e. over seeds when there
    are several, else ``single_stderr`` (the one run's evaluation error).  Seeds without a value (NaN,
    e.g. a target never reached) are left out and counted in ``how``.

        >>> over_seeds([1.0, 3.0, float("nan")], 0.1)
        (2.0, 1.0, 'mean of 2 seeds, s.e. over seeds (1 of 3 without a value)')
    """
    import numpy as np

    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    missing = f" ({values.size - finite.size} of {values.size} without a value)" if finite.size < values.size else ""
    if finite.size >= 2:
        return (float(finite.mean()), float(finite.std(ddof=1) / math.sqrt(finite.size)),
                f"mean of {finite.size} seeds, s.e. over seeds{missing}")
    if finite.size == 1 and values.size > 1:
        return float(finite[0]), math.nan, f"one seed{missing}"
    return float(values[0]), float(single_stderr), "one seed, s.e. of the evaluation"


# name -> (function(Context) -> (figures, files), the scale's default seeds {scale: seeds}, one-line description)
EXPERIMENTS: dict[str, tuple[Callable, dict, str]] = {}


def register(name: str, default_seeds: dict, description: str):
    """Decorator: ``fn(ctx) -> ([Figure, ...], [written file names])`` becomes experiment ``name``."""
    def wrap(fn):
        EXPERIMENTS[name] = (fn, default_seeds, description)
        return fn
    return wrap


def run_experiment(name: str, out, scale: str = "small", seeds=None, echo=print) -> dict:
    """Runs experiment ``name`` into directory ``out`` and returns its summary (also ``out/summary.json``).

    Args:
      name: one of :data:`EXPERIMENTS`.
      out: output directory (created; files of an earlier run of the same name are replaced).
      scale: ``"small"`` (minutes on two CPU cores) or ``"full"`` (the paper's sizes).
      seeds: training seeds (``None``: the experiment's default for the scale).
      echo: progress lines.

    Raises:
      DeepHedgeError: an unknown name, scale or a seed that is not a non-negative integer.
    """
    if name not in EXPERIMENTS:
        raise DeepHedgeError(f"experiment: no experiment {name!r}; one of {', '.join(sorted(EXPERIMENTS))}")
    if scale not in SCALES:
        raise DeepHedgeError(f"experiment: scale must be one of {', '.join(map(repr, SCALES))}; got {scale!r}")
    fn, default_seeds, _ = EXPERIMENTS[name]
    seeds = tuple(default_seeds[scale] if seeds is None else seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise DeepHedgeError(f"experiment: seeds must be non-negative integers; got {list(seeds)!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    figures, files = fn(Context(out, scale, seeds, echo))
    summary = {"experiment": name, "scale": scale, "seeds": list(seeds),
               "wall_s": round(time.perf_counter() - start, 1),
               "figures": {f.key: f.as_dict() for f in figures}, "files": sorted(files)}
    from deephedge_tf.files import write_atomic

    write_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a text table: figure, ours +- s.e., published, band, agrees."""
    lines = [f"experiment {summary['experiment']} ({summary['scale']}, seeds {summary['seeds']}, "
             f"{summary['wall_s']:.0f} s)",
             f"{'figure':<26} {'ours':>10} {'s.e.':>9} {'published':>10} {'band':>9}  agrees"]
    for key, f in summary["figures"].items():
        pub = "-" if f["published"] is None else f"{f['published']:.6g}"
        band = "-" if f["band"] is None else ("<=+" if f.get("check") == "at_most" else "") + f"{f['band']:.2g}"
        se = "-" if f["stderr"] is None or math.isnan(f["stderr"]) else f"{f['stderr']:.2g}"
        agrees = {True: "yes", False: "NO", None: "-"}[f["agrees"]]
        lines.append(f"{key:<26} {f['value']:>10.6g} {se:>9} {pub:>10} {band:>9}  {agrees}")
    lines.append("files: " + ", ".join(summary["files"] + ["summary.json"]))
    return "\n".join(lines)


def _register_all() -> None:
    """Imports the experiment modules; each registers itself with :func:`register`."""
    import importlib

    for module in ("buehler_heston", "cliquet", "dhlnn", "kfac_lstm", "ntb", "price_vs_cost"):
        importlib.import_module(f"deephedge_tf.experiments.{module}")


_register_all()
