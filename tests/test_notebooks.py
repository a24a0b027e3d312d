"""Every notebook in notebooks/ runs top to bottom (nbclient, a real Jupyter kernel) on the CPU.

The notebooks read the environment variable ``CI`` and shrink their sizes when it is set; their
cells assert their key results (forms that agree, a loss that fell, an accuracy reached), so a
notebook that runs but shows nonsense fails here. They are kept in git without outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the [test] extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the [test] extra (nbformat, nbclient)")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_are_stripped():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart",
        "02_text_and_generation",
        "03_flax_module",
        "04_kernels_and_long_context",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs are kept in git"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", os.environ.get("CI") or "true")  # the notebooks' small sizes
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
