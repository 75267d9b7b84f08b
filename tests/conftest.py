"""The optimizer benchmark harness lives in benchmarks/optimizer_bench (not in the package): its tests
import it from there.  The fixture ``experiment`` runs a seed paper's experiment at the small scale for
the test module that names it in ``EXPERIMENT``."""

import sys
from pathlib import Path

import pytest

_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)


@pytest.fixture(scope="module")
def experiment(request, tmp_path_factory):
    """``(out, summary)`` of ``deephedge experiment NAME`` at the small scale, seed 0, once per test
    module; NAME is the module's ``EXPERIMENT``."""
    from deephedge_tf.experiments import run_experiment

    name = request.module.EXPERIMENT
    out = tmp_path_factory.mktemp(name)
    return out, run_experiment(name, out, scale="small", seeds=[0], echo=lambda *_: None)
