"""Cross-corpus evaluation (helpers.analysis.cross_corpus) on planted data with hand-computed numbers."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.analysis.cross_corpus import cells, cross_corpus_eval, domain_gap, reconstruction_grid
from helpers.analysis.heldout import HeldOut
from helpers.sae import make_sae
from helpers.sae.base import SAEConfig


def _projection_sae(U: torch.Tensor):
    """A ReLU SAE whose 2r latents read +-u_i (rows of U [r, d], orthonormal): it reconstructs the
    projection of x onto span(U) exactly, relu(x.u) u + relu(-x.u) (-u) = (x.u) u."""
    r, d = U.shape
    sae = make_sae(SAEConfig("relu", d, 2 * r, apply_b_dec_to_input=False), seed=0)
    with torch.no_grad():
        W = torch.cat([U, -U])
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _fvu(x, x_hat):
    x, x_hat = x.double(), x_hat.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_reconstruction_grid__equals_hand_computed_fvu_l0_and_silent_latents():
    g = torch.Generator().manual_seed(0)
    t, u, s = (torch.randn(500, generator=g) for _ in range(3))
    A = torch.stack([t, torch.zeros(500)], 1)  # corpus A lives on e1
    B = torch.stack([u, 2 * s], 1)  # corpus B also has variance along e2
    saes = {"a": _projection_sae(torch.eye(2)[:1]), "b": _projection_sae(torch.eye(2))}
    massive = torch.tensor([[40.0, 30.0]])  # one massive token, kept only in "all tokens"
    rows = {"a": (A, torch.cat([A, massive])), "b": (B, torch.cat([B, massive]))}
    grid = reconstruction_grid(saes, rows)
    proj_e1 = lambda x: torch.stack([x[:, 0], torch.zeros(len(x))], 1)  # noqa: E731
    assert grid.loc[("a", "a"), "fvu"] == pytest.approx(0.0, abs=1e-9)
    assert grid.loc[("a", "b"), "fvu"] == pytest.approx(_fvu(B, proj_e1(B)), rel=1e-5)
    # the error is the e2 part itself (2s, about zero); the variance is about each dimension's mean
    s2, u2 = s.double(), u.double()
    hand = float((4 * s2**2).mean() / (u2.var(unbiased=False) + 4 * s2.var(unbiased=False)))
    assert grid.loc[("a", "b"), "fvu"] == pytest.approx(hand, rel=1e-5)
    assert grid.loc[("b", "a"), "fvu"] == pytest.approx(0.0, abs=1e-9)
    allB = torch.cat([B, massive])
    assert grid.loc[("a", "b"), "fvu_with_massive"] == pytest.approx(_fvu(allB, proj_e1(allB)), rel=1e-5)
    # one of +-e1 fires on every token; on corpus A the e2 latents of SAE b never fire
    assert grid.loc[("a", "a"), "l0"] == pytest.approx(1.0)
    assert grid.loc[("b", "b"), "l0"] == pytest.approx(2.0)
    assert grid.loc[("b", "a"), "dead_fraction"] == pytest.approx(0.5)
    assert grid.loc[("a", "a"), "n_tokens"] == 500
    gap = domain_gap(grid, "fvu")
    assert gap.in_domain == pytest.approx(0.0, abs=1e-9)
    assert gap.out_of_domain == pytest.approx(grid.loc[("a", "b"), "fvu"] / 2, rel=1e-6)
    with pytest.raises(ValueError, match="both in-domain and out-of-domain"):
        domain_gap(grid.loc[[("a", "a")]], "fvu")


def test_cross_corpus_eval__reads_each_corpus_through_its_held_out_view(tmp_path):
    from helpers.data.collect import collect, make_request
    from helpers.data.massive import massive_threshold
    from helpers.model.models import load_model

    model = load_model("tiny-llama")
    stores = {}
    for corpus in ("synthetic-a", "synthetic-b"):
        req = make_request(
            "tiny-llama", corpus, [2], n_tokens=12 * 16, seq_len=16, dtype="float32", shard_seqs=4
        )
        stores[corpus] = collect(req, tmp_path / corpus, model, batch_size=4, progress=False)
    saes = {c: make_sae(SAEConfig("topk", 64, 128, k=4), seed=i) for i, c in enumerate(stores)}
    views = {c: HeldOut(s, 2, 1.05) for c, s in stores.items()}  # a low cut: many tokens "massive"
    everything = {c: HeldOut(s, 2, None) for c, s in stores.items()}
    table = cross_corpus_eval(saes, views, everything, model=model, n_eval_seq=2)
    assert list(table.index) == [(a, b) for a in stores for b in stores]
    # by hand: the last shard, position 0 and the BOS id (256) out, the cut at 1.05x the median norm
    b = stores["synthetic-b"]
    x, _ = b.token_rows(2, [b.n_shards - 1], (0,), (256,), massive_threshold(b, 2, 1.05))
    assert 0 < len(x) < len(everything["synthetic-b"].x), "the cut must leave some tokens out"
    hand = reconstruction_grid({"a": saes["synthetic-a"]}, {"b": (x, None)}).loc[("a", "b"), "fvu"]
    assert table.loc[("synthetic-a", "synthetic-b"), "fvu"] == pytest.approx(hand, rel=1e-6)
    assert table.loc[("synthetic-a", "synthetic-b"), "n_tokens"] == len(x)
    assert np.isfinite(table["delta_ce"]).all() and (table["delta_ce"] != 0).all()
    assert (table["fvu"] != table["fvu_with_massive"]).all(), "the with-massive view keeps more tokens"
    no_model = cross_corpus_eval(saes, views)
    assert no_model["delta_ce"].isna().all() and no_model["fvu_with_massive"].isna().all()
    assert np.allclose(no_model["fvu"], table["fvu"])


def _grid():
    index = pd.MultiIndex.from_tuples(
        [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")], names=["train", "eval"]
    )
    return pd.DataFrame(
        {
            "fvu": [0.1, 0.4, 0.6, 0.3],
            "delta_ce": [0.2, 1.0, 3.0, 0.0],
            "dead_fraction": [0.0, 0.5, 0.25, 0.0],
        },
        index=index,
    )


def test_cells_and_domain_gap__hand_computed_from_a_grid():
    from helpers.report import findings

    got = cells(_grid())
    assert list(got) == ["a->a", "a->b", "b->a", "b->b"]
    assert got["b->a"] == {"fvu": 0.6, "delta_ce": 3.0, "dead": 0.25}
    assert findings.CorpusCell(**got["a->b"]) == findings.CorpusCell(fvu=0.4, delta_ce=1.0, dead=0.5)
    fvu, ce = domain_gap(_grid(), "fvu"), domain_gap(_grid(), "delta_ce")
    assert (fvu.in_domain, fvu.out_of_domain) == pytest.approx((0.2, 0.5))
    assert (ce.in_domain, ce.out_of_domain) == pytest.approx((0.1, 2.0))
    assert fvu.ratio == pytest.approx(2.5)
