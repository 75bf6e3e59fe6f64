"""Tests for helpers.analysis.cka and helpers.analysis.universality (issue #29 item 3): invariances of
CKA/SVCCA, a hand-computed HSIC value, np.corrcoef equality, and a planted feature permutation between
two synthetic "models" recovered by activation correlation, beside its three baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.analysis import cka
from helpers.analysis import universality as U
from helpers.analysis.similarity import random_rotation


def _rot(d: int, seed: int) -> np.ndarray:
    return random_rotation(d, seed).double().numpy()


@pytest.fixture(scope="module")
def x_ND():
    return np.random.default_rng(0).standard_normal((2000, 32))


# ----------------------------------------------------------------------------- CKA
def test_cka_invariances(x_ND):
    assert cka.linear_cka(x_ND, x_ND) == pytest.approx(1.0, abs=1e-6)
    assert cka.linear_cka(x_ND, x_ND @ _rot(32, 1)) == pytest.approx(1.0, abs=1e-6)
    assert cka.linear_cka(x_ND, 3.7 * x_ND + 5.0) == pytest.approx(1.0, abs=1e-6)  # scale; shift is centred
    assert cka.linear_cka(torch.as_tensor(x_ND), x_ND) == pytest.approx(1.0, abs=1e-6)  # torch input


def test_cka_independent_noise_low(x_ND):
    noise = np.random.default_rng(1).standard_normal(x_ND.shape)
    assert cka.linear_cka(x_ND, noise) < 0.1  # expected ~ D / N = 0.016


def test_cka_matches_hsic_by_hand():
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC = tr(K H L H), H = I - 11^T / n; exact fractions
    give HSIC(K,L) = 253/16, HSIC(K,K) = 593/16, HSIC(L,L) = 457/16."""
    X = np.array([[1, 2], [0, 1], [3, 0], [2, 2]], float)
    Y = np.array([[0, 1], [1, 1], [2, 0], [1, 3]], float)
    H = np.eye(4) - np.ones((4, 4)) / 4
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H)

    by_gram = hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))
    assert by_gram == pytest.approx(253 / math.sqrt(593 * 457), abs=1e-12)
    assert cka.linear_cka(X, Y) == pytest.approx(253 / math.sqrt(593 * 457), abs=1e-9)


