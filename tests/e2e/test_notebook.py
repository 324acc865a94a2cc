"""The walkthrough notebook runs top to bottom on a fresh kernel (its own cells assert that the
°C batch is quarantined and that the guard rolls the faulty model back)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_the_walkthrough_notebook_executes() -> None:
    import nbclient
    import nbformat

    notebook = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()  # raises CellExecutionError naming the failing cell
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "rolled_back -> AliasState(champion=2" in printed
    assert "predictions," in printed
