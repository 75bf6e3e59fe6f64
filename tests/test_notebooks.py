"""Every numbered notebook runs headless, in order, on two user-style profiles (what CI runs):

- a TOML profile as a user writes one (`base = "tiny"`): the model is a local directory saved by
  `save_pretrained` (a random tiny Llama), the main corpus a local folder of .txt files;
- the post's GPT-2 chain (tests/fixtures/profiles/gpt2-fixture.toml: GPT-2 from the hub, pile-10k and
  TinyStories through `load_dataset`, per-layer SAEs from the gpt2-small-res-jb release) against a
  local Hugging Face cache at toy size (tests/hub_fixture.py), with HF_HUB_OFFLINE=1 and a network
  guard in every process (tests/fixtures/no_network): any access beyond loopback fails the test.

Each chain's notebooks share one throwaway data directory, as they share data/ in a real run."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GPT2_PROFILE = ROOT / "tests" / "fixtures" / "profiles" / "gpt2-fixture.toml"
NO_NETWORK = ROOT / "tests" / "fixtures" / "no_network"

LOCAL_TOML = """\
# A user's own study: a local model directory and a folder of their text files.
name = "local-text"
base = "tiny"
model = "model/"

[corpora]
notes = "notes/"
other = "synthetic-b"
"""


@pytest.fixture(scope="module")
def local_profile(tmp_path_factory) -> Path:
    """data dir + a .toml profile whose model and main corpus are local files."""
    from helpers.data.corpora import synthetic_documents
    from helpers.model.models import get_spec
    from helpers.model.tiny import byte_tokenizer, tiny_hf

    root = tmp_path_factory.mktemp("local-profile")
    tiny_hf(get_spec("tiny-llama")).save_pretrained(root / "model")
    byte_tokenizer().save_pretrained(root / "model")
    notes = root / "notes" / "2026"
    notes.mkdir(parents=True)
    for i, doc in enumerate(synthetic_documents("synthetic-a")):
        (notes / f"note-{i:03d}.txt").write_text(doc)
    (root / "local-text.toml").write_text(LOCAL_TOML)
    return root / "local-text.toml"


@pytest.fixture(scope="module")
def gpt2_cache(tmp_path_factory) -> dict:
    from hub_fixture import build_hub_cache

    return build_hub_cache(tmp_path_factory.mktemp("hf-home"))


def run_notebook(path: Path, profile: str, data: Path, monkeypatch, env: dict | None = None) -> None:
    import papermill as pm

    monkeypatch.setenv("SAE_LAB_DATA", str(data))
    monkeypatch.setenv("SAE_LAB_STRICT_FIGURES", "1")  # save_figure raises on outlier-scaled axes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    out = data / "executed" / path.name
    out.parent.mkdir(exist_ok=True, parents=True)
    pm.execute_notebook(
        str(path),
        str(out),
        parameters={"PROFILE": profile},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )


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
def test_notebook_runs_on_a_toml_profile_with_a_local_model_and_text_folder(path, local_profile, monkeypatch):
    data = local_profile.parent / "data"
    run_notebook(path, str(local_profile), data, monkeypatch)
    figures = list((data / "figures" / "local-text").glob(f"{path.name[:2]}_*.png"))
    assert figures, f"{path.name} wrote no figure named {path.name[:2]}_*.png"
    if path.name.startswith("01"):  # the store read the user's folder, not a built-in corpus
        from helpers.data.store import ActivationStore

        store = ActivationStore(data / "activations" / "local-text" / "notes", verify="none")
        assert store.request.corpus_source == str(local_profile.parent / "notes")
        assert store.request.model == str(local_profile.parent / "model")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebook_runs_the_gpt2_chain_offline_from_the_hub_cache_fixture(path, gpt2_cache, monkeypatch):
    data = Path(gpt2_cache["HF_HOME"]) / "sae-lab-data"
    net_log = Path(gpt2_cache["HF_HOME"]) / "network-attempts.log"
    env = gpt2_cache | {"PYTHONPATH": str(NO_NETWORK), "SAE_LAB_NET_LOG": str(net_log)}
    run_notebook(path, str(GPT2_PROFILE), data, monkeypatch, env)
    figures = list((data / "figures" / "gpt2-fixture").glob(f"{path.name[:2]}_*.png"))
    assert figures, f"{path.name} wrote no figure named {path.name[:2]}_*.png"
    attempts = net_log.read_text() if net_log.exists() else ""
    assert not attempts, f"{path.name} tried the network outside the fixture cache:\n{attempts}"


@pytest.mark.slow
def test_feature_browser_in_jupyterlab_with_headless_chromium(local_profile, monkeypatch):
    """Notebook 05 on the local profile, run in a real JupyterLab (127.0.0.1) in Debian's Chromium:
    choose the SAE, type a feature, click the arrows; each step must change the card and render its
    plot. Uses the data the notebook tests above wrote (runs notebooks 01-04 first if run alone)."""
    import shutil

    from helpers.report.jupyterlab import lab_screenshots

    if shutil.which("chromium") is None:
        pytest.skip("no chromium: run `bash scripts/install_browser.sh` (apt-get install chromium)")
    data = local_profile.parent / "data"
    for path in NOTEBOOKS[:4]:
        if not (data / "executed" / path.name).exists():
            run_notebook(path, str(local_profile), data, monkeypatch)
    monkeypatch.setenv("SAE_LAB_DATA", str(data))
    shots = data / "lab"
    res = lab_screenshots(str(local_profile), shots, shots, timeout_s=400)
    titles = res["titles"]
    first = int(titles[0].rsplit(" ", 1)[1])
    assert [int(t.rsplit(" ", 1)[1]) for t in titles[1:]] == [first + 2, first + 3, first + 2], (
        f"typing a feature and clicking ▶ then ◀ should step the card; saw {titles}"
    )
    assert all(res["options"][0] in t for t in titles), f"card titles {titles} do not name the SAE"
    for png in (res["widget_png"], res["figure_png"], *res["screenshots"]):
        assert png.stat().st_size > 5_000, f"{png} is (nearly) empty"
