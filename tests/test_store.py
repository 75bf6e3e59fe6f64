import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data.batches import BatchStream
from helpers.data.collect import collect, make_request
from helpers.data.store import ActivationStore, StoreError
from helpers.model.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    req = make_request(
        "tiny-llama", "synthetic-a", [0, 2], n_tokens=20 * 16, seq_len=16, dtype="float32", shard_seqs=6
    )  # 20 sequences -> shards of 6,6,6,2
    return collect(req, tmp_path_factory.mktemp("store"), model, batch_size=4, progress=False)


def test_store__holds_the_residuals_of_its_tokens(store, model):
    assert store.n_shards == 4 and store.n_tokens == 320
    tokens = torch.from_numpy(store.tokens()).long()
    with torch.no_grad():
        hs = model._module(tokens, output_hidden_states=True).hidden_states
    acts = torch.cat([a for _, a in store.sequences(2)])
    torch.testing.assert_close(acts, hs[2], atol=1e-5, rtol=1e-5)
    assert (tokens[:, 0] == 256).all(), "every sequence starts with BOS"


def test_batches__one_epoch_yields_every_kept_token_exactly_once(store):
    full = torch.cat([a[:, 1:, :] for _, a in store.sequences(0)]).reshape(-1, store.d_model)
    batches = list(store.batches(0, batch_size=50, seed=3, exclude_positions=[0], buffer_shards=2))
    got = torch.cat(batches)
    assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1)
    assert got.shape == full.shape == (20 * 15, store.d_model)
    # same multiset of rows (sort rows lexicographically via a stable key)
    key = lambda x: x[torch.argsort(x[:, 0] * 1e3 + x[:, 1])]  # noqa: E731
    torch.testing.assert_close(key(got), key(full))
    assert not torch.equal(got, full), "batches are shuffled"


def test_batches__same_seed_same_order_and_epochs_reshuffle(store):
    a = torch.cat(list(store.batches(0, 64, seed=1)))
    b = torch.cat(list(store.batches(0, 64, seed=1)))
    assert torch.equal(a, b)
    two = torch.cat(list(store.batches(0, 64, seed=1, epochs=2)))
    assert len(two) == 2 * len(a) and not torch.equal(two[: len(a)], two[len(a) :])


def test_rerun_with_same_request_is_a_no_op(store):
    mtimes = {p.name: p.stat().st_mtime_ns for p in store.path.iterdir()}
    req = make_request("tiny-llama", "synthetic-a", [0, 2], 320, 16, "float32", shard_seqs=6)
    again = collect(req, store.path, model=None, progress=False)  # no model needed, none loaded
    assert again.n_tokens == 320
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in store.path.iterdir()}


def test_store_with_another_request_is_refused_with_the_fix(store):
    req = make_request("tiny-llama", "synthetic-a", [0, 1], 320, 16, "float32", shard_seqs=6)
    with pytest.raises(StoreError, match=r"layers: stored \[0, 2\], asked \[0, 1\].*rm -r"):
        collect(req, store.path, progress=False)


def test_corrupt_shard_is_detected_on_open(store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    f = copy / "acts_L2_00001.npy"
    f.write_bytes(f.read_bytes()[:-10])  # truncated
    with pytest.raises(StoreError, match="acts_L2_00001.npy is corrupt .* collect again"):
        ActivationStore(copy)
    f.write_bytes((store.path / "acts_L2_00001.npy").read_bytes()[:-4] + b"\0\0\0\1")
    ActivationStore(copy)  # same size: only the checksum can tell
    with pytest.raises(StoreError, match="fails its sha256 checksum"):
        ActivationStore(copy, verify="full")


def test_missing_layer_and_missing_store_errors(store, tmp_path):
    with pytest.raises(StoreError, match=r"layer 1 is not in the store .* holds layers \[0, 2\]"):
        store.batches(1)
    with pytest.raises(StoreError, match="no activation store at .* collect one first"):
        ActivationStore(tmp_path / "nothing")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(layers=[0, 9]), r"layer 9 is out of range for tiny-llama: valid layers are 0\.\.3"),
        (dict(seq_len=4096), r"sequence length 4096 is beyond tiny-llama's context of 1024"),
        (dict(n_tokens=8), r"tokens=8 is less than one sequence of 16; ask for at least 16"),
        (dict(dtype="int8"), r"dtype 'int8' is not supported; use one of"),
        (dict(layers=[]), r"no layers requested"),
    ],
)
def test_make_request__bad_input_names_the_fix(kwargs, message):
    args = dict(model="tiny-llama", corpus="synthetic-a", layers=[0], n_tokens=64, seq_len=16)
    with pytest.raises(ValueError, match=message):
        make_request(**{**args, **kwargs})