def test_cka_matrix_layers_rotated():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((500, w)) @ rng.standard_normal((w, w)) for w in (12, 20, 16)]
    ys = [x @ _rot(x.shape[1], 10 + i) for i, x in enumerate(xs)]
    M = cka.cka_matrix(xs, ys)
    assert M.shape == (3, 3)
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-6)
    assert (M[~np.eye(3, dtype=bool)] < 0.3).all()
    # rtol 1e-6: BLAS paths differ by CPU at ~1e-7
    np.testing.assert_allclose(M[0, 1], cka.linear_cka(xs[0], ys[1]), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(cka.best_layer_match(M), [0, 1, 2])
    np.testing.assert_allclose(cka.cka_matrix(xs[:1], ys[2:]), [[M[0, 2]]], rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------- SVCCA
def test_svcca_rotation_and_noise(x_ND):
    assert cka.svcca(x_ND, x_ND @ _rot(32, 3)) == pytest.approx(1.0, abs=1e-6)
    noise = np.random.default_rng(4).standard_normal((2000, 24))
    assert cka.svcca(x_ND, noise) < 0.2  # CCA overfit only: ~sqrt(k / N)


def test_svcca_keep_and_matrix(x_ND):
    low_rank = x_ND[:, :4] @ np.random.default_rng(5).standard_normal((4, 32))  # rank 4 in 32 dims
    assert cka.svcca_basis(low_rank).shape == (2000, 4)  # 99% of the variance never needs > rank
    assert cka.svcca_basis(low_rank, keep=10).shape == (2000, 4)  # nor does an int beyond the rank
    u_NK = cka.svcca_basis(x_ND, keep=7)
    assert u_NK.shape == (2000, 7)
    np.testing.assert_allclose(u_NK.T @ u_NK, np.eye(7), atol=1e-10)  # orthonormal
    top_NK = np.linalg.svd(x_ND - x_ND.mean(0), full_matrices=False)[0][:, :7]  # same span as LAPACK's U
    np.testing.assert_allclose(np.linalg.svd(u_NK.T @ top_NK, compute_uv=False), 1.0, atol=1e-8)
    assert cka.svcca(low_rank, x_ND[:, :4]) == pytest.approx(1.0, abs=1e-6)  # same span
    xs, ys = [x_ND, low_rank], [x_ND @ _rot(32, 6), x_ND[:, :4]]
    S = cka.svcca_matrix(xs, ys)
    np.testing.assert_allclose(S, [[cka.svcca(x, y) for y in ys] for x in xs], atol=1e-12)
    assert S[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_cka_bad_inputs_one_line(x_ND):
    for call in (
        lambda: cka.linear_cka(x_ND, x_ND[:-1]),
        lambda: cka.cka_matrix([x_ND], [x_ND[:10]]),
        lambda: cka.svcca(x_ND, x_ND[:5]),
        lambda: cka.svcca(x_ND, x_ND, keep=1.5),
        lambda: cka.linear_cka(x_ND, np.ones((2000, 3))),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- correlation
def test_activation_correlation_matches_corrcoef():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((50, 6)), rng.exponential(1.0, (50, 4)) * (rng.random((50, 4)) < 0.3)
    a[:, 2] = 0.0  # a latent that never fires
    b[:, 3] = 2.5  # a constant column
    with np.errstate(invalid="ignore", divide="ignore"):  # corrcoef gives NaN for the constant columns
        want = np.nan_to_num(np.corrcoef(a.T, b.T)[:6, 6:], nan=0.0)
    got = U.activation_correlation(a, torch.as_tensor(b), chunk=7)  # numpy and torch, 8 chunks
    assert got.shape == (6, 4) and not np.isnan(got).any()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got[2] == 0).all() and (got[:, 3] == 0).all()
    np.testing.assert_allclose(U.activation_correlation(a, b), got, atol=1e-6)  # one chunk
    np.testing.assert_array_equal(U.fire_counts(a), (a > 0).sum(0))


def test_correlation_bad_inputs_one_line():
    a, b = np.ones((10, 3)), np.ones((9, 3))
    for call in (
        lambda: U.activation_correlation(a, b),
        lambda: U.activation_correlation(a, b[:, 0]),
        lambda: U.compare_models(a, a, a, b),
        lambda: U.shuffled_alignment(a, b),
        lambda: U.shared_fraction_corr(np.zeros((3, 2)), fires_M=[0, 0, 0]),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert "\n" not in str(err.value)


def test_hungarian_not_greedy_and_min_count():
    corr = np.array([[0.9, 0.8], [0.85, 0.1], [0.95, 0.2]])
    m = U.shared_fraction_corr(corr, 0.5)  # 3 latents, 2 columns: best total is 0->1, 2->0; 1 unmatched
    np.testing.assert_array_equal(m.pairs, [[0, 1], [2, 0]])
    assert m.shared_fraction == pytest.approx(2 / 3)
    assert m.best_shared_fraction == 1.0 and m.median_best_corr == pytest.approx(0.9)
    np.testing.assert_allclose(U.best_correlation(corr), [0.9, 0.85, 0.95])
    few = U.shared_fraction_corr(corr, 0.5, fires_M=[20, 3, 2], min_count=10)  # only latent 0 counts
    np.testing.assert_array_equal(few.pairs, [[0, 0]])
    assert few.n_alive == 1 and few.median_best_corr == pytest.approx(0.9)
    assert U.top_pairs(m, 1) == [(2, 0, pytest.approx(0.95))]


# ----------------------------------------------------------------------------- planted permutation
def _planted(n=4000, m=64, d=32, seed=0):
    """Two "models" sharing 64 sparse features: A's residual = codes @ D_A, B's = the same codes with
    features permuted (B's feature j = A's feature perm[j]) @ D_B, in a randomly rotated basis."""
    rng = np.random.default_rng(seed)
    codes = (rng.random((n, m)) < 0.05) * rng.exponential(1.0, (n, m))
    dirs_a = rng.standard_normal((m, d))
    dirs_b = rng.standard_normal((m, d)) @ _rot(d, seed + 100)
    dirs_a, dirs_b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (dirs_a, dirs_b))
    perm = rng.permutation(m)
    acts_a, acts_b = codes @ dirs_a, codes[:, perm] @ dirs_b
    codes_b = codes[:, perm] + 0.05 * rng.standard_normal((n, m))
    return codes.astype(np.float32), codes_b.astype(np.float32), acts_a, acts_b, perm


@pytest.fixture(scope="module")
def planted():
    codes_a, codes_b, acts_a, acts_b, perm = _planted()
    return codes_a, codes_b, acts_a, acts_b, perm, U.compare_models(codes_a, codes_b, acts_a, acts_b, seed=3)


def test_planted_permutation_recovered(planted):
    *_, perm, res = planted
    m = res["models"]
    i, j = m.pairs.T
    assert (perm[j] == i).mean() >= 0.95  # B's column j is A's feature perm[j]
    assert m.shared_fraction >= 0.95 and m.median_best_corr > 0.9
    assert m.n_alive == 64


def test_planted_baselines_below(planted):
    *_, res = planted
    models = res["models"]
    assert res["shuffled_alignment"].shared_fraction < 0.05
    assert res["shuffled_alignment"].median_best_corr < 0.15
    rand = res["random_directions"]
    assert rand.shared_fraction < models.shared_fraction - 0.5
    assert rand.median_best_corr < models.median_best_corr - 0.3
    own = res["own_neurons"]
    assert own.best_shared_fraction < models.best_shared_fraction - 0.5
    assert own.median_best_corr < models.median_best_corr - 0.3
    assert len(own.pair_corr) == 32  # 32 neurons: one-to-one is capped at 32 of 64 latents
    table = U.match_table(res)
    assert list(table.index) == ["models", "shuffled_alignment", "own_neurons", "random_directions"]
    assert table.loc["models", "shared@0.5"] == models.shared_fraction


def test_compare_models_equals_standalone_baselines(planted):
    codes_a, codes_b, acts_a, acts_b, _, res = planted
    fires = U.fire_counts(codes_a)
    for key, corr in (
        ("shuffled_alignment", U.shuffled_alignment(codes_a, codes_b, seed=3)),
        ("own_neurons", U.own_neurons(codes_a, acts_a)),
        ("random_directions", U.random_directions(codes_a, acts_b, k=64, seed=3)),
    ):
        alone = U.shared_fraction_corr(corr, U.SHARED_CORR, fires)
        np.testing.assert_allclose(alone.best_corr, res[key].best_corr, atol=1e-5)
        assert alone.shared_fraction == res[key].shared_fraction
    top = U.top_pairs(res["models"], 5)
    assert len(top) == 5 and all(r1 >= r2 for (_, _, r1), (_, _, r2) in zip(top, top[1:]))
