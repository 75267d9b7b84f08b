"""Heston calibration to an option chain with the library's own Fourier pricer (float64, gradients).

Objective: the vega-weighted squared price error, which to first order is the squared error in
implied volatility, averaged over the quotes::

    loss(p) = mean_i [ (C_heston(F_i, K_i, T_i; p) - C_black(F_i, K_i, T_i, mid_iv_i)) / vega_i ]^2

with forward (undiscounted) prices, so that the discount factor of each maturity drops out, and
``vega_i`` the Black vega at the mid implied vol.  Dividing by vega, rather than inverting model
prices to implied vols inside the loss, keeps the objective smooth and cheap (no root-finder to
differentiate through).

Parameters are kept in range by TensorFlow Probability bijectors: each parameter is a ``Sigmoid``
image of an unconstrained float64 variable over the box of :data:`BOUNDS`, so the optimiser
(L-BFGS, ``tfp.optimizer.lbfgs_minimize``, with gradients from ``GradientTape`` through the Fourier
integral) never proposes an invalid model.

The fit is reported in implied-vol points (1 point = 0.01 of volatility) against each quote's
bid/ask spread: the model's implied vol is found by bisection on its price.

    >>> from deephedge_tf.market.option_chain import load_spy_chain
    >>> chain = load_spy_chain().thin(10)       # every 10th quote of the four maturities: a quick fit
    >>> fit = calibrate_heston(chain)
    >>> fit.converged, len(fit.quotes), fit.rmse_vol_points < 0.5   # 0.30 on the whole chain (BENCHMARKS.md)
    (True, 45, True)
    >>> -0.95 < fit.params.rho < -0.5          # the equity skew: strongly negative spot-variance correlation
    True
    >>> sorted(fit.params.as_dict())
    ['kappa', 'rho', 'theta', 'v0', 'xi']
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from deephedge_tf.errors import DataError, DeepHedgeError
from deephedge_tf.files import write_atomic
from deephedge_tf.market.option_chain import OptionChain
from deephedge_tf.pricing.black_scholes import bs_implied_vol, bs_price, bs_vega
from deephedge_tf.pricing.heston import heston_price_tf

__all__ = ["BOUNDS", "HestonCalibration", "HestonParams", "calibrate_heston", "load_heston_params"]

NAMES = ("v0", "kappa", "theta", "xi", "rho")
#: Box of each parameter during calibration.  Wide enough for equity indices in any regime we know of
#: (variance up to 1.0 = 100% volatility, half-lives of variance from ~2 weeks to ~70 years); the
#: edges are open, so a parameter that ends near one says the chain does not pin it down.
BOUNDS = {
    "v0": (1e-4, 1.0),
    "kappa": (1e-2, 20.0),
    "theta": (1e-4, 1.0),
    "xi": (1e-2, 5.0),
    "rho": (-0.999, 0.999),
}
#: Start of the search when none is given: a typical equity-index Heston model.
DEFAULT_START = {"v0": 0.04, "kappa": 2.0, "theta": 0.04, "xi": 1.0, "rho": -0.7}


@dataclasses.dataclass(frozen=True)
class HestonParams:
    """Heston parameters (same meaning and units as ``market.heston`` in the config)."""

    v0: float
    kappa: float
    theta: float
    xi: float
    rho: float

    def as_dict(self) -> dict:
        return {name: float(getattr(self, name)) for name in NAMES}


def load_heston_params(path) -> HestonParams:
    """Reads ``params.json`` written by :meth:`HestonCalibration.write` (or by hand: a JSON object with a
    ``"params"`` object holding v0, kappa, theta, xi, rho).

    Raises:
      DataError: naming the file and the field when it is missing, not JSON, or a value is out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file {str(path)!r}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"calibration file {str(path)!r}: not valid JSON ({e})") from None
    params = data.get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise DataError(f"calibration file {str(path)!r}: field 'params': allowed: an object with {list(NAMES)}")
    values = {}
    for name in NAMES:
        value = params.get(name)
        low, high = (-1.0, 1.0) if name == "rho" else (0.0, math.inf)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low <= value <= high) and (name not in ("xi",) or value > 0)
        if not ok:
            allowed = "a number in [-1, 1]" if name == "rho" else ("a number > 0" if name == "xi" else "a number >= 0")
            raise DataError(f"calibration file {str(path)!r}: field 'params.{name}': got {value!r}; allowed: {allowed}")
        values[name] = float(value)
    return HestonParams(**values)