def _collect_cmd(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "helpers.data.collect",
        "--model",
        "tiny-llama",
        "--corpus",
        "synthetic-b",
        "--layers",
        "1",
        "3",
        "--tokens",
        str(48 * 32),
        "--seq-len",
        "32",
        "--shard-seqs",
        "1",
        "--batch-size",
        "1",
        "--dtype",
        "float16",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_collection_killed_with_sigkill_resumes_to_identical_store(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_collect_cmd(ref), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        _collect_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    manifest = killed / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(json.loads(manifest.read_text())["shards"])
    assert 3 <= done < 48, f"kill landed after {done} of 48 shards; it must be mid-run"
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(killed)

    subprocess.run(_collect_cmd(killed), check=True, env=env, capture_output=True)
    a, b = ActivationStore(ref, verify="full"), ActivationStore(killed, verify="full")
    assert a.manifest["shards"] == b.manifest["shards"]  # names, sizes and sha256 of every file
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in killed.iterdir()), "no stray .tmp files left"
    for name in names:
        if name != "manifest.json":
            assert (ref / name).read_bytes() == (killed / name).read_bytes(), name


def test_batches__later_epochs_read_cached_rows_and_yield_the_same_batches(store, monkeypatch):
    kw = dict(seed=2, epochs=3, exclude_positions=[0], max_norm=1e9, buffer_shards=2)
    reads = []
    real = type(store).shard_acts
    monkeypatch.setattr(type(store), "shard_acts", lambda self, s, lay: reads.append(s) or real(self, s, lay))
    uncached = torch.cat(list(BatchStream(store, 0, 64, cache_bytes=0, **kw)))
    assert len(reads) == 3 * store.n_shards
    reads.clear()
    cached = torch.cat(list(store.batches(0, 64, **kw)))
    assert torch.equal(cached, uncached) and len(cached) == 3 * 20 * 15
    assert sorted(reads[1:]) == list(range(store.n_shards))  # reads[0]: the size check; then each shard once


def test_batches__shard_subset_reads_only_those_shards_and_split_holds_out_the_last(store):
    train, held = store.split(1)
    assert train == [0, 1, 2] and held == [3]
    got = torch.cat(list(store.batches(0, 64, shards=held)))
    _, last = list(store.sequences(0))[-1]
    assert got.shape[0] == last.shape[0] * last.shape[1]
    torch.testing.assert_close(got.sum(0), last.reshape(-1, store.d_model).sum(0))
    with pytest.raises(StoreError, match=r"shards \[7\] are not in 0\.\.3"):
        store.batches(0, shards=[7])


def test_acts_for__returns_the_rows_of_any_sequence_ids(store):
    all_acts = torch.cat([a for _, a in store.sequences(2)]).numpy()
    ids = [19, 0, 7, 7, 12]
    np.testing.assert_array_equal(store.acts_for(2, ids), all_acts[ids])
    with pytest.raises(StoreError, match=r"sequence ids must be in 0\.\.19"):
        store.acts_for(2, [20])


def test_batches__exclude_tokens_drops_every_occurrence_of_those_ids(store):
    tokens = store.tokens()
    acts = torch.cat([a for _, a in store.sequences(0)]).numpy()
    drop = int(np.bincount(tokens[:, 1:].ravel()).argmax())  # the commonest non-BOS token
    want = acts[(tokens != 256) & (tokens != drop)]
    got = torch.cat(list(store.batches(0, 64, exclude_positions=[0], exclude_tokens=[256, drop])))
    assert got.shape == want.shape and len(want) < tokens.size - len(tokens)
    torch.testing.assert_close(got.sum(0), torch.from_numpy(want).sum(0), rtol=1e-5, atol=1e-3)


def test_token_rows__pairs_each_kept_row_with_its_token_in_store_order(store):
    tokens, acts = store.tokens(), torch.cat([a for _, a in store.sequences(2)]).numpy()
    drop = int(np.bincount(tokens[:, 1:].ravel()).argmax())
    mask = np.ones(tokens.shape, dtype=bool)
    mask[:, 0] = False
    mask &= tokens != drop
    norms = np.linalg.norm(acts, axis=-1)
    cap = float(np.median(norms[mask]))
    keep = mask & (norms <= cap)  # drop the top half by norm too
    x, ids = store.token_rows(
        2, range(store.n_shards), exclude_positions=(0,), exclude_tokens=(drop,), max_norm=cap
    )
    np.testing.assert_array_equal(ids.numpy(), tokens[keep])
    np.testing.assert_allclose(x.numpy(), acts[keep], rtol=0, atol=0)
    x1, _ = store.token_rows(2, [1])
    assert len(x1) == 6 * 15


def test_batches__several_layers_side_by_side_with_a_cut_per_layer(store):
    """A crosscoder's stream: each row is the same token at layers 0 and 2, and a token above either
    layer's cut is left out of both."""
    tokens = store.tokens()
    a0 = torch.cat([a for _, a in store.sequences(0)]).numpy()
    a2 = torch.cat([a for _, a in store.sequences(2)]).numpy()
    n0, n2 = np.linalg.norm(a0, axis=-1), np.linalg.norm(a2, axis=-1)
    cut0, cut2 = float(np.quantile(n0[:, 1:], 0.8)), float(np.quantile(n2[:, 1:], 0.8))
    keep = (tokens != 256) & (n0 <= cut0) & (n2 <= cut2)
    want = np.concatenate([a0[keep], a2[keep]], axis=1)
    got = torch.cat(
        list(store.batches((0, 2), 1000, shuffle=False, exclude_tokens=[256], max_norm=(cut0, cut2)))
    )
    assert got.shape == want.shape == (int(keep.sum()), 2 * store.d_model)
    assert keep.sum() < (tokens != 256).sum() - 20, "both cuts must bite"
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=0)
    with pytest.raises(StoreError, match="one cut per layer"):
        store.batches((0, 2), max_norm=(1.0, 2.0, 3.0))
