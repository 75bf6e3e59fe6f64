"""Every numbered notebook runs headless, in order, on the tiny profile (what CI runs).

The notebooks share one throwaway data directory, as they share data/ in a real run."""

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
        dirty = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty}"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "PROFILE" in tagged[0].source, (
            f"{path.name} needs one cell tagged 'parameters' that sets PROFILE"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebook_runs_on_tiny_profile(path, tiny_data, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("SAE_LAB_DATA", str(tiny_data))
    monkeypatch.setenv("SAE_LAB_STRICT_FIGURES", "1")  # save_figure raises on outlier-scaled axes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tiny_data / "executed" / path.name
    out.parent.mkdir(exist_ok=True)
    pm.execute_notebook(
        str(path),
        str(out),
        parameters={"PROFILE": "tiny"},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )
    figures = list((tiny_data / "figures" / "tiny").glob(f"{path.name[:2]}_*.png"))
    assert figures, f"{path.name} wrote no figure named {path.name[:2]}_*.png"


@pytest.mark.slow
def test_feature_browser_in_jupyterlab_with_headless_chromium(tiny_data, monkeypatch):
    """Notebook 05 on tiny, run in a real JupyterLab (127.0.0.1) in Debian's Chromium: choose the
    SAE, type a feature, click the arrows; each step must change the card and render its plot.
    Uses the data the notebook tests above wrote (runs notebooks 01-04 first if run alone)."""
    import shutil

    import papermill as pm

    from helpers.report.jupyterlab import lab_screenshots

    if shutil.which("chromium") is None:
        pytest.skip("no chromium: run `bash scripts/install_browser.sh` (apt-get install chromium)")
    monkeypatch.setenv("SAE_LAB_DATA", str(tiny_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for path in NOTEBOOKS[:4]:
        out = tiny_data / "executed" / path.name
        if not out.exists():
            out.parent.mkdir(exist_ok=True)
            pm.execute_notebook(
                str(path),
                str(out),
                parameters={"PROFILE": "tiny"},
                cwd=str(ROOT / "notebooks"),
                progress_bar=False,
                kernel_name="python3",
            )
    shots = tiny_data / "lab"
    res = lab_screenshots("tiny", shots, shots, timeout_s=400)
    titles = res["titles"]
    first = int(titles[0].rsplit(" ", 1)[1])
    assert [int(t.rsplit(" ", 1)[1]) for t in titles[1:]] == [first + 2, first + 3, first + 2], (
        f"typing a feature and clicking ▶ then ◀ should step the card; saw {titles}"
    )
    assert all(res["options"][0] in t for t in titles), f"card titles {titles} do not name the SAE"
    for png in (res["widget_png"], res["figure_png"], *res["screenshots"]):
        assert png.stat().st_size > 5_000, f"{png} is (nearly) empty"
