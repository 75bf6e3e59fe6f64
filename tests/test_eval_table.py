"""Notebook 02's evaluation table (helpers.analysis.eval_table): every SAE on its held-out view, with and
without the massive tokens, and spliced into the model on the held-out sequences."""

import numpy as np
import pandas as pd
import pytest
from planted import identity_relu_sae

from helpers.analysis import eval_table
from helpers.analysis.evaluate import DownstreamResult, downstream_eval
from helpers.data.store import StoreRequest, StoreWriter
from helpers.model.models import load_model, spec_of
from helpers.training.experiments import SAERun

T, LAYER, BOS, CORPUS = 16, 3, 0, "planted"
MID_BOS = (8, 7)  # a separator mid-sequence in the held-out shard
MASSIVE = (7, 5)  # a massive-norm token in the held-out shard; latent 0 fires only there


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, model):
    """9 sequences x 16 tokens of the tiny model's width in 3 shards of 3 (sequences 6-8 held out);
    dimension 0 is -1 everywhere but at the massive token."""
    d = spec_of(model).d_model
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((9, T, d)).astype(np.float32)
    acts[..., 0] = -1.0
    acts[MASSIVE] = 0.0
    acts[MASSIVE[0], MASSIVE[1], 0] = 400.0  # ~50x the median norm (~8)
    toks = rng.integers(1, 200, (9, T)).astype(np.int32)
    toks[:, 0] = BOS
    toks[MID_BOS] = BOS
    root = tmp_path_factory.mktemp("eval_table")
    w = StoreWriter(
        root / CORPUS,
        StoreRequest("synthetic", CORPUS, (LAYER,), T, 9, "float32", 0, 3),
        {
            "d_model": d,
            "bos_id": BOS,
            "bos_note": "",
        },
    )
    for shard in range(3):
        rows = slice(3 * shard, 3 * shard + 3)
        w.write_shard(shard, toks[rows], {LAYER: acts[rows]})
    return root, acts, toks


def _fvu(x):
    x = x.astype(np.float64)
    return float((np.minimum(x, 0) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())  # x - relu(x) = min(x, 0)


def test_reconstruction_table__hand_fvu_with_and_without_the_massive_token(planted):
    root, acts, _ = planted
    d = acts.shape[-1]
    run = SAERun(LAYER, CORPUS, "relu", d, None, 0)
    views = eval_table.heldout_views([run], root, 10.0)
    assert list(views) == [(CORPUS, LAYER)]
    table = eval_table.reconstruction_table([run], {run.name: identity_relu_sae(d)}, views, {run.name: 0.25})
    assert list(table.index) == [run.name] and set(eval_table.RECON_COLUMNS) <= set(table.columns)
    row = table.loc[run.name]
    keep = np.ones((3, T), bool)  # held-out sequences 6-8
    keep[:, 0] = False
    keep[MID_BOS[0] - 6, MID_BOS[1]] = False
    everything = acts[6:][keep]
    keep[MASSIVE[0] - 6, MASSIVE[1]] = False
    typical = acts[6:][keep]
    assert row.n_tokens == len(typical) == 3 * 15 - 2 and row.n_massive == 1
    assert row.fvu == pytest.approx(_fvu(typical), rel=1e-5)
    assert row.fvu_with_massive == pytest.approx(_fvu(everything), rel=1e-5)
    assert row.fvu_with_massive != pytest.approx(row.fvu, rel=1e-2), "the massive token must move FVU"
    assert row.dead == 0.25, "dead is the trainer's number, passed in"
    assert row.silent_on_heldout == pytest.approx(1 / d), "latent 0 fires only on the massive token"


def test_downstream__the_first_held_out_sequences_with_separators_kept_clean(planted, model):
    root, acts, toks = planted
    d = acts.shape[-1]
    run = SAERun(LAYER, CORPUS, "relu", d, None, 0)
    sae = identity_relu_sae(d)
    views = eval_table.heldout_views([run], root, 10.0)
    got = eval_table.downstream(model, [run], {run.name: sae}, views, n_seq=2, progress=False)[run.name]
    want = downstream_eval(
        model, {run.name: (sae, LAYER)}, toks[6:8].astype(np.int64), keep_tokens=(BOS,), progress=False
    )[run.name]
    assert got.n_tokens == 2 * (T - 1)
    assert got.summary() == pytest.approx(want.summary())
    with pytest.raises(KeyError, match="no held-out view of corpus 'other'"):
        eval_table.downstream(model, [SAERun(LAYER, "other")], {}, views, 2, progress=False)


def _result(ce_sae, n=10):
    z = np.zeros(3)
    return DownstreamResult(2.0, ce_sae, 4.0, ce_sae - 2.0, (4.0 - ce_sae) / 2.0, 0.1, z, z, z, z, n)


def test_join_and_summary_line__recon_rows_beside_their_ce():
    recon = pd.DataFrame(
        {"l0": [8.0, 20.0], "fvu": [0.1, 0.3], "median_relative_error": [0.2, 0.4], "dead": [0.0, 0.5]},
        index=pd.Index(["a", "b"], name="name"),
    )
    table = eval_table.join(recon, {"a": _result(2.5), "b": _result(3.0), "external": _result(2.1)})
    assert list(table.index) == ["a", "b"], "an SAE without a reconstruction row stays out"
    assert list(table.columns) == list(eval_table.TABLE_COLUMNS + eval_table.CE_COLUMNS)
    assert table.loc["b", "ce_recovered"] == pytest.approx(0.5) and table.loc["a", "delta_ce"] == 0.5
    assert eval_table.summary_line(table) == (
        "Held-out FVU (massive tokens excluded) ranges from 0.100 (a) to 0.300 (b); median L0 14.0; "
        "median CE recovered 0.625, median delta CE 0.750 nats."
    )
