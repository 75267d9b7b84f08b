"""Regenerates ``data/spy_chain_2022-07-15.csv`` (a SPY option chain) from ``stochvolmodels`` 2.6.0.

Usage (from the repository root; needs ``pip`` and network access to PyPI)::

    python scripts/refresh_spy_chain.py                    # downloads the wheel, writes the CSV
    python scripts/refresh_spy_chain.py --wheel W.whl      # reads an already downloaded wheel
    python scripts/refresh_spy_chain.py --out OTHER.csv

Source: the function ``get_spy_test_chain_data`` in ``stochvolmodels/data/sample_option_chains.py``
of the ``stochvolmodels`` wheel 2.6.0 (MIT licence; A. Sepp, github.com/ArturSepp/StochVolModels),
whose docstring dates the snapshot "SPY implied vols of 15_Jul_2022_16_23_09".  The function
only assigns literal arrays (maturity labels, year fractions, forwards, discount factors, and per
maturity the strikes, put/call flags and bid/ask implied vols).  We do not install the package
(it pulls numba and more): the script downloads the pinned wheel without dependencies, checks its
sha256, parses the module with ``ast`` and evaluates only those literal assignments (``array`` is
the one name they may call).  One CSV row per quote, fixed formatting, so the same wheel gives a
byte-identical file; ``data/README.md`` pins its sha256.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "spy_chain_2022-07-15.csv"
WHEEL = "stochvolmodels-2.6.0-py3-none-any.whl"
WHEEL_SHA256 = "cb569698068105fe81f84fbfc04029d943216bf90004cbb359410deb24f3277b"
MODULE = "stochvolmodels/data/sample_option_chains.py"
FUNCTION = "get_spy_test_chain_data"
FIELDS = ("ids", "ttms", "forwards", "discfactors", "strikes_ttms", "optiontypes_ttms", "bid_ivs",
          "ask_ivs")
HEADER = "expiry,ttm,forward,discount_factor,strike,option_type,bid_iv,ask_iv"


def download_wheel(directory: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "stochvolmodels==2.6.0", "-d", str(directory)], check=True)
    return directory / WHEEL


def read_module(wheel: Path) -> str:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256} (stochvolmodels 2.6.0)")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(MODULE).decode("utf-8")


def chain_fields(source: str) -> dict:
    """The literal fields that ``get_spy_test_chain_data`` assigns, as numpy arrays."""
    import numpy as np

    tree = ast.parse(source)
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == FUNCTION]
    if len(functions) != 1:
        raise RuntimeError(f"{MODULE}: expected one function {FUNCTION}, found {len(functions)}")
    fields = {}
    for node in functions[0].body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in FIELDS):
            continue
        # The expressions are array literals; refuse anything that calls another name.
        for sub in ast.walk(node.value):
            if isinstance(sub, ast.Call) and not (isinstance(sub.func, ast.Name) and sub.func.id == "array"):
                raise RuntimeError(f"{MODULE}: {node.targets[0].id} is not an array literal")
        code = compile(ast.Expression(node.value), MODULE, "eval")
        fields[node.targets[0].id] = eval(code, {"__builtins__": {}, "array": np.array})  # noqa: S307
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        raise RuntimeError(f"{MODULE}: {FUNCTION} assigns no {missing}")
    return fields


def build_csv(fields: dict) -> str:
    lines = [HEADER]
    n = len(fields["ids"])
    for name in ("ttms", "forwards", "discfactors", "strikes_ttms", "optiontypes_ttms", "bid_ivs", "ask_ivs"):
        if len(fields[name]) != n:
            raise RuntimeError(f"{name}: {len(fields[name])} maturities, ids has {n}")
    for j in range(n):
        strikes, types = fields["strikes_ttms"][j], fields["optiontypes_ttms"][j]
        bids, asks = fields["bid_ivs"][j], fields["ask_ivs"][j]
        if not len(strikes) == len(types) == len(bids) == len(asks):
            raise RuntimeError(f"maturity {fields['ids'][j]}: strikes, types, bids and asks differ in length")
        for strike, kind, bid, ask in zip(strikes, types, bids, asks):
            # repr of a float64 is the shortest text that reads back to the same number: lossless.
            lines.append(",".join([
                str(fields["ids"][j]), repr(float(fields["ttms"][j])), repr(float(fields["forwards"][j])),
                repr(float(fields["discfactors"][j])), repr(float(strike)), str(kind), repr(float(bid)),
                repr(float(ask))]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help=f"path of an already downloaded {WHEEL}")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output CSV path")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(args.wheel) if args.wheel else download_wheel(Path(tmp))
        text = build_csv(chain_fields(read_module(wheel)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="ascii", newline="") as f:
        f.write(text)
    print(f"wrote {out}: {text.count(chr(10)) - 1} quotes, sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
