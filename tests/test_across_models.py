"""Notebook 09's plumbing: hook stores from one pass, held-out text, aligned rows, overlap, runs."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.analysis import across_models, hook_points
from helpers.data.collect import collect, make_request
from helpers.data.collect_hooks import collect_hooks
from helpers.data.store import StoreError
from helpers.model.hooks import HookPoint, hook_activations
from helpers.model.models import load_model
from helpers.paths import store_name
from helpers.profiles import get_profile
from helpers.sae import SAEConfig, make_sae
from helpers.training.across_runs import hook_runs, second_profile

KINDS = ("hook_attn_out", "hook_mlp_out", "mlp.hook_post")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def profile():
    return replace(
        get_profile("tiny"),
        hook_tokens=10 * 32,
        seq_len=32,
        shard_seqs=4,
        dtype="float32",
        collect_precision="float32",
    )  # fp32: "auto" picks bf16 on a bf16 CPU, and the hooks below read fp32


def test_collect_hooks__one_pass_writes_each_kind_equal_to_the_hooks_and_resumes(model, profile, tmp_path):
    stores = collect_hooks(profile, tmp_path, model, 1, KINDS, progress=False)
    assert sorted(stores) == sorted(KINDS)
    assert stores["mlp.hook_post"].d_model == 256 and stores["hook_mlp_out"].d_model == 64
    tokens = torch.from_numpy(stores["hook_attn_out"].tokens()).long()
    want = hook_activations(model, tokens, [HookPoint(1, k) for k in KINDS])
    for kind in KINDS:
        store = stores[kind]
        assert store.path.name == store_name(profile.main_corpus, kind)
        assert store.manifest["request"]["hook"] == kind
        got = torch.cat([a for _, a in store.sequences(1)])
        torch.testing.assert_close(got, want[f"blocks.1.{kind}"], atol=1e-5, rtol=1e-5)
        assert np.array_equal(store.tokens(), stores["hook_attn_out"].tokens())
    # a store deleted after the fact is collected again; the others are reused as they are
    before = (stores["hook_mlp_out"].path / "manifest.json").read_text()
    shutil.rmtree(stores["hook_attn_out"].path)
    again = collect_hooks(profile, tmp_path, model, 1, KINDS, progress=False)
    assert (again["hook_mlp_out"].path / "manifest.json").read_text() == before
    torch.testing.assert_close(
        torch.cat([a for _, a in again["hook_attn_out"].sequences(1)]), want["blocks.1.hook_attn_out"]
    )


def test_collect_hooks__a_hook_the_model_lacks_fails_before_any_pass(model, profile, tmp_path):
    with pytest.raises(ValueError, match="out of range|0..3"):
        collect_hooks(profile, tmp_path, model, 7, KINDS, progress=False)
    assert not any(tmp_path.iterdir())


def test_resid_pre_requests_keep_their_manifest_and_a_hook_request_differs(model, tmp_path):
    req = make_request("tiny-llama", "synthetic-a", [0], 64, 16, dtype="float32")
    assert "hook" not in req.to_dict()  # notebook 01's stores keep the manifests they had
    collect(req, tmp_path, model, progress=False)
    with pytest.raises(StoreError, match="hook"):
        collect(replace(req, hook="hook_mlp_out"), tmp_path, model, progress=False)


def test_held_out_texts__cut_at_bos_and_decode_the_last_shard(model, tmp_path):
    req = make_request("tiny-llama", "synthetic-a", [0], 8 * 64, 64, dtype="float32", shard_seqs=4)
    store = collect(req, tmp_path, model, progress=False)
    texts = across_models.held_out_texts(store, model.tokenizer, 256, n_seqs=4, min_words=1)
    held = store.shard_tokens(1)
    pieces = [p for row in held for p in np.split(row, np.flatnonzero(row == 256))]
    want = [model.tokenizer.decode(p[p != 256].tolist()) for p in pieces if (p != 256).any()]
    assert texts == [t for t in want if t.split()]


def test_typical_rows__drops_a_row_massive_at_one_layer_of_one_model():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 50, 4)).astype(np.float16)
    b = rng.normal(size=(3, 50, 6)).astype(np.float16)
    b[2, 7] *= 100
    scales = (np.ones(2), np.array([1.0, 2.0, 3.0]))
    rows = across_models.AlignedRows(
        ("a", "b"), ((0, 1), (0, 1, 2)), ["w"] * 50, np.zeros(50, int), (a, b), scales
    )
    keep = across_models.typical_rows(rows, 10.0)
    assert not keep[7] and keep.sum() == 49
    torch.testing.assert_close(rows.layer(1, 2), torch.from_numpy(b[2].astype(np.float32)) * 3.0)


def test_collect_aligned__rows_past_float16_survive_their_per_layer_scale(model, tmp_path):
    texts = ["one two three four five six", "seven eight nine ten"]
    rows = across_models.collect_aligned([model, model], texts, 32)
    assert rows.n_words == 10 and rows.words[:2] == ["one", "two"]
    big = replace(rows, scales=(rows.scales[0] * 1e8, rows.scales[1]))  # a layer past float16 reads back
    assert torch.isfinite(big.layer(0, 1)).all() and big.layer(0, 1).abs().max() > 65504
    rows.save(tmp_path / "a")
    again = across_models.AlignedRows.load(tmp_path / "a")
    torch.testing.assert_close(again.layer(1, 3), rows.layer(1, 3))
    direct = hook_activations(
        model, torch.tensor([[256] + list(b"one two three four five six")]), ["blocks.3.hook_resid_pre"]
    )
    torch.testing.assert_close(
        rows.layer(0, 3)[5], direct["blocks.3.hook_resid_pre"][0, -1], rtol=2e-3, atol=2e-3
    )


def _sae(W_dec: torch.Tensor):
    m, d = W_dec.shape
    sae = make_sae(SAEConfig("topk", d, m, k=2), seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
    return sae


def test_residual_overlap__a_copy_is_all_found_and_a_random_rotation_almost_none():
    torch.manual_seed(0)
    W = torch.randn(256, 64)
    share, null, cos, cos_null = hook_points.residual_overlap(_sae(W[:128]), _sae(W))  # all rows are in W
    assert share == 1.0 and null < 0.02 and cos == pytest.approx(1.0) and cos_null < 0.6
    half = torch.cat([W[:64], torch.randn(64, 64)])
    assert hook_points.residual_overlap(_sae(half), _sae(W))[0] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="different spaces"):
        hook_points.residual_overlap(_sae(torch.randn(8, 32)), _sae(W))


def test_runs__second_profile_and_hook_runs_live_apart_from_notebook_02():
    offline = get_profile("offline")
    second = second_profile(offline, 7)
    assert (second.name, second.model, second.layers, second.main_layer) == (
        "offline.gemma3-270m",
        "gemma3-270m",
        (7,),
        7,
    )
    assert second.corpora == ("python-docs",) and second.train_tokens == offline.second_train_tokens
    assert (second.k, second.expansion_factor) == (offline.second_k, offline.second_expansion_factor)
    tiny = get_profile("tiny")  # unset second_* fall back to the first model's settings
    assert (second_profile(tiny, 1).k, second_profile(tiny, 1).train_tokens) == (tiny.k, tiny.train_tokens)
    runs = hook_runs(offline, 576)
    assert [r.hook for r in runs.values()] == list(KINDS)
    assert {r.d_sae for r in runs.values()} == {2304} and len({r.seed for r in runs.values()}) == 3
    assert runs["mlp.hook_post"].name == "L12-python-docs-mlp_post-topk-m2304-k32-t500000-s52"
    assert hook_runs(get_profile("tiny"), 64)["hook_mlp_out"].tokens == get_profile("tiny").train_tokens // 2
    assert runs["mlp.hook_post"].store_name == "python-docs.mlp.hook_post"
    cfg = runs["hook_mlp_out"].train_config(offline, 576, 512)
    assert cfg.sae_config().metadata["hook_name"] == "blocks.12.hook_mlp_out"


def test_float16_store__refuses_activations_past_its_range_in_one_line():
    from helpers.data.collect import fits_dtype

    req = make_request("tiny-llama", "synthetic-a", [0], 64, 16)  # float16 by default
    x = torch.tensor([[1.0, -7e4]])
    with pytest.raises(
        StoreError, match=r"reaches \|x\| = 70,000, past float16's 65,504; collect this store with"
    ):
        fits_dtype(x, req, "layer 0")
    assert fits_dtype(x, replace(req, dtype="float32"), "layer 0") is x


def test_matched_layer__skips_the_embedding_layer_where_there_are_others():
    cka = np.array([[0.9, 0.5, 0.7, 0.1], [0.2, 0.3, 0.1, 0.8]])
    assert across_models.matched_layer(cka, (0, 1, 2, 3), 0) == 2
    assert across_models.matched_layer(cka, (0, 1, 2, 3), 1) == 3
    assert across_models.matched_layer(cka[:, :1], (0,), 0) == 0
