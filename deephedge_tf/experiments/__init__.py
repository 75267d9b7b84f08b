"""Named experiments that reproduce the seed papers' published figures: ``deephedge experiment NAME``.

An experiment trains and evaluates what a paper reports and writes, under its output directory,
``summary.json`` (every figure with its value, standard error, the published value and whether the two
agree within the figure's band), CSV tables and PNG figures; :func:`format_summary` is what the command
prints.  ``scale="small"`` finishes in minutes on two CPU cores (the seeded tests run it); ``"full"``
uses the paper's sizes.

    >>> sorted(EXPERIMENTS)
    ['ntb']
    >>> run_experiment("ntb", "/tmp/x", scale="huge")
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.DeepHedgeError: experiment: scale must be one of 'small', 'full'; got 'huge'

A figure agrees with its published value when ``|value - published| <= band``; the band is stated per
figure (a multiple of the standard errors where the scale resolves the figure, else a looser stated
tolerance), so a reader sees what was checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from deephedge_tf.errors import DeepHedgeError

__all__ = ["EXPERIMENTS", "SCALES", "Context", "Figure", "format_summary", "run_experiment"]

SCALES = ("small", "full")


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
    """

    key: str
    value: float
    stderr: float
    published: float | None
    band: float | None
    source: str = ""
    note: str = ""

    @property
    def agrees(self) -> bool | None:
        """Whether ``value`` is within ``band`` of ``published`` (``None`` without both)."""
        if self.published is None or self.band is None:
            return None
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
        band = "-" if f["band"] is None else f"{f['band']:.2g}"
        se = "-" if f["stderr"] is None or math.isnan(f["stderr"]) else f"{f['stderr']:.2g}"
        agrees = {True: "yes", False: "NO", None: "-"}[f["agrees"]]
        lines.append(f"{key:<26} {f['value']:>10.6g} {se:>9} {pub:>10} {band:>9}  {agrees}")
    lines.append("files: " + ", ".join(summary["files"] + ["summary.json"]))
    return "\n".join(lines)


def _register_all() -> None:
    """Imports the experiment modules; each registers itself with :func:`register`."""
    import importlib

    for module in ("ntb",):
        importlib.import_module(f"deephedge_tf.experiments.{module}")


_register_all()
