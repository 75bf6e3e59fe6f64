"""The main job's terminal output: a line per cell, the kernel's progress bars as text with a
rate and an ETA, and no kernel transport warning (scripts/run_notebooks.py)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_execute__streams_cells_and_text_progress_bars_without_the_transport_warning(
    tmp_path, capfd, monkeypatch
):
    rn = _script()
    monkeypatch.setenv("IPYTHONDIR", str(rn.quiet_kernel_dir()))
    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
            "language_info": {"name": "python"},
        }
    )
    params = nbformat.v4.new_code_cell('PROFILE = "offline"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import time\nfrom tqdm.auto import tqdm\n"
            "for _ in tqdm(range(3), desc='collect', unit='tok', mininterval=0):\n    time.sleep(0.05)\n"
            "print('done', PROFILE)"
        ),
    ]
    path = tmp_path / "07_demo.ipynb"
    nbformat.write(nb, path)
    rn.execute(path, tmp_path / "out.ipynb", {"PROFILE": "tiny"}, n_code=2, cwd=tmp_path)
    out, err = capfd.readouterr()
    assert "done tiny" in out
    cell_line = next(ln for ln in err.splitlines() if ln.startswith("[07 · cell 3/3 · "))
    assert cell_line.endswith("] import time"), cell_line  # notebook, cell i/n, elapsed, first line
    assert "collect: 100%" in err and "tok/s]" in err, f"no text progress bar with a rate in {err!r}"
    assert "without encryption" not in out + err


def test_every_notebook_reads_its_profile_from_papermill_the_lab_or_the_environment(tmp_path, monkeypatch):
    """The parameters cell: papermill's injected PROFILE wins; `make lab PROFILE=x` sets SAE_LAB_PROFILE;
    the lab screenshots rewrite the PROFILE line of a copy (helpers.report.jupyterlab)."""
    from helpers.report.jupyterlab import parameterized_copy

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cell = next(
            c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])
        )
        for env, want in ((None, "offline"), ("quick", "quick")):
            if env is None:
                monkeypatch.delenv("SAE_LAB_PROFILE", raising=False)
            else:
                monkeypatch.setenv("SAE_LAB_PROFILE", env)
            scope: dict = {}
            exec(cell.source, scope)
            assert scope["PROFILE"] == want, f"{path.name}: PROFILE {scope['PROFILE']!r}, expected {want!r}"
        copy = nbformat.read(parameterized_copy(path, tmp_path, "tiny"), as_version=4)
        scope = {}
        exec(next(c for c in copy.cells if "parameters" in c.metadata.get("tags", [])).source, scope)
        assert scope["PROFILE"] == "tiny", f"{path.name}: the lab copy did not set PROFILE"
