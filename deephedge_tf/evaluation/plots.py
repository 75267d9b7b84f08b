"""PNG plots of hedging results: PnL histograms, sample hedge paths, learning curves.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never through
``pyplot``: no global backend switch, no figure registry to leak memory in long runs, and it works
on headless machines whatever backend the user configured.

Every function validates its inputs and renders the whole PNG in memory before touching the file
system; only then are the parent directories created and the file written under a temporary name
in the target directory and moved into place with ``os.replace``.  So a failure leaves neither a
half-written PNG nor stray temporary files, and readers never see a partial file.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.files import write_atomic
from deephedge_tf.evaluation.metrics import _as_samples

__all__ = ["plot_cumulative_pnl", "plot_hedges_over_time", "plot_implied_vol_fit", "plot_learning_curves", "plot_pnl_histograms"]

PathLike = Union[str, os.PathLike]

_DPI = 110


# --------------------------------------------------------------------------------------------
# file handling


def _check_path(path) -> Path:
    try:
        p = Path(path)
    except TypeError as e:
        raise DeepHedgeError(f"'path' must be a file path; got {path!r}") from e
    if p.suffix.lower() != ".png":
        raise DeepHedgeError(f"'path' must name a .png file; got {str(path)!r}")
    return p


def _render_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches itself to fig; the only backend this module uses
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> str:
    write_atomic(path, data)
    return str(path)


def _save(fig: Figure, path: Path) -> str:
    return _write_atomic(path, _render_png(fig))


# --------------------------------------------------------------------------------------------
# PnL histograms


def plot_pnl_histograms(strategies: Mapping, path: PathLike, bins=100,
                        title: Optional[str] = None, density: bool = False) -> str:
    """Overlaid histograms of terminal PnL of several strategies, on shared bins.

    Args:
      strategies: ``{name: [B] terminal PnL per path}`` (currency units), e.g. hedged, unhedged
        and delta hedge; sizes B may differ between strategies (then consider ``density=True``).
      path: output .png file; parent directories are created.
      bins: number of bins (int >= 1) spanning all strategies' samples, or a sequence of
        increasing bin edges.
      title: figure title; default "Terminal PnL".
      density: plot probability densities instead of path counts.

    Returns:
      `path` as a string.  Each legend entry shows the strategy's PnL mean and std (ddof = 1).
    """
    out = _check_path(path)
    if not isinstance(strategies, Mapping) or len(strategies) == 0:
        raise DeepHedgeError("'strategies' must be a non-empty mapping {name: [B] PnL}; "
                             f"got {type(strategies).__name__}")
    samples = {str(k): _as_samples(v, f"strategies[{k!r}]") for k, v in strategies.items()}
    is_count = isinstance(bins, (int, np.integer)) and not isinstance(bins, (bool, np.bool_))
    is_edges = isinstance(bins, (Sequence, np.ndarray)) and not isinstance(bins, str)
    if not ((is_count and bins >= 1) or is_edges):
        raise DeepHedgeError(f"'bins' must be an int >= 1 or a sequence of bin edges; got {bins!r}")
    everything = np.concatenate(list(samples.values()))
    try:
        edges = np.histogram_bin_edges(everything, bins=bins)
    except (TypeError, ValueError) as e:
        raise DeepHedgeError(f"'bins' is not usable as histogram bins: {e}") from e

    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot()
    for i, (name, x) in enumerate(samples.items()):
        std = float(np.std(x, ddof=1)) if x.size >= 2 else math.nan
        label = f"{name}: mean {np.mean(x):.4g}, std {std:.4g}"
        color = f"C{i % 10}"
        # A translucent fill shows overlaps; the step outline keeps each shape legible on top.
        ax.hist(x, bins=edges, density=density, histtype="stepfilled", alpha=0.3, color=color)
        ax.hist(x, bins=edges, density=density, histtype="step", linewidth=1.3, color=color,
                label=label)
    if edges[0] <= 0.0 <= edges[-1]:
        ax.axvline(0.0, color="0.3", linewidth=0.8, linestyle=":")
    ax.set_xlabel("terminal PnL")
    ax.set_ylabel("density" if density else "number of paths")
    ax.set_title(title if title is not None else "Terminal PnL")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


# --------------------------------------------------------------------------------------------
# hedges over time


def plot_hedges_over_time(actions, path: PathLike, instrument_names: Optional[Sequence[str]] = None,
                          num_paths: int = 5, times=None, title: Optional[str] = None) -> str:
    """Positions (or trades) of a few sample paths over time, one subplot per instrument.

    Args:
      actions: [T, B, N] time-major positions or trades per step, path and instrument (units of
        the instrument); a [T, B] array is taken as one instrument.  Values are drawn as steps
        held from each time to the next.
      path: output .png file; parent directories are created.
      instrument_names: N subplot titles; default "instrument 0", ...
      num_paths: how many paths to draw, the first min(num_paths, B) ones (slice or reorder
        `actions` along axis 1 to pick others).  Path i has the same color in every subplot.
      times: optional [T] times of the steps (e.g. years); default the step index 0..T-1.
      title: figure title; default "Hedge positions on sample paths".

    Returns:
      `path` as a string.
    """
    out = _check_path(path)
    try:
        a = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DeepHedgeError(f"'actions' must be numeric; got {type(actions).__name__}") from e
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.size == 0:
        raise DeepHedgeError(f"'actions' must be a non-empty [T, B, N] array (or [T, B]); "
                             f"got shape {np.shape(actions)}")
    t_steps, batch, n_inst = a.shape
    if isinstance(num_paths, (bool, np.bool_)) or not isinstance(num_paths, (int, np.integer)) \
            or num_paths < 1:
        raise DeepHedgeError(f"'num_paths' must be an int >= 1; got {num_paths!r}")
    shown = a[:, :min(int(num_paths), batch), :]
    if not np.all(np.isfinite(shown)):
        raise DeepHedgeError("'actions' must be finite on the plotted paths; found NaN or inf")

    if instrument_names is None:
        names = [f"instrument {j}" for j in range(n_inst)]
    else:
        if isinstance(instrument_names, str) or len(instrument_names) != n_inst:
            raise DeepHedgeError(f"'instrument_names' must hold N = {n_inst} names (last axis of "
                                 f"'actions'); got {instrument_names!r}")
        names = [str(s) for s in instrument_names]

    if times is None:
        x = np.arange(t_steps, dtype=np.float64)
        x_label = "time step"
    else:
        x = _as_samples(times, "times")
        if x.size != t_steps:
            raise DeepHedgeError(f"'times' must have T = {t_steps} values (first axis of "
                                 f"'actions'); got {x.size}")
        x_label = "time"

    fig = Figure(figsize=(8.0, 1.0 + 2.4 * n_inst))
    axes = fig.subplots(n_inst, 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        for i in range(shown.shape[1]):
            ax.plot(x, shown[:, i, j], drawstyle="steps-post", color=f"C{i % 10}",
                    linewidth=1.2, label=f"path {i}")
        ax.axhline(0.0, color="0.3", linewidth=0.7, linestyle=":")
        ax.set_title(names[j], fontsize="medium")
        ax.set_ylabel("position")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(x_label)
    axes[0].legend(loc="best", fontsize="small", ncols=min(shown.shape[1], 5))
    fig.suptitle(title if title is not None else "Hedge positions on sample paths")
    fig.tight_layout()
    return _save(fig, out)


# --------------------------------------------------------------------------------------------
# learning curves


def plot_learning_curves(history, path: PathLike, log_y: bool = False,
                         title: Optional[str] = None) -> str:
    """Training curves, one subplot per metric, validation dashed over training.

    Args:
      history: ``{metric: [per-epoch values]}`` such as Keras ``History.history`` (a History
        object itself is accepted too).  ``"val_<m>"`` is drawn dashed in the subplot of
        ``"<m>"``, in the same color.  Values are plotted against epochs 1, 2, ...; NaN or inf
        values (a diverged run) are left as gaps rather than rejected.
      path: output .png file; parent directories are created.
      log_y: logarithmic y axes.  A subplot with values <= 0 (e.g. a negative entropic-risk
        loss) gets a symmetric-log axis instead, labelled "symlog".
      title: figure title; default "Learning curves".

    Returns:
      `path` as a string.
    """
    out = _check_path(path)
    if not isinstance(history, Mapping) and isinstance(getattr(history, "history", None), Mapping):
        history = history.history
    if not isinstance(history, Mapping):
        raise DeepHedgeError("'history' must be a mapping {metric: [values per epoch]} or a "
                             f"Keras History; got {type(history).__name__}")
    curves = {}
    for key, values in history.items():
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DeepHedgeError(f"'history[{key!r}]' must be a list of numbers") from e
        if arr.ndim == 0:
            arr = arr[None]
        if arr.ndim != 1:
            raise DeepHedgeError(f"'history[{key!r}]' must be 1-D (one value per epoch); "
                                 f"got shape {arr.shape}")
        if arr.size:
            curves[str(key)] = np.where(np.isfinite(arr), arr, np.nan)
    if not curves:
        raise DeepHedgeError("'history' holds no values to plot")

    # Group "m" with "val_m"; a lone "val_m" gets its own subplot.
    groups: dict[str, list[str]] = {}
    for key in curves:
        base = key[4:] if key.startswith("val_") and key[4:] in curves else key
        groups.setdefault(base, []).append(key)

    fig = Figure(figsize=(8.0, 1.0 + 2.6 * len(groups)))
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    for g, (ax, (base, keys)) in enumerate(zip(axes, groups.items())):
        color = f"C{g % 10}"
        for key in sorted(keys, key=lambda k: k.startswith("val_")):
            y = curves[key]
            epochs = np.arange(1, y.size + 1)
            is_val = key.startswith("val_")
            # Markers keep single-epoch curves and isolated values between NaN gaps visible.
            ax.plot(epochs, y, color=color, linestyle="--" if is_val else "-", linewidth=1.4,
                    marker="." if y.size <= 50 else None, label=key)
        scale_note = ""
        if log_y:
            finite = np.concatenate([curves[k][np.isfinite(curves[k])] for k in keys])
            if finite.size and np.all(finite > 0):
                ax.set_yscale("log")
            elif finite.size:
                nonzero = np.abs(finite[finite != 0])
                ax.set_yscale("symlog", linthresh=float(nonzero.min()) if nonzero.size else 1.0)
                scale_note = " (symlog)"
        ax.set_ylabel(base + scale_note)
        ax.legend(loc="best", fontsize="small")
        ax.grid(True, alpha=0.3, which="both" if log_y else "major")
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title if title is not None else "Learning curves")
    fig.tight_layout()
    return _save(fig, out)


# --------------------------------------------------------------------------------------------
# implied-vol fit of a calibration


def plot_implied_vol_fit(quotes, path: PathLike, title: Optional[str] = None) -> str:
    """Model implied vols against each maturity's bid/ask quotes, one subplot per expiry.

    Args:
      quotes: a table (``pandas.DataFrame``) with columns ``expiry``, ``strike``, ``forward``,
        ``bid_iv``, ``ask_iv`` and ``model_iv`` (annualised vols), such as
        :attr:`deephedge_tf.pricing.calibration.HestonCalibration.quotes`.  The x axis is
        log-moneyness log(K / F); the spread is drawn as a vertical bar per quote, in vol points.
      path: output .png file; parent directories are created.
      title: figure title; default "Implied-vol fit".

    Returns:
      `path` as a string.
    """
    out = _check_path(path)
    needed = ("expiry", "strike", "forward", "bid_iv", "ask_iv", "model_iv")
    missing = [c for c in needed if c not in getattr(quotes, "columns", ())]
    if missing:
        raise DeepHedgeError(f"'quotes' must be a table with columns {list(needed)}; missing {missing}")
    expiries = list(dict.fromkeys(quotes["expiry"]))
    if not expiries:
        raise DeepHedgeError("'quotes' holds no rows to plot")
    cols = min(2, len(expiries))
    rows = math.ceil(len(expiries) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, expiry in zip(axes, expiries):
        q = quotes[quotes["expiry"] == expiry].sort_values("strike")
        x = np.log(q["strike"].to_numpy() / q["forward"].to_numpy())
        bid, ask = 100 * q["bid_iv"].to_numpy(), 100 * q["ask_iv"].to_numpy()
        ax.vlines(x, bid, ask, color="0.35", linewidth=2.0, label="bid/ask")
        ax.plot(x, 100 * q["model_iv"].to_numpy(), color="C3", linewidth=1.3, label="model")
        inside = float(np.mean((q["model_iv"] >= q["bid_iv"]) & (q["model_iv"] <= q["ask_iv"])))
        ax.set_title(f"{expiry}: {100 * inside:.0f}% of {len(q)} quotes inside the spread", fontsize="small")
        ax.set_xlabel("log(K / F)")
        ax.set_ylabel("implied vol (%)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    for ax in axes[len(expiries):]:
        ax.set_visible(False)
    fig.suptitle(title if title is not None else "Implied-vol fit", fontsize="medium")
    fig.tight_layout()
    return _save(fig, out)


# --------------------------------------------------------------------------------------------
# cumulative PnL of a backtest


def plot_cumulative_pnl(dates, strategies: Mapping, path: PathLike, title: Optional[str] = None) -> str:
    """Cumulative PnL of several strategies over consecutive windows, against each window's start date.

    Args:
      dates: ``[W]`` window start dates (anything matplotlib plots on an axis, e.g. a DatetimeIndex).
      strategies: ``{name: [W] PnL per window}`` (currency units), in date order.
      path: output .png file; parent directories are created.
      title: figure title; default "Cumulative PnL over the windows".

    Returns:
      `path` as a string.
    """
    out = _check_path(path)
    if not isinstance(strategies, Mapping) or not strategies:
        raise DeepHedgeError("'strategies' must be a non-empty mapping {name: [W] PnL per window}")
    n = len(dates)
    fig = Figure(figsize=(8.0, 3.6))
    ax = fig.subplots()
    for name, pnl in strategies.items():
        pnl = np.asarray(pnl, dtype=np.float64)
        if pnl.shape != (n,):
            raise DeepHedgeError(f"'strategies[{name!r}]' must have one value per date ({n}); got shape {pnl.shape}")
        ax.plot(dates, np.cumsum(pnl), linewidth=1.3, label=name)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_ylabel("cumulative PnL")
    ax.set_xlabel("window start")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.suptitle(title if title is not None else "Cumulative PnL over the windows", fontsize="medium")
    fig.tight_layout()
    return _save(fig, out)
