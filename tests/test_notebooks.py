"""Every tutorial notebook runs top to bottom (code cells executed in order, small sizes).

A light runner (no Jupyter kernel needed in the test environment): each notebook's code cells are
executed in one namespace; a failing cell fails the test with the cell's index.
"""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("DH_NOTEBOOK_PATHS", "4000")
    monkeypatch.setenv("DH_NOTEBOOK_EPOCHS", "2")
    monkeypatch.chdir(path.parent)  # notebooks run from their own folder, as in Jupyter
    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or "skip-execution" in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - report which cell failed
            pytest.fail(f"{path.name} cell {i} failed: {e!r}")


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no tutorial"
