"""The notebooks run top to bottom with a real kernel, show figures, and are committed clean."""

import glob
import os

import pytest

from conftest import REPO, run_once_across_backends

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert [os.path.basename(p) for p in NOTEBOOKS][:1] == ["01_quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_without_stale_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{os.path.basename(path)} has stored outputs: clear them before committing"
            )


@run_once_across_backends(reason="a notebook picks its backend itself (tensorflow by default)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom_and_shows_a_figure(path, tmp_path, monkeypatch):
    # Training notebooks read NOTEBOOK_EPOCHS: CI trains for fewer epochs than a reader does.
    monkeypatch.setenv("NOTEBOOK_EPOCHS", "1")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the notebook's working directory
    )
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    figures = [
        output
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs if "image/png" in output.get("data", {})
    ]
    assert figures, f"{os.path.basename(path)} shows no figure"