@dataclasses.dataclass(frozen=True)
class HestonCalibration:
    """Result of :func:`calibrate_heston`.

    Attributes:
      params: the calibrated parameters.
      quotes: the chain's quotes with ``mid_iv``, ``model_iv``, ``error_vol_points`` (model - mid, in
        vol points) and ``inside_spread`` (bid <= model <= ask) added.
      by_expiry: per expiry: quotes, ttm, rmse and max |error| in vol points, median spread in vol
        points, share of quotes inside the spread, and of quotes within one spread of it.
      rmse_vol_points: root mean square of ``error_vol_points`` over all quotes.
      converged, iterations, seconds: from the optimiser.
      source: the chain's source.
    """

    params: HestonParams
    quotes: pd.DataFrame
    by_expiry: pd.DataFrame
    rmse_vol_points: float
    converged: bool
    iterations: int
    seconds: float
    source: str

    @property
    def inside_share(self) -> float:
        """Share of all quotes whose model implied vol is inside the bid/ask spread."""
        return float(self.quotes["inside_spread"].mean())

    def write(self, out_dir) -> dict:
        """Writes ``params.json`` (parameters, fit summary, provenance), ``fit.csv`` (per quote),
        ``summary.csv`` (per expiry) and ``fit.png`` into ``out_dir``; returns the paths by name."""
        from deephedge_tf.evaluation.plots import plot_implied_vol_fit

        out = Path(out_dir)
        paths = {name: out / name for name in ("params.json", "fit.csv", "summary.csv", "fit.png")}
        record = {
            "model": "heston",
            "params": self.params.as_dict(),
            "chain": self.source,
            "expiries": list(self.by_expiry.index),
            "rmse_vol_points": self.rmse_vol_points,
            "inside_spread_share": self.inside_share,
            "converged": self.converged,
            "iterations": self.iterations,
            "objective": "vega-weighted squared price error against the mid implied vol (forward prices)",
        }
        write_atomic(paths["params.json"], json.dumps(record, indent=2) + "\n")
        write_atomic(paths["fit.csv"], self.quotes.to_csv(index=False, float_format="%.8g"))
        write_atomic(paths["summary.csv"], self.by_expiry.to_csv(float_format="%.6g"))
        plot_implied_vol_fit(self.quotes, paths["fit.png"], title=f"Heston fit to {Path(self.source).name}")
        return {name: str(p) for name, p in paths.items()}


def _bijectors() -> list:
    import tensorflow_probability as tfp

    return [tfp.bijectors.Sigmoid(low=np.float64(BOUNDS[n][0]), high=np.float64(BOUNDS[n][1])) for n in NAMES]


def _start(initial: Optional[HestonParams]) -> dict:
    start = DEFAULT_START if initial is None else initial.as_dict()
    for name in NAMES:
        low, high = BOUNDS[name]
        if not low < start[name] < high:
            raise DeepHedgeError(f"calibrate_heston: initial.{name} = {start[name]!r}; allowed: inside {BOUNDS[name]}")
    return start


