"""The optimizer benchmark harness lives in benchmarks/optimizer_bench (not in the package): its tests
import it from there."""

import sys
from pathlib import Path

_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)
