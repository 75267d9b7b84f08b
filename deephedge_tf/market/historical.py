"""Historical markets: paths cut from, or resampled from, a real daily price series.

Two ways to turn one price series into a batch of :class:`~deephedge_tf.market.paths.MarketPaths`:

* :meth:`HistoricalMarket.rolling_windows` -- every window of ``steps + 1`` consecutive prices (the
  real paths, overlapping, as many as the series allows);
* :meth:`HistoricalMarket.block_bootstrap` -- any number of synthetic paths glued together from
  blocks of consecutive real daily log returns (circular block bootstrap), which keeps the
  short-range dependence of returns (volatility clustering inside a block) that an i.i.d.
  resample would destroy.

Observables (same definitions for both, so a policy sees the same inputs either way):

* ``variance[k]`` -- annualised realised variance known at ``t_k``: the mean of the squared daily
  log returns over the ``vol_window`` days ending at ``t_k``, divided by ``dt``.  Only returns up to
  ``t_k`` enter (no look-ahead).  At the start of a path the window reaches back before ``t_0``
  into returns that precede the path (see each method for which ones).
* ``integrated_variance[k]`` -- sum of the squared log returns of the path from ``t_0`` to ``t_k``
  (0 at ``t_0``): the historical counterpart of ``int_0^{t_k} v ds`` (dimensionless, not
  annualised).
* ``features["realized_vol"]`` -- ``sqrt(variance)``, annualised volatility.

The shipped series ``data/sp500.csv`` (daily S&P 500 closes, 1999-2018; see ``data/README.md``) is
loaded by :func:`load_sp500`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from deephedge_tf.dtypes import as_float_dtype
from deephedge_tf.errors import DataError
from deephedge_tf.market import random as mrandom
from deephedge_tf.market.paths import MarketPaths
from deephedge_tf.validation import check_int

__all__ = [
    "HistoricalMarket",
    "HistoricalPaths",
    "load_price_series",
    "load_sp500",
    "sp500_path",
]

# Trading days per year: the default step (dt = 1/252 years) for daily data.
TRADING_DAYS_PER_YEAR = 252


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _row_label(i: int, dates: Optional[pd.Series] = None) -> str:
    """'row 3 (date 1999-01-06)' for 0-based data row ``i`` (rows count from 1 after the header)."""
    label = f"row {i + 1}"
    if dates is not None:
        label += f" (date {dates.iloc[i]})"
    return label


def load_price_series(
    path,
    date_column: str = "date",
    price_column: str = "close",
    min_rows: int = 2,
    date_format: str = "ISO8601",
) -> pd.Series:
    """Loads a daily price series from a CSV file and checks it.

    Args:
      path: CSV file with a header line.
      date_column: name of the date column.
      price_column: name of the price column (prices in currency units or index points, > 0).
      min_rows: fewest price rows accepted (2 gives at least one return).
      date_format: format for :func:`pandas.to_datetime`; the default accepts ISO 8601
        (``YYYY-MM-DD``) dates only, so that day/month order is never guessed.

    Returns:
      ``pandas.Series`` of float64 prices, shape ``[n]``, named ``price_column``, with a
      ``DatetimeIndex`` named ``date_column`` that is strictly increasing.

    Raises:
      DataError: naming the file and the problem (missing file, unreadable CSV, missing column,
        unparseable date, missing/non-finite/non-positive price, unsorted or duplicate dates,
        too few rows), with the offending row and date where there is one.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "prices.csv")
    >>> _ = open(path, "w").write("date,close\\n2024-01-02,100.0\\n2024-01-03,101.5\\n2024-01-04,99.0\\n")
    >>> load_price_series(path).to_list()
    [100.0, 101.5, 99.0]
    >>> _ = open(path, "w").write("date,close\\n2024-01-02,100.0\\n2024-01-03,101.5\\n2024-01-04,-1\\n")
    >>> load_price_series(path)
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.DataError: price file '...prices.csv': price -1 in column 'close' at row 3 (date 2024-01-04) is not positive; prices must be > 0
    """
    path = Path(path)
    where = f"price file {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    try:
        # Everything as text, no NA guessing: bad values are reported as they appear in the file.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not a readable CSV file ({e})") from e

    columns = [str(c) for c in frame.columns]
    for column, role in ((date_column, "date"), (price_column, "price")):
        if column not in frame.columns:
            raise DataError(f"{where}: no {role} column {column!r}; columns present: {columns}")

    raw_dates = frame[date_column].str.strip()
    raw_prices = frame[price_column].str.strip()
    if len(frame) < min_rows:
        raise DataError(f"{where}: has {len(frame)} price row(s); at least {min_rows} are needed")

    try:
        dates = pd.to_datetime(raw_dates, format=date_format, errors="coerce")
    except (ValueError, TypeError) as e:  # e.g. mixed time-zone offsets
        raise DataError(f"{where}: dates in column {date_column!r} cannot be parsed ({e})") from e
    if dates.dt.tz is not None:
        raise DataError(
            f"{where}: dates in column {date_column!r} carry a time zone; give plain calendar "
            "dates (YYYY-MM-DD)"
        )
    bad = np.flatnonzero(dates.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: unparseable date {raw_dates.iloc[i]!r} in column {date_column!r} at "
            f"{_row_label(i)}; expected format {date_format} (e.g. 1999-01-04)"
            + (f" ({bad.size} bad dates in all)" if bad.size > 1 else "")
        )

    prices = pd.to_numeric(raw_prices, errors="coerce").to_numpy(dtype=np.float64)
    shown_dates = dates.dt.strftime("%Y-%m-%d")
    bad = np.flatnonzero(~np.isfinite(prices))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: price {raw_prices.iloc[i]!r} in column {price_column!r} at "
            f"{_row_label(i, shown_dates)} is missing or not a finite number"
        )
    bad = np.flatnonzero(prices <= 0)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: price {raw_prices.iloc[i]} in column {price_column!r} at "
            f"{_row_label(i, shown_dates)} is not positive; prices must be > 0"
        )

    # Strictly increasing dates: a duplicate would make a zero-length step, a decrease a negative
    # one.
    steps = np.diff(dates.to_numpy().astype("datetime64[ns]").astype(np.int64))
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0])
        kind = "duplicate date" if steps[i] == 0 else "dates out of order"
        raise DataError(
            f"{where}: {kind}: {_row_label(i + 1, shown_dates)} follows "
            f"{_row_label(i, shown_dates)}; dates must be strictly increasing"
        )

    index = pd.DatetimeIndex(dates.to_numpy(), name=date_column)
    return pd.Series(prices, index=index, name=price_column, dtype=np.float64)


def sp500_path() -> Path:
    """Path of the shipped ``data/sp500.csv`` (resolved relative to the repository checkout).

    Raises:
      DataError: if the file is not there (e.g. the package was installed without the repository's
        ``data/`` folder; regenerate it with ``python scripts/refresh_sp500.py``).
    """
    path = Path(__file__).resolve().parents[2] / "data" / "sp500.csv"
    if not path.is_file():
        raise DataError(
            f"price file {str(path)!r}: file not found; the S&P 500 series ships in the "
            "repository's data/ folder (not in an installed wheel); run "
            "`python scripts/refresh_sp500.py` to recreate it"
        )
    return path


def load_sp500() -> pd.Series:
    """The shipped daily S&P 500 closes (index points), 1999-01-04 .. 2018-12-31, as a float64
    ``pandas.Series`` with a ``DatetimeIndex`` (see ``data/README.md`` for provenance)."""
    return load_price_series(sp500_path())


# ---------------------------------------------------------------------------------------------
# Market
# ---------------------------------------------------------------------------------------------
def _check_int(name: str, value, lo: int, hi: Optional[int] = None, why: str = "") -> int:
    return check_int("HistoricalMarket", name, value, lo, hi, why)


def _is_real(x) -> bool:
    """True for Python and numpy real scalars (not bool)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class HistoricalMarket:
    """Paths from one daily price series: rolling windows and block-bootstrap resamples.

    Args:
      prices: ``pandas.Series`` of ``n`` prices (> 0, finite), in time order; the index (e.g. the
        ``DatetimeIndex`` from :func:`load_price_series`) labels the windows.
      dt: length in years of one step between consecutive prices (``1/252`` for trading days).
      vol_window: number of trailing daily returns averaged by the realised-variance estimate.

    Notation: ``r[j] = log(S[j + 1] / S[j])``, ``j = 0 .. N - 1`` with ``N = n - 1``, are the daily
    log returns of the series.

    >>> import numpy as np, pandas as pd
    >>> returns = np.tile([0.01, -0.01], 30)  # daily log returns of +-1%: realised variance 1e-4 / dt
    >>> prices = pd.Series(100.0 * np.exp(np.cumsum(returns)), index=pd.bdate_range("2024-01-01", periods=60))
    >>> paths = HistoricalMarket(prices, vol_window=5).rolling_windows(10)
    >>> tuple(paths.spot.shape), round(float(paths.variance[0, 0]), 6)  # 45 windows of 11 prices; 1e-4 * 252
    ((11, 45), 0.0252)
    """

    def __init__(
        self, prices: pd.Series, dt: float = 1.0 / TRADING_DAYS_PER_YEAR, vol_window: int = 20
    ):
        if not isinstance(prices, pd.Series):
            raise ValueError(f"prices must be a pandas.Series; got {type(prices).__name__}")
        values = np.asarray(prices.to_numpy(), dtype=np.float64)
        if values.ndim != 1 or values.size < 3:
            raise ValueError(f"prices must hold at least 3 prices; got {values.size}")
        bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"prices must be finite and > 0; got {values[i]!r} at {prices.index[i]!r}"
            )
        if not (_is_real(dt) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number of years > 0; got {dt!r}")
        n_returns = values.size - 1
        # Leave at least one step for a rolling window after the first full variance window.
        self._vol_window = _check_int(
            "vol_window", vol_window, 1, n_returns - 1, f" (the series has {n_returns} returns)"
        )
        self._prices = prices.astype(np.float64)
        self._values = values
        self._dt = float(dt)
        self._log_prices = np.log(values)
        self._returns = np.diff(self._log_prices)  # [N]
        # _cum_sq[k] = sum of r[j]**2 for j < k: squared returns up to price index k.  Differences
        # of this cumulative sum give every trailing window and every path's integrated variance.
        self._cum_sq = np.concatenate([[0.0], np.cumsum(self._returns**2)])  # [n]

    # -- properties ---------------------------------------------------------------------------
    @property
    def prices(self) -> pd.Series:
        """The price series (float64), as given."""
        return self._prices

    @property
    def dt(self) -> float:
        """Step length in years."""
        return self._dt

    @property
    def vol_window(self) -> int:
        """Trailing returns in the realised-variance estimate."""
        return self._vol_window

    @property
    def num_returns(self) -> int:
        """Number ``N = n - 1`` of daily log returns in the series."""
        return int(self._returns.size)

    @property
    def log_returns(self) -> np.ndarray:
        """``[N]`` float64 daily log returns ``log(S[j + 1] / S[j])`` (a copy)."""
        return self._returns.copy()

    # -- rolling windows ----------------------------------------------------------------------
    def max_window_steps(self) -> int:
        """Largest ``steps`` :meth:`rolling_windows` accepts: ``N - vol_window``."""
        return self.num_returns - self._vol_window

    def _window_starts(self, steps: int, stride: int):
        """``([B] price indices of each window's first price, validated steps)``."""
        w = self._vol_window
        steps = _check_int(
            "steps",
            steps,
            1,
            self.max_window_steps(),
            f" (the series has {self._values.size} prices, of which the first vol_window={w} "
            "returns only serve as history for the first variance estimate)",
        )
        stride = _check_int("stride", stride, 1)
        # The first window starts after vol_window returns so that its variance at t_0 is a full
        # trailing-window estimate; the last ends on the series' last price (or before, by stride).
        return np.arange(w, self._values.size - steps, stride), steps

    def window_start_dates(self, steps: int, stride: int = 1) -> pd.Index:
        """``[B]`` index labels (dates) of ``t_0`` of each window of :meth:`rolling_windows`, in
        batch order; use them to split windows into train/test periods without overlap."""
        starts, _ = self._window_starts(steps, stride)
        return self._prices.index[starts]

    def rolling_windows(
        self, steps: int, stride: int = 1, normalize: bool = True, dtype=tf.float32
    ) -> MarketPaths:
        """Every window of ``steps + 1`` consecutive prices, as one path each.

        Window ``b`` covers price indices ``k_b .. k_b + steps`` with
        ``k_b = vol_window + b * stride``; windows start every ``stride`` prices until the series
        ends.  The first ``vol_window`` returns are kept as history so that ``variance`` at ``t_0``
        of every window is estimated from the ``vol_window`` real returns that precede the window
        (no look-ahead, no partial windows).

        Args:
          steps: number of steps ``T`` per path, in ``[1, N - vol_window]``.
          stride: distance in days between the starts of consecutive windows (>= 1); windows overlap
            when ``stride < steps``.
          normalize: divide each window by its first price, so every path starts at ``s0 = 1`` and
            paths from different price levels are comparable.  Variances are unaffected.
          dtype: float32 or float64 (computed in float64, then cast).

        Returns:
          :class:`MarketPaths` with ``spot``, ``variance``, ``integrated_variance`` and
          ``features["realized_vol"]`` of shape ``[T + 1, B]``, with
          ``B = ceil((N - vol_window - T + 1) / stride)``.
        """
        dtype = as_float_dtype(dtype)
        starts, steps = self._window_starts(steps, stride)
        idx = starts[None, :] + np.arange(steps + 1)[:, None]  # [T + 1, B] price indices
        spot = self._values[idx]
        if normalize:
            spot = spot / spot[:1]
        w = self._vol_window
        variance = (self._cum_sq[idx] - self._cum_sq[idx - w]) / (w * self._dt)
        integrated = self._cum_sq[idx] - self._cum_sq[starts][None, :]
        return self._as_paths(spot, variance, integrated, dtype)

    # -- block bootstrap ----------------------------------------------------------------------
    def block_bootstrap(
        self,
        num_paths: int,
        steps: int,
        block_length: int = 20,
        seed=0,
        s0: float = 1.0,
        start: int = 0,
        dtype=tf.float32,
    ) -> MarketPaths:
        """Synthetic paths made of blocks of consecutive real daily log returns.

        Scheme: *circular block bootstrap* with fixed-length blocks.  Each path's ``T`` returns are
        ``ceil(T / block_length)`` blocks of ``block_length`` consecutive returns (the last block
        cut to fit), each block starting at an independent uniform index ``u`` in ``[0, N)`` of the
        return series and reading ``r[u], r[u + 1], ...`` with indices taken modulo ``N`` (the
        series is wrapped into a circle).  Wrapping gives every return the same chance ``1/N`` at
        every step, so the bootstrapped returns have exactly the series' mean and variance in
        expectation (a non-circular moving-block bootstrap under-samples both ends of the series).
        Fixed-length blocks (rather than the stationary bootstrap's random lengths) keep block
        boundaries at known steps ``0, L, 2L, ...``.  Dependence within a block is real; across
        block boundaries it is lost.

        Variance at the start: the trailing window at ``t_0`` holds the ``vol_window`` returns that
        precede the first block in the series, ``r[u_0 - vol_window .. u_0 - 1]`` (circularly),
        i.e. the real history that led into the first block; later ``variance[k]`` slides over that
        history followed by the path's own returns, exactly as in :meth:`rolling_windows`.

        Randomness is stateless and split-invariant: path ``i`` depends only on ``seed``, ``i``,
        ``steps`` and ``block_length``, so paths ``[start, start + num_paths)`` are the same however
        a range is split into calls (drawn per group of ``random.BLOCK_SIZE`` paths with
        ``stateless_fold_in``, as the simulators do).

        Args:
          num_paths: number of paths ``B`` (>= 1).
          steps: number of daily steps ``T`` per path (>= 1; may exceed the series length).
          block_length: returns per block ``L``, in ``[1, N]``.
          seed: int or pair of ints.
          s0: starting price of every path (> 0).
          start: index of the first path in the global stream (>= 0).
          dtype: float32 or float64 (computed in float64, then cast).

        Returns:
          :class:`MarketPaths` with ``[T + 1, B]`` tensors ``spot`` (``spot[0] = s0``),
          ``variance``, ``integrated_variance`` and ``features["realized_vol"]``.
        """
        dtype = as_float_dtype(dtype)
        num_paths = _check_int("num_paths", num_paths, 1)
        steps = _check_int("steps", steps, 1)
        n_ret = self.num_returns
        block_length = _check_int(
            "block_length", block_length, 1, n_ret, f" (the series has {n_ret} returns)"
        )
        start = _check_int("start", start, 0)
        if not (_is_real(s0) and math.isfinite(s0) and s0 > 0):
            raise ValueError(f"s0 must be a finite price > 0; got {s0!r}")

        block_starts = self._block_starts(seed, start, num_paths, steps, block_length)  # [B, nb]
        w = self._vol_window
        # Index of every return in the path (circular), then the vol_window returns before block 0.
        offsets = np.arange(steps)
        path_idx = (
            block_starts[:, offsets // block_length] + offsets % block_length
        ) % n_ret  # [B, T]
        hist_idx = (block_starts[:, :1] - w + np.arange(w)) % n_ret  # [B, w]
        returns = self._returns[path_idx].T  # [T, B]
        history_sq = self._returns[hist_idx].T ** 2  # [w, B]

        log_spot = np.concatenate([np.zeros((1, num_paths)), np.cumsum(returns, axis=0)])
        spot = s0 * np.exp(log_spot)
        # Cumulative squared returns over [history, path]: trailing sums of any w consecutive ones
        # are differences of this array.
        cum = np.concatenate(
            [np.zeros((1, num_paths)), np.cumsum(np.concatenate([history_sq, returns**2]), axis=0)]
        )
        variance = (cum[w:] - cum[: steps + 1]) / (w * self._dt)  # [T + 1, B]
        integrated = cum[w:] - cum[w : w + 1]
        return self._as_paths(spot, variance, integrated, dtype)

    def _block_starts(
        self, seed, start: int, num_paths: int, steps: int, block_length: int
    ) -> np.ndarray:
        """``[B, ceil(T / L)]`` int64 block start indices in ``[0, N)`` for paths
        ``[start, start + B)``."""
        n_blocks = -(-steps // block_length)
        # A named sub-stream: the same seed given to a simulator draws unrelated numbers.
        base = mrandom.sub_seed(seed, "historical.block_bootstrap")
        parts = []
        for _, group_seed, lo, hi in mrandom.block_seeds(base, start, num_paths):
            # Drawn for the whole group of BLOCK_SIZE paths, then sliced: path i's draws do not
            # depend on which other paths were requested.
            u = tf.random.stateless_uniform(
                [mrandom.BLOCK_SIZE, n_blocks],
                group_seed,
                minval=0,
                maxval=self.num_returns,
                dtype=tf.int64,
            )
            parts.append(u.numpy()[lo:hi])
        return np.concatenate(parts, axis=0)

    # -- helpers ------------------------------------------------------------------------------
    def _as_paths(self, spot, variance, integrated, dtype) -> MarketPaths:
        """float64 numpy ``[T + 1, B]`` arrays -> MarketPaths of ``dtype`` tensors."""
        # Exact cancellation in cumulative-sum differences can leave -1e-20 where a window's returns
        # are all zero; clip so sqrt stays real.
        variance = np.maximum(variance, 0.0)
        integrated = np.maximum(integrated, 0.0)
        to = lambda x: tf.constant(x, dtype=dtype)  # noqa: E731
        return MarketPaths(
            dt=self._dt,
            spot=to(spot),
            variance=to(variance),
            integrated_variance=to(integrated),
            features={"realized_vol": to(np.sqrt(variance))},
        )

    def __repr__(self) -> str:
        index = self._prices.index
        first, last = index[0], index[-1]
        if isinstance(index, pd.DatetimeIndex):
            first, last = first.date(), last.date()
        return (
            f"HistoricalMarket({self._values.size} prices, {first} .. {last}, "
            f"dt={self._dt:.6g}, vol_window={self._vol_window})"
        )


class HistoricalPaths:
    """A market (see :mod:`deephedge_tf.market.models`) served from one price series: block-bootstrap
    resamples (``method="bootstrap"``, a stream of as many paths as asked for) or the series' own
    windows (``method="rolling"``, finite: at most every window, normalised to start at ``s0``).

    Real data has no pricing model, so there is no ``vanilla_price`` (no reference price); where
    instruments need option premiums they are Black-Scholes at the realised variance
    (``premium_model``, ``option_pricer``).

    Args:
      series: a :class:`HistoricalMarket` (or a ``pandas.Series`` of prices, wrapped with ``dt`` and
        ``vol_window``).
      steps: steps per path.  s0: the paths' initial spot.  method, block_length, stride: as above.
      seed: the bootstrap stream's seed.  dtype: ``"float32"`` or ``"float64"``.

    >>> import numpy as np, pandas as pd
    >>> returns = np.tile([0.01, -0.01], 30)  # daily log returns of +-1%: realised variance 1e-4 / dt
    >>> prices = pd.Series(100.0 * np.exp(np.cumsum(returns)), index=pd.bdate_range("2024-01-01", periods=60))
    >>> market = HistoricalPaths(prices, steps=10, s0=100.0, vol_window=5)  # block bootstrap
    >>> paths = market.simulate(8)
    >>> tuple(paths.spot.shape), float(paths.spot[0, 0]), round(float(paths.variance[5, 3]), 6)
    ((11, 8), 100.0, 0.0252)
    """

    pricing_method = None

    def __init__(self, series, steps: int, dt: float = 1.0 / TRADING_DAYS_PER_YEAR, s0: float = 1.0,
                 method: str = "bootstrap", block_length: int = 20, stride: int = 1, vol_window: int = 20,
                 seed: int = 0, dtype: str = "float32"):
        if method not in ("bootstrap", "rolling"):
            raise ValueError(f"HistoricalPaths: method must be 'bootstrap' or 'rolling'; got {method!r}")
        self.series = series if isinstance(series, HistoricalMarket) else HistoricalMarket(series, dt, vol_window)
        self.steps = _check_int("steps", steps, 1)
        self.dt, self.s0, self.method = self.series.dt, float(s0), method
        self.block_length, self.stride, self.seed, self.dtype = block_length, stride, seed, dtype
        self._windows = None

    def simulate(self, num_paths: int, start: int = 0, seed=None) -> MarketPaths:
        if self.method == "bootstrap":
            return self.series.block_bootstrap(num_paths, self.steps, block_length=self.block_length,
                                               seed=self.seed if seed is None else seed, s0=self.s0,
                                               start=start, dtype=self.dtype)
        if self._windows is None:
            self._windows = self.series.rolling_windows(self.steps, stride=self.stride, normalize=True,
                                                        dtype=self.dtype)
        total = int(self._windows.spot.shape[1])
        if start >= total:
            raise ValueError(f"rolling windows: start {start} >= the {total} windows of the series")
        paths = self._windows.slice_paths(start, min(start + num_paths, total))
        return paths if self.s0 == 1.0 else dataclasses.replace(paths, spot=paths.spot * self.s0)

    def premium_model(self, moneyness, years):
        from deephedge_tf.instruments.hedges import BlackScholesPremiums

        return BlackScholesPremiums(moneyness, years)

    def option_pricer(self):
        from deephedge_tf.instruments.hedges import black_scholes_pricer

        return black_scholes_pricer
