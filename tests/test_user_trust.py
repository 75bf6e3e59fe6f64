"""A collection a user can trust with their own text (issue #29 item 5): a folder of notes, docs or code
is a corpus; every `python -m helpers...` command answers a user error with one line and exit status 2;
the store checks each shard's sha256 on a process's first read of it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.data import shard_files as store_mod
from helpers.data.collect import collect, make_request
from helpers.data.collect import main as collect_main
from helpers.data.corpora import CorpusError, local_files
from helpers.data.store import ActivationStore, StoreError
from helpers.model.models import load_model

ROOT = Path(__file__).resolve().parents[1]
BOS = 256  # the tiny models' byte tokenizer: token id == byte value, 256 = <|endoftext|>

NOTES = {
    "ideas.md": "# Ideas\n\nSparse autoencoders split a residual stream into features. " * 4,
    "reading.md": "## Reading list\n\n- Towards monosemanticity\n- Scaling monosemanticity\n" * 4,
    "deep/api.rst": "API\n===\n\n.. function:: collect(request)\n\n   Write the store.\n" * 5,
}


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def assert_one_line_exit_2(res: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- 1. a folder of text
def write_notes(root: Path) -> Path:
    for name, text in NOTES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_folder_of_md_and_rst__collects_and_its_tokens_decode_back_to_those_files(tmp_path):
    notes = write_notes(tmp_path / "notes")
    (notes / ".ipynb_checkpoints").mkdir()
    (notes / ".ipynb_checkpoints" / "ideas-checkpoint.md").write_text("a stale copy")
    builder, files = local_files(notes)
    assert builder == "text" and [Path(f).relative_to(notes).as_posix() for f in files] == sorted(NOTES)
    out = tmp_path / "store"
    collect_main(
        ["--model", "tiny-llama", "--corpus", "notes", "--corpus-source", str(notes), "--layers", "0"]
        + ["--tokens", "512", "--seq-len", "64", "--out", str(out)]
    )
    store = ActivationStore(out, verify="full")
    assert store.request.corpus_source == str(notes) and store.n_seq == 8
    texts = list(NOTES.values())
    pieces = 0
    for row in store.tokens():
        assert row[0] == BOS
        for piece in _pieces(row[1:]):
            assert any(piece in t for t in texts), f"{piece!r} is in none of the files"
            pieces += 1
    assert pieces >= 8


def _pieces(ids: np.ndarray) -> list[str]:
    """The text runs of a window, split at the document separator (BOS)."""
    cuts = np.flatnonzero(ids == BOS)
    runs = np.split(ids, cuts)
    return [bytes(r[r != BOS].astype(np.uint8)).decode() for r in runs if (r != BOS).any()]


def test_text_kinds_mix_in_one_folder_but_not_with_json(tmp_path):
    (tmp_path / "mixed").mkdir()
    for name in ("a.txt", "b.md", "c.rst", "d.py"):
        (tmp_path / "mixed" / name).write_text(f"document {name}")
    builder, files = local_files(tmp_path / "mixed")
    assert builder == "text" and len(files) == 4
    (tmp_path / "mixed" / "e.jsonl").write_text('{"text": "e"}\n')
    with pytest.raises(CorpusError, match="mixes json and text files; keep one kind per corpus folder"):
        local_files(tmp_path / "mixed")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.org").write_text("not read")
    with pytest.raises(CorpusError, match=r"no \.txt, \.md, \.rst, \.py, \.jsonl or \.parquet files to read"):
        local_files(tmp_path / "other")


# ---------------------------------------------------------------------------- 2. one line, exit 2
def test_collect__bad_model_missing_corpus_folder_and_bad_layer_are_one_line_exit_2(tmp_path):
    common = ["--tokens", "512", "--seq-len", "64"]
    res = run_module(
        "helpers.data.collect",
        *("--model", "no-such-model", "--corpus", "synthetic-a", "--layers", "0", *common),
        *("--out", str(tmp_path / "s0")),
    )
    assert_one_line_exit_2(res, "unknown model 'no-such-model'")
    res = run_module(
        "helpers.data.collect",
        *("--model", "tiny-llama", "--corpus", "notes", "--corpus-source", str(tmp_path / "nope")),
        *("--layers", "0", *common, "--out", str(tmp_path / "s1")),
    )
    assert_one_line_exit_2(res, "nope", "nor an existing file or folder")
    assert not (tmp_path / "s1").exists(), "a typo in the corpus leaves no store folder behind"
    res = run_module(
        "helpers.data.collect",
        *("--model", "tiny-llama", "--corpus", "synthetic-a", "--layers", "9", *common),
        *("--out", str(tmp_path / "s2")),
    )
    assert_one_line_exit_2(res, "layer 9 is out of range for tiny-llama")
    res = run_module("helpers.data.collect", "--model", "tiny-llama")  # argparse's own: exit 2 too
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.parametrize("module", ["helpers.compare", "helpers.report.compare"])
def test_compare__missing_sae_folder_is_one_line_exit_2(module, tmp_path):
    res = run_module(
        module, str(tmp_path / "no_sae"), str(tmp_path / "no_sae_b"), "--out", str(tmp_path / "o")
    )
    assert_one_line_exit_2(res, "no_sae")


def test_train_dist__missing_and_malformed_plan_are_one_line_exit_2(tmp_path):
    args = ["--mode", "sae", "--store", str(tmp_path / "store"), "--layer", "0", "--plan"]
    res = run_module("helpers.training.train_dist", *args, str(tmp_path / "plan.json"))
    assert_one_line_exit_2(res, "plan file", "not found", "write a JSON list")
    (tmp_path / "plan.json").write_text('{"out_dir": "x"')
    res = run_module("helpers.training.train_dist", *args, str(tmp_path / "plan.json"))
    assert_one_line_exit_2(res, "is not valid JSON")


def test_run_cli__a_bug_keeps_its_traceback_and_exit_1():
    code = "from helpers.cli import run_cli\ndef main(argv):\n    raise RuntimeError('a bug')\nrun_cli(main)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 1 and "Traceback" in res.stderr and "RuntimeError: a bug" in res.stderr


# ---------------------------------------------------------------------------- 3. sha256 on first read
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    req = make_request(
        "tiny-llama", "synthetic-a", [0], n_tokens=12 * 16, seq_len=16, dtype="float32", shard_seqs=6
    )
    model = load_model("tiny-llama")
    return collect(req, tmp_path_factory.mktemp("store"), model, batch_size=6, progress=False)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_store__an_edited_shard_fails_its_first_read_in_one_line_and_an_intact_one_reads(
    tiny_store, tmp_path, monkeypatch
):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_store.path, copy)
    store_mod.forget_verified()
    good = ActivationStore(copy)
    first = np.array(good.shard_acts(1, 0))
    assert np.array_equal(first, np.asarray(tiny_store.shard_acts(1, 0)))
    hashed, real = [], store_mod._sha256
    monkeypatch.setattr(store_mod, "_sha256", lambda p: hashed.append(p.name) or real(p))
    ActivationStore(copy).shard_acts(1, 0)  # a second store over the folder: checked already
    assert hashed == []
    flip_a_byte(copy / "acts_L0_00001.npy")  # same size: only the checksum can tell
    store_mod.forget_verified()
    again = ActivationStore(copy)  # opening checks sizes only
    with pytest.raises(StoreError) as err:
        again.shard_acts(1, 0)
    assert hashed == ["acts_L0_00001.npy"]
    msg = str(err.value)
    assert "\n" not in msg and "acts_L0_00001.npy" in msg and "collect it again" in msg
    again.shard_acts(0, 0)  # the intact shards still read
    with pytest.raises(StoreError, match="acts_L0_00001.npy"):
        list(again.batches(0, batch_size=16))


def test_store__train_dist_over_an_edited_store_is_one_line_exit_2(tiny_store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_store.path, copy)
    flip_a_byte(copy / "acts_L0_00000.npy")
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            [
                {
                    "out_dir": str(tmp_path / "sae"),
                    "d_in": tiny_store.d_model,
                    "architecture": "topk",
                    "d_sae": 32,
                    "k": 4,
                    "batch_size": 32,
                    "total_tokens": 64,
                    "norm_estimate_tokens": 32,
                    "precision": "float32",
                }
            ]
        )
    )
    res = run_module(
        "helpers.training.train_dist",
        *("--mode", "sae", "--store", str(copy), "--layer", "0", "--plan", str(plan)),
    )
    assert_one_line_exit_2(res, "acts_L0_00000.npy", "sha256", "collect it again")
