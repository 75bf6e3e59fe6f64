"""Wrong input gets one line naming the input and the fix (helpers.checks and where it is used).

Every test matches the message: the input (argument or file) AND the fix, and checks that no
parser's or torch's exception is chained in (`__cause__`/`__context__` suppressed)."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers.checks import InputError, check_token_ids, load_npy, read_json
from helpers.model.models import load_model
from helpers.sae import SAEConfig, SAEError, load_sae, make_sae, save_sae
from helpers.sae.metrics import ReconstructionStats, fvu, token_ce


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, f"message spans lines: {msg!r}"
    assert excinfo.value.__suppress_context__ or excinfo.value.__context__ is None, (
        f"a library's exception is chained into: {msg!r}"
    )
    return msg


# ---------------------------------------------------------------- token ids
@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")  # byte vocabulary + BOS: 257 ids


def test_float_token_ids_are_refused_not_truncated(tiny):
    from helpers.model.residuals import residuals

    with pytest.raises(InputError) as e:
        residuals(tiny, torch.tensor([[1.0, 2.7, 3.0]]), [1])
    assert "input_ids has dtype torch.float32" in one_line(
        e
    ) and "pass the tokenizer's ids (torch.long)" in str(e.value)


def test_token_ids_beyond_the_vocabulary_name_its_size(tiny):
    from helpers.model.residuals import logits_with_resid, residuals

    ids = torch.tensor([[1, 2, 300]])
    with pytest.raises(InputError) as e:
        residuals(tiny, ids, [1])
    msg = one_line(e)
    assert (
        "input_ids holds token id 300" in msg
        and "vocabulary of tiny-llama has 257 tokens (ids 0..256)" in msg
    )
    assert "tokenize with the tokenizer of tiny-llama" in msg
    with pytest.raises(InputError, match=r"token id 300 .* 257 tokens"):
        logits_with_resid(tiny, ids, 1, torch.zeros_like)


def test_negative_and_empty_token_ids(tiny):
    from helpers.model.residuals import residuals

    with pytest.raises(InputError) as e:
        residuals(tiny, torch.tensor([[5, -100, 7]]), [0])
    assert "input_ids holds a negative token id (-100)" in one_line(e) and "replace padding" in str(e.value)
    with pytest.raises(InputError) as e:
        residuals(tiny, torch.zeros((0, 4), dtype=torch.long), [0])
    assert "input_ids is empty (shape (0, 4)); pass at least one sequence" in one_line(e)


def test_numpy_int32_ids_are_accepted_and_widened():
    out = check_token_ids(np.array([[0, 5, 255]], dtype=np.int32), 256)
    assert out.dtype == torch.long and out.tolist() == [[0, 5, 255]]


def test_token_ce__ids_outside_the_logits_vocabulary_are_named():
    logits = torch.randn(1, 4, 10)
    with pytest.raises(InputError) as e:
        token_ce(logits, torch.tensor([[1, 2, 12, 3]]))
    assert "token id 12 but the vocabulary of these logits has 10 tokens" in one_line(e)
    with pytest.raises(InputError) as e:
        token_ce(logits, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert "input_ids has dtype torch.float32; token ids must be integers" in one_line(e)


# ---------------------------------------------------------------- degenerate data
def test_fvu_of_zero_variance_data_says_why_and_what_to_pass():
    x = torch.ones(5, 3)
    with pytest.raises(InputError) as e:
        fvu(x, x * 0.9)
    assert "x has zero variance over its 5 rows" in one_line(e) and "at least two different rows" in str(
        e.value
    )
    stats = ReconstructionStats()
    stats.update(x, x)
    with pytest.raises(InputError, match="zero variance .* at least two different rows"):
        stats.result()


def test_fvu_of_zero_rows_names_x():
    with pytest.raises(InputError) as e:
        fvu(torch.zeros(0, 3), torch.zeros(0, 3))
    assert "x has 0 rows (shape (0, 3)); pass at least 1 row" in one_line(e)


# ---------------------------------------------------------------- files
def _saved_sae(tmp_path):
    return save_sae(make_sae(SAEConfig("topk", 8, 16, k=2)), tmp_path / "sae")


@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda f: f.write_text(f.read_text()[:40]), r"is not valid JSON \(truncated or edited\?"),
        (lambda f: f.write_text("[1, 2]"), "holds a JSON list, not an object"),
        (lambda f: f.write_bytes(b"\xff\xfe\x00binary"), "is not text"),
        (lambda f: f.write_text(json.dumps({"architecture": "topk"})), "lacks 'd_in', 'd_sae'"),
    ],
)
def test_load_sae__damaged_cfg_json_names_the_file_and_the_fix(tmp_path, damage, expect):
    path = _saved_sae(tmp_path)
    damage(path / "cfg.json")
    with pytest.raises(SAEError, match=expect) as e:
        load_sae(path)
    msg = one_line(e)
    assert f"SAE config {path / 'cfg.json'}" in msg and "save the SAE again (helpers.sae.save_sae)" in msg


@pytest.mark.parametrize(
    "damage", [lambda b: b[:-7], lambda b: b[:5], lambda b: b"not a safetensors file at all"]
)
def test_load_sae__truncated_or_foreign_weights_name_the_file_and_the_fix(tmp_path, damage):
    path = _saved_sae(tmp_path)
    f = path / "sae_weights.safetensors"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(SAEError) as e:
        load_sae(path)
    msg = one_line(e)
    assert f"{f} is not a readable safetensors file" in msg and "save the SAE again" in msg


def test_load_sae__missing_weights_name_the_file(tmp_path):
    path = _saved_sae(tmp_path)
    (path / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEError) as e:
        load_sae(path)
    assert "sae_weights.safetensors not found; the directory must hold" in one_line(e)


@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory):
    from helpers.data.collect import collect, make_request

    req = make_request(
        "tiny-llama", "synthetic-a", [0], n_tokens=8 * 16, seq_len=16, dtype="float32", shard_seqs=4
    )
    return collect(req, tmp_path_factory.mktemp("store"), tiny, batch_size=4, progress=False)


@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda f: f.write_text(f.read_text()[:30]), "is not valid JSON"),
        (
            lambda f: f.write_text(json.dumps({"format": "x"})),
            "lacks 'request', 'complete', 'shards', 'd_model'",
        ),
        (lambda f: f.write_text("7"), "holds a JSON int, not an object"),
    ],
)
def test_store__damaged_manifest_names_the_file_and_the_fix(store, tmp_path, damage, expect):
    from helpers.data.store import ActivationStore, StoreError

    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    damage(copy / "manifest.json")
    with pytest.raises(StoreError, match=expect) as e:
        ActivationStore(copy)
    msg = one_line(e)
    assert f"store manifest {copy / 'manifest.json'}" in msg and "collect again (notebook 01)" in msg


def test_store__npy_shard_that_is_not_npy_names_the_file_and_the_fix(store, tmp_path):
    from helpers.data.store import ActivationStore, StoreError

    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    f = copy / "acts_L0_00001.npy"
    f.write_bytes(b"x" * f.stat().st_size)  # same size: passes the size check, fails to parse
    s = ActivationStore(copy)
    with pytest.raises(StoreError) as e:
        s.acts_for(0, [5])
    msg = one_line(e)
    assert f"{f} is not a readable .npy array" in msg and "collect again (notebook 01)" in msg


def test_load_npy_and_read_json__missing_and_truncated(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(100))
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(raw[:100])
    with pytest.raises(InputError) as e:
        load_npy(tmp_path / "a.npy", "write it again")
    assert "a.npy is not a readable .npy array" in one_line(e) and "write it again" in str(e.value)
    with pytest.raises(InputError) as e:
        read_json(tmp_path / "none.json", "config", "run step 1 first")
    assert f"config {tmp_path / 'none.json'} not found; run step 1 first" == one_line(e)


def test_downstream_eval_and_ablation_study_refuse_float_tokens(tiny):
    from helpers.analysis.evaluate import downstream_eval
    from helpers.analysis.position_ablation import ablation_study

    tokens = np.array([[1.0, 2.5, 3.0, 4.0]])
    with pytest.raises(InputError) as e:
        downstream_eval(tiny, {}, tokens, progress=False)
    assert "tokens has dtype torch.float64; token ids must be integers" in one_line(e)
    with pytest.raises(InputError) as e:
        ablation_study(tiny, {}, np.array([[1, 2, 999]]), progress=False)
    assert "tokens holds token id 999 but the vocabulary of tiny-llama has 257 tokens" in one_line(e)


def test_context_windows__float_tokens_or_positions_are_named():
    from helpers.analysis.contexts import context_windows

    tokens = np.arange(40).reshape(4, 10)
    w = context_windows(tokens, [1], [5], before=2, after=1)
    assert w.tokens.tolist() == [[13, 14, 15, 16]]
    with pytest.raises(InputError) as e:
        context_windows(tokens.astype(np.float32), [1], [5])
    assert "tokens has dtype torch.float32; pass integer ids" in one_line(e)
    with pytest.raises(InputError) as e:
        context_windows(tokens, [1], [5.6])
    assert "positions has dtype torch.float64; pass integer ids or indices" in one_line(e)


def test_position_stats__missing_truncated_or_incomplete_npz_names_the_file_and_notebook_03(tmp_path):
    from helpers.analysis.positions import PositionStats, PositionStatsResult

    acc = PositionStats(8, 4, n_bins=8)
    acc.update(torch.rand(2, 8, 4))
    f = tmp_path / "L2.npz"
    acc.result().save(f)
    raw = f.read_bytes()
    with pytest.raises(InputError) as e:
        PositionStatsResult.load(tmp_path / "L9.npz")
    assert "position statistics" in one_line(e) and "L9.npz not found; re-run notebook 03" in str(e.value)
    f.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as e:
        PositionStatsResult.load(f)
    assert f"position statistics {f} is not a readable .npz" in one_line(e) and "re-run notebook 03" in str(
        e.value
    )
    np.savez(f, pos_mean=np.zeros(3))
    with pytest.raises(InputError) as e:
        PositionStatsResult.load(f)
    assert f"position statistics {f} lacks [" in one_line(e) and "re-run notebook 03" in str(e.value)
