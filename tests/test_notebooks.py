"""Every numbered notebook runs headless, in order, on the tiny profile (what CI runs).

The notebooks share one throwaway data directory, as they share data/ in a real run."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-data")


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                 and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty}"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "PROFILE" in tagged[0].source, \
            f"{path.name} needs one cell tagged 'parameters' that sets PROFILE"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebook_runs_on_tiny_profile(path, tiny_data, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("SAE_LAB_DATA", str(tiny_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tiny_data / "executed" / path.name
    out.parent.mkdir(exist_ok=True)
    pm.execute_notebook(str(path), str(out), parameters={"PROFILE": "tiny"},
                        cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    figures = list((tiny_data / "figures" / "tiny").glob(f"{path.name[:2]}_*.png"))
    assert figures, f"{path.name} wrote no figure named {path.name[:2]}_*.png"
