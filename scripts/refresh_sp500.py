"""Regenerates ``data/sp500.csv`` (daily S&P 500 closes) from the copy shipped inside ``arch``.

Usage (from the repository root; ``arch`` is in the ``test`` extra)::

    python scripts/refresh_sp500.py            # writes data/sp500.csv
    python scripts/refresh_sp500.py OUT.csv    # writes somewhere else

The output has two columns, ``date`` (ISO 8601, ascending, unique) and ``close`` (the "Adj Close"
column of ``arch.data.sp500.load()``, index points, 6 decimals).  The script is deterministic: the
same ``arch`` version gives a byte-identical file, so the sha256 in ``data/README.md`` stays valid
until ``arch`` changes its data.  After a refresh, update that sha256 and the row count/date range.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "sp500.csv"


def build_csv() -> str:
    """The text of ``sp500.csv`` built from ``arch.data.sp500`` (raises if arch is missing or the
    data is not clean: we refuse to silently drop or repair rows)."""
    import numpy as np
    from arch.data import sp500

    frame = sp500.load()
    close = frame["Adj Close"].astype("float64")
    close.index.name = "date"
    close.name = "close"
    close = close.sort_index()
    if close.index.has_duplicates:
        raise RuntimeError("arch's S&P 500 data has duplicate dates")
    values = close.to_numpy()
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise RuntimeError("arch's S&P 500 data has missing or non-positive Adj Close values")
    lines = ["date,close"]
    # Fixed formatting rather than DataFrame.to_csv: the bytes must not depend on pandas'
    # defaults, because data/README.md pins the file's sha256.  The source has 6 decimals, so
    # %.6f is lossless.
    for day, value in zip(close.index, values, strict=True):
        lines.append(f"{day.strftime('%Y-%m-%d')},{value:.6f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help="output CSV path")
    args = parser.parse_args(argv)
    text = build_csv()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # newline="" keeps "\n" line endings on every platform (the sha256 depends on them).
    with open(out, "w", encoding="ascii", newline="") as f:
        f.write(text)
    rows = text.count("\n") - 1
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    print(f"wrote {out}: {rows} rows, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
