"""Tests for helpers.analysis.matching (issue #5): planted permutations, brute-force equality, hand-computed
tiny examples, dense-vs-sparse Hungarian optimum, feature splitting and the factor study."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers.analysis import matching as M  # noqa: E402
from helpers.analysis import pair_comparison
from helpers.analysis import similarity as sim
from helpers.report.plots import matching_study as P  # noqa: E402
from helpers.training.experiments import SAERun


def _unit(x):
    return x / x.norm(dim=1, keepdim=True)


def _noisy_permuted_copy(A, noise=0.1):
    perm = torch.randperm(A.shape[0])
    return perm, A[perm] + noise * torch.randn_like(A)  # B_j = A_perm[j] + noise


def _dense_cos(A, B):
    return (
        _unit(torch.as_tensor(A, dtype=torch.float32)) @ _unit(torch.as_tensor(B, dtype=torch.float32)).T
    ).double()


# ------------------------------------------------------------------ hand-computed tiny example
# A (un-normalised) = (1,0), (0,2), (3,4) -> unit a0=(1,0), a1=(0,1), a2=(0.6,0.8)
# B = (2,0), (-1,1), (0,-1):  cos(b, a) rows: b0: 1, 0, 0.6 | b1: -0.7071, 0.7071, 0.1414 | b2: 0, -1, -0.8
A_TINY = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
B_TINY = np.array([[2.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])


def test_mmcs_and_top1_ratio__hand_computed_tiny_example():
    assert sim.mmcs(A_TINY, B_TINY) == pytest.approx((1 + 1 / math.sqrt(2) + 0) / 3, abs=1e-6), (
        "rows not normalised?"
    )
    assert sim.top1_ratio(A_TINY, B_TINY, 0.7) == pytest.approx(2 / 3), "0.7071 > 0.7 must count"
    assert sim.top1_ratio(A_TINY, B_TINY, 0.71) == pytest.approx(1 / 3)
    vals, idx = sim.topk_cosine(A_TINY, B_TINY, 3)
    assert idx.tolist() == [[0, 2, 1], [1, 2, 0], [0, 2, 1]], "ranking must be by cosine, descending"
    assert vals[1].tolist() == pytest.approx(
        [1 / math.sqrt(2), 0.2 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-6
    )
    assert sim.top1_ratio(A_TINY, B_TINY, 0.0) == pytest.approx(2 / 3), (
        "b2's best cosine is exactly 0: not > 0"
    )
    curve = sim.top1_ratio_curve(vals, [0.0, 0.5, 0.7, 0.71, 0.99])
    assert curve == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3]), (
        "curve must be 'fraction strictly above t'"
    )


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_hungarian_match__tiny_example_beats_greedy(method):
    # greedy takes b0->a0 (1.0); the optimum is b0->a2 (0.6), b1->a1 (0.7071), b2->a0 (0): 1.3071 vs 0.9071
    rows_A, rows_B, sims = sim.hungarian_match(A_TINY, B_TINY, method=method, k=1)
    assert rows_B.tolist() == [0, 1, 2] and rows_A.tolist() == [2, 1, 0], "assignment is not the optimum"
    assert float(sims.sum()) == pytest.approx(0.6 + 1 / math.sqrt(2), abs=1e-6)


# ------------------------------------------------------------------ planted permutation / chance
@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_hungarian_match__recovers_planted_permutation(method):
    A = torch.randn(256, 64)
    perm, B = _noisy_permuted_copy(A, noise=0.1)  # |noise| ~ 0.8 vs |row| ~ 8: cos ~ 0.995
    res = sim.hungarian_match(A, B, method=method, k=4)
    assert res.method == method and res.exact
    assert torch.equal(res.rows_B, torch.arange(256)), "result must be sorted by rows_B"
    assert torch.equal(res.rows_A, perm), "B_j comes from A_perm[j]: rows_A must equal perm"
    assert float(res.similarities.min()) > 0.98
    assert sim.mmcs(A, B) > 0.98 and sim.top1_ratio(A, B) == 1.0


def test_top1_ratio__independent_random_dictionaries_near_zero():
    # For independent uniform unit vectors in d dims, P(cos > t) <= exp(-d t^2 / 2) (concentration on
    # the sphere) = exp(-64 * 0.49 / 2) = 1.6e-7 at d=64, t=0.7. Union over 256 x 256 pairs: expected
    # number of pairs above 0.7 <= 0.01, so the ratio is 0 unless something is wrong (e.g. no
    # normalisation, which gives "cosines" ~ |a||b| >> 1).
    A, B = torch.randn(256, 64), torch.randn(256, 64)
    assert sim.top1_ratio(A, B, 0.7) <= 1 / 256
    # the max of 256 cosines (sd 1/8) sits near 2.7 sd ~ 0.34
    assert 0.25 < sim.mmcs(A, B) < 0.45


# ------------------------------------------------------------------ topk_cosine
@pytest.mark.parametrize("chunk_size", [1, 7, 45, None])
def test_topk_cosine__matches_brute_force_with_ragged_chunks(chunk_size):
    A, B = torch.randn(97, 16) * torch.rand(97, 1) * 5, torch.randn(45, 16)  # rows of varied norms
    vals, idx = sim.topk_cosine(A.numpy(), B, 5, chunk_size=chunk_size)
    S = _dense_cos(A, B).T  # [n_B, n_A]
    ref_v, ref_i = torch.sort(S, dim=1, descending=True)
    assert vals.shape == (45, 5) and idx.dtype == torch.long
    assert torch.equal(idx, ref_i[:, :5]), "chunked top-k indices differ from brute force (chunk offset bug?)"
    assert torch.allclose(vals.double(), ref_v[:, :5], atol=1e-6)


def test_topk_cosine__k_larger_than_n_A_raises():
    with pytest.raises(ValueError, match="k=11"):
        sim.topk_cosine(torch.randn(10, 4), torch.randn(3, 4), 11)
    with pytest.raises(ValueError, match="share d"):
        sim.topk_cosine(torch.randn(10, 4), torch.randn(3, 5), 1)


def test_topk_cosine__zero_rows_have_cosine_zero_not_nan():
    A = torch.randn(6, 3)
    A[2] = 0
    B = A[[2, 3]].clone()
    vals, idx = sim.topk_cosine(A, B, 6)
    assert torch.isfinite(vals).all(), "zero rows must be guarded"
    assert vals[0].abs().max() == 0 and vals[1, 0] == pytest.approx(1.0, abs=1e-6) and idx[1, 0] == 3


# ------------------------------------------------------------------ Hungarian: sizes and sparse path
@pytest.mark.parametrize("n_A,n_B", [(100, 60), (60, 100)])
def test_hungarian_match__unequal_sizes_one_to_one(n_A, n_B):
    A, B = torch.randn(n_A, 16), torch.randn(n_B, 16)
    dense = sim.hungarian_match(A, B, method="dense")
    sparse = sim.hungarian_match(A, B, method="sparse", k=3)
    S = _dense_cos(A, B).numpy()
    ref = S[linear_sum_assignment(S, maximize=True)].sum()
    for res in (dense, sparse):
        assert len(res.rows_A) == len(res.rows_B) == 60
        assert len(set(res.rows_A.tolist())) == len(set(res.rows_B.tolist())) == 60, "not one-to-one"
        assert float(res.similarities.sum()) == pytest.approx(ref, abs=1e-4)
        assert torch.allclose(
            res.similarities.double(), torch.as_tensor(S[res.rows_A, res.rows_B]), atol=1e-6
        )
    assert sparse.exact


@pytest.mark.parametrize("shape", [(150, 120), (120, 150), (200, 200)])
def test_hungarian_sparse__certified_optimum_even_with_one_candidate_per_row(shape):
    # d=6 random rows: the optimum uses many non-top-1 pairs, so k=1 needs the feasibility
    # completion and several certificate rounds; the result must still equal the dense optimum.
    A, B = torch.randn(shape[0], 6), torch.randn(shape[1], 6)
    S = _dense_cos(A, B).numpy()
    ref = S[linear_sum_assignment(S, maximize=True)].sum()
    res = sim.hungarian_match(A, B, method="sparse", k=1)
    assert res.exact and res.rounds > 1, "expected the dual certificate to add violating pairs"
    assert float(res.similarities.sum()) == pytest.approx(ref, abs=1e-4), "sparse path is not optimal"


def test_hungarian_match_combined__optimises_mean_of_encoder_and_decoder_cosine():
    dA, dB, eA, eB = (torch.randn(40, 8) for _ in range(4))
    S = (_dense_cos(dA, dB) + _dense_cos(eA, eB)).numpy() / 2
    ra, rb = linear_sum_assignment(S, maximize=True)
    for method in ("dense", "sparse"):
        res = sim.hungarian_match_combined(dA, dB, eA, eB, method=method, k=2)
        assert torch.allclose(
            res.similarities.double(), torch.as_tensor(S[res.rows_A, res.rows_B]), atol=1e-6
        )
        assert float(res.similarities.sum()) == pytest.approx(S[ra, rb].sum(), abs=1e-4)
    sims = torch.tensor([0.9, 0.71, 0.7, 0.1])
    assert sim.shared_fraction(sims, 0.7) == 0.5


# ------------------------------------------------------------------ SAE variants
def test_variant_dictionaries__reads_right_tensors_from_non_square_sae():
    d_in, d_sae = 6, 10
    sae_a = SimpleNamespace(
        W_enc=torch.randn(d_in, d_sae, requires_grad=True), W_dec=torch.randn(d_sae, d_in)
    )
    sae_b = SimpleNamespace(W_enc=torch.randn(d_in, d_sae), W_dec=torch.randn(d_sae, d_in))
    A, B = M.variant_dictionaries(sae_a, sae_b, "decoder")
    assert torch.equal(A, sae_a.W_dec) and torch.equal(B, sae_b.W_dec)
    A, B = M.variant_dictionaries(sae_a, sae_b, "encoder")
    assert A.shape == (d_sae, d_in) and torch.equal(A, sae_a.W_enc.detach().T), (
        "encoder latents are W_enc.T rows"
    )
    A, B = M.variant_dictionaries(sae_a, sae_b, "neuron")
    assert torch.equal(A, torch.eye(d_in)) and torch.equal(B, sae_b.W_dec)
    A, B = M.variant_dictionaries(sae_a, sae_b, "decoder_neuron")
    assert A.shape == (d_in, d_sae)
    with pytest.raises(ValueError, match="valid: decoder, encoder, neuron"):
        M.variant_dictionaries(sae_a, sae_b, "enc")
    swapped = SimpleNamespace(W_enc=torch.randn(d_sae, d_in), W_dec=torch.randn(d_sae, d_in))
    with pytest.raises(ValueError, match=r"W_enc \[d_in, d_sae\]"):
        M.variant_dictionaries(swapped, sae_b, "encoder")


# ------------------------------------------------------------------ feature splitting
def test_feature_splitting__recovers_planted_children_counts():
    d, n_p = 64, 40
    P_ = _unit(torch.randn(n_p, d))
    Q = torch.randn(n_p, d)
    Q = _unit(Q - (Q * P_).sum(1, keepdim=True) * P_)  # q_i orthogonal to p_i
    # parents 0-19 split into p +/- 0.3 q (cos 0.958), 20-29 keep one child, 30-39 none; 30 random children
    children = torch.cat(
        [P_[:20] + 0.3 * Q[:20], P_[:20] - 0.3 * Q[:20], P_[20:30] + 0.3 * Q[20:30], torch.randn(30, d)]
    )
    parent_of = torch.cat([torch.arange(20), torch.arange(20), torch.arange(20, 30), torch.full((30,), -1)])
    perm = torch.randperm(len(children))
    split = M.feature_splitting(P_, children[perm], threshold=0.7, n_examples=5)
    expected = torch.tensor([2] * 20 + [1] * 10 + [0] * 10)
    assert torch.equal(split.counts, expected), "children counts per parent not recovered"
    assert torch.equal(split.best_parent, parent_of[perm]), "random children must stay unassigned (-1)"
    assert len(split.examples) == 5
    for p, kids in split.examples.items():
        assert len(kids) == 2 and parent_of[perm][kids].tolist() == [p, p]


# ------------------------------------------------------------------ factor study
def _synthetic_runs():
    """Four planned SAEs (seeds 0/1 x corpora a/b) and a loader of planted decoders for them."""
    base = torch.randn(64, 32)
    corpus_b = base.clone()
    corpus_b[: int(0.7 * 64)] = torch.randn(int(0.7 * 64), 32)  # corpus changes 70% of the features
    loads = []

    def load(run):
        loads.append(run)
        g = torch.Generator().manual_seed(1000 * run.seed + (run.corpus == "b"))
        D = {"a": base, "b": corpus_b}[run.corpus]
        W_dec = D[torch.randperm(64, generator=g)] + 0.05 * torch.randn(
            64, 32, generator=g
        )  # seed: tiny change
        return SimpleNamespace(W_dec=W_dec, W_enc=W_dec.T.clone())

    runs = [SAERun(3, c, "topk", 64, 8, s) for s in (0, 1) for c in ("a", "b")]
    return runs, load, loads


def test_factor_study__planted_corpus_factor_ranks_first():
    runs, load, loads = _synthetic_runs()
    results = M.factor_study(runs, load)
    label = {r.name: f"s{r.seed}-{r.corpus}" for r in runs}
    assert sorted((r.factor, label[r.name_a], label[r.name_b]) for r in results) == [
        ("corpus", "s0-a", "s0-b"),
        ("corpus", "s1-a", "s1-b"),
        ("seed", "s0-a", "s1-a"),
        ("seed", "s0-b", "s1-b"),
    ], "pairs must differ in exactly one factor, each unordered pair once"
    assert sorted(r.name for r in loads) == sorted(r.name for r in runs), (
        "each SAE must be loaded exactly once"
    )
    ranks = M.rank_factors(results)
    assert [r.factor for r in ranks] == ["corpus", "seed"] and [r.n_pairs for r in ranks] == [2, 2]
    assert ranks[1].mean_top1_ratio == 1.0
    assert ranks[0].mean_top1_ratio == pytest.approx(1 - 44 / 64, abs=2 / 64), (
        "~30% of features survive the corpus"
    )
    row = results[0].summary()
    assert "best_cos" not in row and row["top1_ratio"] == results[0].top1_ratio
    with pytest.raises(ValueError, match="valid: seed, corpus"):
        M.factor_study(runs, load, factors=["dataset"])


def test_factor_pairs__free_seed_pairs_each_factor_across_seeds_and_keeps_the_seed_pair():
    E = lambda seed, corpus="a", arch="topk": SAERun(3, corpus, arch, 64, 8, seed)  # noqa: E731
    runs = [E(0), E(1), E(2, arch="relu"), E(3, corpus="b"), E(4, corpus="b", arch="relu")]
    strict = M.factor_pairs(runs)
    assert strict == [("seed", 0, 1)], "with distinct seeds only the seed pair differs in one factor"
    free = sorted(M.factor_pairs(runs, free=("seed",)))
    assert free == sorted(
        [
            ("seed", 0, 1),
            ("architecture", 0, 2),
            ("architecture", 1, 2),
            ("corpus", 0, 3),
            ("corpus", 1, 3),
            ("architecture", 3, 4),
            ("corpus", 2, 4),
        ]
    )
    # a setting outside the factors (say a learning rate) that differs: those pairs isolate nothing
    lr = {0: 1e-3, 1: 1e-3, 2: 1e-3, 3: 2e-3, 4: 2e-3}
    held = sorted(M.factor_pairs(runs, free=("seed",), held=lambda r: lr[r.seed]))
    assert held == [("architecture", 0, 2), ("architecture", 1, 2), ("architecture", 3, 4), ("seed", 0, 1)]
    with pytest.raises(ValueError, match="unknown factors"):
        M.factor_pairs(runs, free=("colour",))
    with pytest.raises(ValueError, match="runs must be distinct"):
        M.factor_pairs([E(0), E(0)])


# ------------------------------------------------------------------ layer-pair matrix
def test_layer_pair_matrix__planted_overlaps_in_both_directions():
    D0 = torch.randn(40, 32)
    D1 = D0[torch.randperm(40)] + 0.05 * torch.randn(40, 32)
    D2 = torch.cat([D0[:20] + 0.05 * torch.randn(20, 32), torch.randn(30, 32)])  # 20 of its 50 rows from D0
    mat = M.layer_pair_matrix([D0, D1, D2], chunk_size=7)
    assert np.allclose(np.diag(mat), 1)
    assert mat[0, 1] == mat[1, 0] == 1.0
    assert mat[0, 2] == pytest.approx(20 / 50), "M[i, j] = fraction of rows of j matched in i"
    assert mat[2, 0] == pytest.approx(20 / 40)
    assert mat[1, 2] == pytest.approx(sim.top1_ratio(D1, D2)) and mat[2, 1] == pytest.approx(
        sim.top1_ratio(D2, D1)
    )


# ------------------------------------------------------------------ plots (smoke + ordering)
def test_plots__return_figures_and_factor_order_follows_ranking():
    A = torch.randn(80, 16)
    _, B = _noisy_permuted_copy(A, 0.3)
    vals = {"decoder": sim.topk_cosine(A, B, 4)[0], "neuron": sim.topk_cosine(sim.neuron_basis(16), B, 4)[0]}
    results = M.factor_study(*_synthetic_runs()[:2])
    split = M.feature_splitting(A, torch.cat([A, A + 0.1 * torch.randn_like(A)]), 0.7)
    figs = [
        P.plot_topk_histograms(vals, bins=20),
        P.plot_top1_ratio_curves({k: v[:, 0] for k, v in vals.items()}),
        P.plot_factor_study(results),
        P.plot_layer_pair_heatmap(np.eye(3), ["L0", "L1", "L2"]),
        P.plot_feature_splitting(split),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    assert [t.get_text() for t in figs[2].axes[0].get_xticklabels()] == ["corpus", "seed"]
    notes = [t.get_text() for t in figs[2].axes[0].texts]
    assert all("chance" in n for n in notes), "each factor's chance level must be annotated"
    assert int(split.counts.sum()) == 160 and figs[4].axes[0].patches[2].get_height() == 80
    for f in figs:
        plt.close(f)


# ------------------------------------------------------------------ the post's headline comparisons
def _sae(W_dec, W_enc=None):
    W_dec = torch.as_tensor(W_dec, dtype=torch.float32)
    return SimpleNamespace(W_dec=W_dec, W_enc=W_dec.T.clone() if W_enc is None else W_enc)


def test_topk_by_variant_and_summary__hand_computed_tiny_example():
    # best cosines of B_TINY's rows in A_TINY: b0 1.0 (then 0.6), b1 0.7071 (then 0.1414), b2 0.0 (then -0.8)
    topk = pair_comparison.topk_by_variant(_sae(A_TINY), _sae(B_TINY), ("decoder", "neuron"), k=2)
    assert topk["decoder"].shape == (3, 2)
    assert topk["decoder"][:, 0].tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 0.0], abs=1e-6)
    assert topk["decoder"][:, 1].tolist() == pytest.approx([0.6, 0.2 / math.sqrt(2), -0.8], abs=1e-6)
    # neuron: B's rows against the identity basis of d = 2: (1, 0) -> 1, (-1, 1)/sqrt2 -> 0.7071, (0, -1) -> 0
    assert topk["neuron"][:, 0].tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 0.0], abs=1e-6)
    table = pair_comparison.topk_summary({"seed": topk}).set_index(["factor", "variant"])
    row = table.loc[("seed", "decoder")]
    assert row["top1_ratio@0.7"] == pytest.approx(2 / 3), "0.7071 > 0.7 counts, 0 does not"
    assert row["median_top1"] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert row["mmcs"] == pytest.approx((1 + 1 / math.sqrt(2)) / 3, abs=1e-6), "mmcs is the mean top-1 cosine"
    assert list(table.index) == [("seed", "decoder"), ("seed", "neuron")]


def _summary(seed_dec, corpus_dec, seed_enc, medians=(0.5, 0.4, 0.3, 0.2)):
    rows = [("seed", "decoder", seed_dec), ("seed", "encoder", seed_enc), ("corpus", "decoder", corpus_dec)]
    rows += [("corpus", "encoder", 0.0)]
    return pd.DataFrame(
        [
            {"factor": f, "variant": v, "top1_ratio@0.7": r, "median_top1": m, "mmcs": m}
            for (f, v, r), m in zip(rows, medians)
        ]
    )


def test_post_comparison__reads_both_findings_from_the_summary():
    post = pair_comparison.post_comparison(_summary(0.5, 0.2, 0.1))
    assert (post.seed_decoder, post.corpus_decoder, post.seed_encoder) == (0.5, 0.2, 0.1)
    assert post.corpus_changes_more and post.encoder_below_decoder and post.agrees
    assert "0.50 vs across corpora 0.20: the corpus changes features more" in post.sentence()
    flipped = pair_comparison.post_comparison(_summary(0.2, 0.5, 0.1))
    assert not flipped.corpus_changes_more and not flipped.agrees
    assert "the seed changes features more" in flipped.sentence()
    assert not pair_comparison.post_comparison(_summary(0.5, 0.2, 0.6)).agrees, (
        "encoder above decoder breaks agreement"
    )


def test_one_to_one_table__a_permuted_copy_is_all_shared_and_its_null_is_the_rotated_match():
    W = torch.randn(48, 32)
    perm = torch.randperm(48)
    a, b = _sae(W), _sae(W[perm])
    table = pair_comparison.one_to_one_table({"seed": (a, b)}).set_index("variant")
    assert list(table.index) == ["decoder", "encoder", "combined"] and (table["factor"] == "seed").all()
    assert (table["shared@0.7"] == 1.0).all() and table["exact"].all()
    assert table["mean_matched_cos"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert table.loc["decoder", "null_shared@0.7"] == sim.null_shared_fraction(W, W[perm])
    assert (table["null_shared@0.7"] < 0.2).all(), "a random rotation must destroy the alignment"


def test_null_shared_fraction_combined__turns_decoder_and_encoder_by_the_same_rotation():
    dec, enc = torch.randn(40, 16), torch.randn(40, 16)
    Q = sim.random_rotation(16, seed=7)
    # B = A turned back by Q: the null's rotation (by the same Q) restores A exactly, in both parts
    assert sim.null_shared_fraction_combined(dec, dec @ Q.T, enc, enc @ Q.T, seed=7) == 1.0
    assert sim.null_shared_fraction_combined(dec, dec @ Q.T, enc, enc, seed=7) < 0.2, (
        "only the decoder turned back: the encoder's rotation must break the combined match"
    )
    assert sim.null_shared_fraction_combined(dec, dec, enc, enc, seed=7) < 0.2


def test_published_comparison__our_column_from_the_tables():
    hung = pd.DataFrame(
        [
            {
                "factor": "seed",
                "variant": "combined",
                "shared@0.7": 0.52,
                "null_shared@0.7": 0.004,
                "exact": True,
            }
        ]
    )
    table = pair_comparison.published_comparison(_summary(0.5, 0.2, 0.1), hung)
    assert table["ours"].tolist() == ["0.50", "0.50 vs 0.20", "0.20", "52% (chance 0%)"]
    assert table["quantity"].tolist() == list(pair_comparison.PUBLISHED)


def test_factor_ranking_and_pair_table__means_floor_and_chance_per_factor():
    def pair(factor, shared, null):
        cos = np.array([0.9, 0.1])
        return M.PairResult(factor, f"{factor}-a", f"{factor}-b", 0, 1, "decoder", 0.7, cos, shared, null)

    results = [pair("seed", 0.5, 0.0), pair("seed", 0.7, 0.02), pair("corpus", 0.1, 0.01)]
    ranking = M.factor_ranking(results)
    assert list(ranking.index) == ["corpus", "seed"], "most disruptive (lowest shared) first"
    assert ranking.loc["seed", "mean_shared"] == pytest.approx(0.6)
    assert ranking.loc["seed", "null_shared"] == pytest.approx(0.01)
    assert ranking["n_pairs"].tolist() == [1, 2]
    assert ranking.loc["corpus", "below_seed_floor"] == pytest.approx(0.5)
    table = M.pair_table(results)
    assert table.columns.tolist() == [
        "factor",
        "name_a",
        "name_b",
        "shared@0.7",
        "null_shared@0.7",
        "mean_best_cos",
    ]
    assert table["null_shared@0.7"].tolist() == [0.0, 0.02, 0.01]
    assert table["mean_best_cos"].tolist() == pytest.approx([0.5] * 3)
    with pytest.raises(ValueError, match="free=\\('seed',\\)"):
        M.factor_ranking(results[2:])


def test_chance_level__mean_over_pairs_not_over_factors():
    results = [
        M.PairResult("seed", "a", "b", 0, 1, "decoder", 0.7, np.zeros(2), 0.5, 0.0),
        M.PairResult("seed", "c", "d", 0, 1, "decoder", 0.7, np.zeros(2), 0.7, 0.03),
        M.PairResult("k", "a", "e", 8, 4, "decoder", 0.7, np.zeros(2), 0.4, 0.06),
        M.PairResult("corpus", "a", "f", "x", "y", "decoder", 0.7, np.zeros(2), 0.1, 0.0),
    ]
    assert M.chance_level(results) == pytest.approx((0.0 + 0.03 + 0.06 + 0.0) / 4)


def test_factor_study__null_ratio_is_the_rotated_matching_of_each_pair():
    runs, load, _ = _synthetic_runs()
    for method in ("hungarian", "top1"):
        results = M.factor_study(runs, load, method=method)
        for r in results:
            assert 0.0 <= r.null_ratio < 0.2 < r.top1_ratio, "chance must sit below every planted overlap"
    by_name = {r.name: r for r in runs}
    r = results[0]
    A, B = load(by_name[r.name_a]).W_dec, load(by_name[r.name_b]).W_dec
    hung = M.factor_study([by_name[r.name_a], by_name[r.name_b]], load, method="hungarian")[0]
    assert hung.null_ratio == sim.null_shared_fraction(A, B), "hungarian null is null_shared_fraction"
    assert math.isnan(M.factor_study(runs, load, null=False)[0].null_ratio)


def test_feature_splitting_parents_by_children__counts_zero_one_two_and_more():
    split = M.FeatureSplitting(
        torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.tensor([0, 1, 2, 3, 5, 0]), {}, 0.7
    )
    assert split.parents_by_children(3) == [2, 1, 1, 2]
    assert split.parents_by_children(1) == [2, 4]


def test_layer_pair_matrix__rotate_seed_gives_the_chance_level():
    D0 = torch.randn(40, 32)
    Q = sim.random_rotation(32, seed=11)
    D1 = D0 @ Q.T  # D0 turned back by Q: the null's rotation restores D0
    real = M.layer_pair_matrix([D0, D1])
    null = M.layer_pair_matrix([D0, D1], rotate_seed=11)
    assert real[0, 1] < 0.2 and null[0, 1] == 1.0 and null[1, 0] == 1.0
    assert np.isnan(np.diag(null)).all()
    assert M.layer_pair_matrix([D0, D0], rotate_seed=11)[0, 1] < 0.2