def calibrate_heston(chain: OptionChain, initial: Optional[HestonParams] = None, max_iterations: int = 200,
                     tolerance: float = 1e-10) -> HestonCalibration:
    """Heston parameters that fit ``chain``'s mid implied vols (vega-weighted; module doc).

    Args:
      chain: the quotes (select maturities first with :meth:`OptionChain.select`).
      initial: where the search starts (default :data:`DEFAULT_START`); inside :data:`BOUNDS`.
      max_iterations: L-BFGS iterations at most.
      tolerance: stop when the gradient's largest component (unconstrained coordinates) is below it.
    """
    q = chain.quotes
    forward, strike, ttm = (tf.constant(q[c].to_numpy(), tf.float64) for c in ("forward", "strike", "ttm"))
    is_call = tf.constant(chain.is_call)
    mid = tf.constant(chain.mid_iv, tf.float64)
    target = bs_price(forward, strike, ttm, mid, is_call, dtype=tf.float64)
    vega = bs_vega(forward, strike, ttm, mid, dtype=tf.float64)
    bijectors = _bijectors()

    def params_of(x):
        return [b.forward(x[i]) for i, b in enumerate(bijectors)]

    @tf.function(reduce_retracing=True)
    def loss_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            model = heston_price_tf(forward, strike, ttm, *params_of(x), is_call=is_call)
            residual = (model - target) / vega
            loss = tf.reduce_mean(residual * residual)
        return loss, tape.gradient(loss, x)

    import tensorflow_probability as tfp

    start = _start(initial)
    x0 = tf.constant([float(b.inverse(np.float64(start[n]))) for b, n in zip(bijectors, NAMES)], tf.float64)
    began = time.perf_counter()
    result = tfp.optimizer.lbfgs_minimize(loss_and_gradient, x0, max_iterations=max_iterations,
                                          tolerance=tolerance)
    seconds = time.perf_counter() - began
    params = HestonParams(**{n: float(v) for n, v in zip(NAMES, params_of(result.position))})
    if not np.isfinite(result.objective_value.numpy()):
        raise DeepHedgeError(f"calibrate_heston: the objective is not finite at {params}; the chain "
                             f"{chain.source} may hold quotes the model cannot price")
    quotes = fit_table(chain, params)
    return HestonCalibration(
        params=params, quotes=quotes, by_expiry=_by_expiry(quotes),
        rmse_vol_points=float(np.sqrt(np.mean(quotes["error_vol_points"] ** 2))),
        converged=bool(result.converged.numpy()), iterations=int(result.num_iterations.numpy()),
        seconds=seconds, source=chain.source)


def fit_table(chain: OptionChain, params: HestonParams) -> pd.DataFrame:
    """``chain``'s quotes with the model implied vol of ``params`` and its error against bid/ask."""
    q = chain.quotes
    forward, strike, ttm = (q[c].to_numpy() for c in ("forward", "strike", "ttm"))
    price = heston_price_tf(forward, strike, ttm, *params.as_dict().values(), is_call=chain.is_call)
    model_iv = bs_implied_vol(price, forward, strike, ttm, chain.is_call, dtype=tf.float64).numpy()
    out = q.copy()
    out["mid_iv"] = chain.mid_iv
    out["model_iv"] = model_iv
    out["error_vol_points"] = 100.0 * (model_iv - out["mid_iv"])
    out["inside_spread"] = (model_iv >= q["bid_iv"]) & (model_iv <= q["ask_iv"])
    return out


def _by_expiry(quotes: pd.DataFrame) -> pd.DataFrame:
    spread = quotes["ask_iv"] - quotes["bid_iv"]
    # Distance outside the spread (0 inside), in spreads: 1 means one spread away from bid or ask.
    outside = np.maximum(quotes["bid_iv"] - quotes["model_iv"], quotes["model_iv"] - quotes["ask_iv"]).clip(lower=0)
    frame = quotes.assign(spread_vol_points=100 * spread, within_one_spread=outside <= spread)
    grouped = frame.groupby("expiry", sort=False)
    return pd.DataFrame({
        "quotes": grouped.size(),
        "ttm": grouped["ttm"].first(),
        "rmse_vol_points": grouped["error_vol_points"].agg(lambda e: float(np.sqrt(np.mean(e ** 2)))),
        "max_abs_error_vol_points": grouped["error_vol_points"].agg(lambda e: float(np.max(np.abs(e)))),
        "median_spread_vol_points": grouped["spread_vol_points"].median(),
        "inside_spread_share": grouped["inside_spread"].mean(),
        "within_one_spread_share": grouped["within_one_spread"].mean(),
    })
