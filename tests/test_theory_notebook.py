"""notebooks/bound_tightness.ipynb executes at small sizes (nbclient)."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "bound_tightness.ipynb"


def test_notebook_executes():
    nb = nbformat.read(NB, as_version=4)
    src = nb.cells[1].source
    assert "SMALL = True" in src
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent.parent)}}).execute()
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                  for o in c.get("outputs", []))
    assert "C.13" in out and "tightness" in out
