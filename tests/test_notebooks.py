"""Every tutorial notebook runs top to bottom at a small size (code cells executed in order).

A light runner (no Jupyter kernel needed in the test environment): each notebook's code cells are
executed in one namespace; a failing cell fails the test with the cell's index.  Each notebook reads its
sizes in one cell tagged ``parameters`` (papermill's convention) from ``DH_NOTEBOOK_PATHS`` (paths per
training step), ``DH_NOTEBOOK_EPOCHS`` and ``DH_NOTEBOOK_STEPS`` (steps per epoch), which the test sets
to a few steps of a few hundred paths: the run checks that the tutorial works and the checks written in
it (Monte Carlo against Fourier, exported against trained actions), not the trained numbers.
"""

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SMALL = {"DH_NOTEBOOK_PATHS": "512", "DH_NOTEBOOK_EPOCHS": "1", "DH_NOTEBOOK_STEPS": "2"}


def _cells(path):
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(path.parent)  # notebooks run from their own folder, as in Jupyter
    matplotlib.use("Agg")  # plt.show() draws nothing without a display
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code" or "skip-execution" in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - report which cell failed
            pytest.fail(f"{path.name} cell {i} failed: {e!r}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_parameters_and_no_outputs(path):
    cells = _cells(path)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: one cell tagged 'parameters' expected; cells {tagged} are"
    source = "".join(cells[tagged[0]]["source"])
    for key in SMALL:
        assert key in source, f"{path.name}: the parameters cell does not read {key}"
    # Outputs are not committed: they would go stale and make every diff noisy.
    for i, c in enumerate(cells):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{path.name} cell {i} has outputs"


def test_the_tutorials_are_there():
    names = [p.name for p in NOTEBOOKS]
    for prefix in ("01_quickstart", "02_cliquet", "03_dhkfac_vs_adam", "04_no_transaction_band", "05_export",
                   "06_calibration_and_backtest"):
        assert any(n.startswith(prefix) for n in names), f"notebooks/: no {prefix}*.ipynb"
