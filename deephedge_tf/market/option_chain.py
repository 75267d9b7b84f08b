"""Listed option chains: implied-vol quotes (bid and ask) by maturity and strike, read from a CSV file.

File format (one row per quote; ``data/spy_chain_2022-07-15.csv`` is the shipped example, see
``data/README.md`` for its provenance)::

    expiry,ttm,forward,discount_factor,strike,option_type,bid_iv,ask_iv
    2w,0.056437205212352105,382.83312499999994,0.9988269169205102,342.0,P,0.29607985,0.29801977

* ``expiry`` -- a label of the maturity (any text without commas);
* ``ttm`` -- time to maturity in years (> 0), the same on every row of one expiry;
* ``forward`` -- the underlying's forward price for that maturity (> 0), the same on every row of it;
* ``discount_factor`` -- in (0, 1.5], the same on every row of one expiry;
* ``strike`` (> 0), ``option_type`` (``C`` or ``P``);
* ``bid_iv``, ``ask_iv`` -- Black implied volatilities (annualised, 0.2 = 20%), 0 < bid <= ask.

Prices in this module are **forward** (undiscounted) Black prices: the discount factor multiplies
every option of one maturity alike, so it drops out of an implied-volatility fit.

    >>> chain = load_spy_chain()
    >>> chain.expiries, len(chain.quotes)
    (('2w', '1m', '2m', '6m'), 427)
    >>> round(float(chain.quotes.forward.iloc[0]), 2), chain.underlying
    (382.83, 'SPY')
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from deephedge_tf.errors import DataError

__all__ = ["OptionChain", "load_option_chain", "load_spy_chain", "spy_chain_path"]

COLUMNS = ("expiry", "ttm", "forward", "discount_factor", "strike", "option_type", "bid_iv", "ask_iv")
# Per-expiry columns: one value for every quote of a maturity.
_PER_EXPIRY = ("ttm", "forward", "discount_factor")
# (test, allowed) for the numeric columns.
_RANGES = {
    "ttm": (lambda x: x > 0, "> 0 (years)"),
    "forward": (lambda x: x > 0, "> 0"),
    "discount_factor": (lambda x: (x > 0) & (x <= 1.5), "in (0, 1.5]"),
    "strike": (lambda x: x > 0, "> 0"),
    "bid_iv": (lambda x: (x > 0) & (x < 5), "in (0, 5) (annualised volatility)"),
    "ask_iv": (lambda x: (x > 0) & (x < 5), "in (0, 5) (annualised volatility)"),
}


@dataclasses.dataclass(frozen=True)
class OptionChain:
    """Quotes of one underlying at one time.

    Attributes:
      quotes: one row per quote with the columns of the file (``expiry`` as str, ``option_type`` as
        ``"C"``/``"P"``, the rest float64), in file order.
      underlying: a label (the file name's stem up to the first ``_`` unless given).
      source: where the quotes were read from (a path, or a description).
    """

    quotes: pd.DataFrame
    underlying: str = ""
    source: str = ""

    @property
    def expiries(self) -> tuple:
        """Expiry labels in order of first appearance."""
        return tuple(pd.unique(self.quotes["expiry"]))

    def select(self, expiries) -> "OptionChain":
        """The chain restricted to ``expiries`` (labels); an unknown label raises ``DataError``."""
        unknown = [e for e in expiries if e not in self.expiries]
        if unknown or not expiries:
            raise DataError(f"option chain {self.source}: expiries {list(expiries)!r}: allowed: a non-empty "
                            f"subset of {list(self.expiries)}")
        keep = self.quotes["expiry"].isin(list(expiries))
        return dataclasses.replace(self, quotes=self.quotes[keep].reset_index(drop=True))

    def thin(self, step: int) -> "OptionChain":
        """Every ``step``-th quote of each expiry (the first kept), for a quick look at a dense chain."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise DataError(f"option chain {self.source}: thin step {step!r}; allowed: an integer >= 1")
        keep = self.quotes.groupby("expiry", sort=False).cumcount() % step == 0
        return dataclasses.replace(self, quotes=self.quotes[keep].reset_index(drop=True))

    @property
    def mid_iv(self) -> np.ndarray:
        return 0.5 * (self.quotes["bid_iv"].to_numpy() + self.quotes["ask_iv"].to_numpy())

    @property
    def is_call(self) -> np.ndarray:
        return self.quotes["option_type"].to_numpy() == "C"


def _fail(path, what: str) -> DataError:
    return DataError(f"option chain {str(path)!r}: {what}")


def load_option_chain(path, underlying: str = "") -> OptionChain:
    """Reads and checks an option-chain CSV (format in the module doc).

    Raises:
      DataError: naming the file, the column and the first offending row (1-based data row) when the
        file is missing, a column is missing, a value is not a number, out of range, or differs within
        one expiry where it must be constant; nothing is repaired or dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    try:
        frame = pd.read_csv(path, dtype={"expiry": str, "option_type": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not a readable CSV ({e.__class__.__name__}: {e})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise _fail(path, f"missing columns {missing}; required: {list(COLUMNS)}")
    if len(frame) == 0:
        raise _fail(path, "no quotes")
    frame = frame[list(COLUMNS)].copy()
    for column, (test, allowed) in _RANGES.items():
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(values) & test(values))
        if bad.any():
            row = int(np.argmax(bad))
            raise _fail(path, f"column {column!r}, row {row + 1}: got {frame[column].iloc[row]!r}; "
                        f"allowed: a number {allowed}")
        frame[column] = values
    types = frame["option_type"].str.strip().str.upper()
    bad = ~types.isin(["C", "P"])
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise _fail(path, f"column 'option_type', row {row + 1}: got {frame['option_type'].iloc[row]!r}; "
                    "allowed: C or P")
    frame["option_type"] = types
    frame["expiry"] = frame["expiry"].str.strip()
    crossed = frame["bid_iv"].to_numpy() > frame["ask_iv"].to_numpy()
    if crossed.any():
        row = int(np.argmax(crossed))
        raise _fail(path, f"column 'bid_iv', row {row + 1}: bid {frame['bid_iv'].iloc[row]} above ask "
                    f"{frame['ask_iv'].iloc[row]}; allowed: bid_iv <= ask_iv")
    for column in _PER_EXPIRY:
        spread = frame.groupby("expiry", sort=False)[column].agg(lambda x: x.max() - x.min())
        uneven = spread[spread > 1e-12 * frame[column].abs().max()]
        if len(uneven):
            raise _fail(path, f"column {column!r} differs within expiry {uneven.index[0]!r}; allowed: one "
                        "value per expiry")
    duplicated = frame.duplicated(["expiry", "strike", "option_type"])
    if duplicated.any():
        row = int(np.argmax(duplicated.to_numpy()))
        raise _fail(path, f"row {row + 1}: a second quote for expiry {frame['expiry'].iloc[row]!r}, strike "
                    f"{frame['strike'].iloc[row]}, type {frame['option_type'].iloc[row]}; allowed: one per "
                    "(expiry, strike, option_type)")
    return OptionChain(quotes=frame.reset_index(drop=True), underlying=underlying or path.stem.split("_")[0].upper(),
                       source=str(path))


def spy_chain_path() -> Path:
    """Path of the shipped SPY chain of 15 July 2022 (``data/spy_chain_2022-07-15.csv``)."""
    path = Path(__file__).resolve().parents[2] / "data" / "spy_chain_2022-07-15.csv"
    if not path.is_file():
        raise _fail(path, "file not found; the SPY chain ships in the repository's data/ folder (not in an "
                    "installed wheel); run `python scripts/refresh_spy_chain.py` to recreate it")
    return path


def load_spy_chain() -> OptionChain:
    """The shipped SPY option chain (15 July 2022, 16:23; maturities 2w, 1m, 2m, 6m; 427 quotes)."""
    return load_option_chain(spy_chain_path(), underlying="SPY")
