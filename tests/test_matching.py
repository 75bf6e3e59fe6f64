"""Tests for helpers.analysis.matching (issue #5): planted permutations, brute-force equality, hand-computed
tiny examples, dense-vs-sparse Hungarian optimum, feature splitting and the factor study."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers.analysis import matching as M  # noqa: E402
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
    assert int(split.counts.sum()) == 160 and figs[4].axes[0].patches[2].get_height() == 80
    for f in figs:
        plt.close(f)
