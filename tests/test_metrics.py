"""Reconstruction metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from helpers.sae.metrics import (
    ReconstructionStats,
    cosine,
    dead_fraction,
    dense_fraction,
    explained_variance,
    feature_density,
    firing_counts,
    fvu,
    l0,
    relative_reconstruction_bias,
)

X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])  # column means (3, 2)
X_HAT = torch.tensor([[1.0, 1.0], [3.0, 4.0], [4.0, 0.0]])


def test_fvu__divides_by_variance_about_the_mean_not_about_zero():
    # SSE = 1 + 0 + 1 = 2; sum ||x - mean||^2 = (4 + 0) + (0 + 4) + (4 + 4) = 16 -> 0.125
    assert float(fvu(X, X_HAT)) == pytest.approx(2 / 16)
    assert float(fvu(X, X_HAT)) != pytest.approx(2 / float((X**2).sum())), (
        "variance about zero is the peers' bug"
    )
    assert float(explained_variance(X, X_HAT)) == pytest.approx(1 - 2 / 16)


def test_fvu__accepts_numpy_and_perfect_reconstruction_is_zero():
    assert float(fvu(X.numpy(), X.numpy())) == 0.0
    assert float(fvu(X, X.mean(0).expand(3, 2))) == pytest.approx(1.0), "predicting the mean must give FVU 1"


def test_l0__mean_nonzeros_per_row():
    codes = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert float(l0(codes)) == pytest.approx((2 + 0 + 1 + 3) / 4)
    assert firing_counts(codes).tolist() == [2, 2, 2]


def test_cosine__mean_of_per_row_cosines():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    x_hat = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # cos 0 and 1
    assert float(cosine(x, x_hat)) == pytest.approx(0.5)


def test_relative_reconstruction_bias__shrunk_reconstruction_gives_its_factor():
    # x_hat = 0.5 x: E||x_hat||^2 / E[x_hat . x] = 0.25 / 0.5 = 0.5
    assert float(relative_reconstruction_bias(X, 0.5 * X)) == pytest.approx(0.5)
    # by hand on X, X_HAT: sum||x_hat||^2 = 2 + 25 + 16 = 43; sum x_hat . x = 3 + 25 + 20 = 48
    assert float(relative_reconstruction_bias(X, X_HAT)) == pytest.approx(43 / 48)


def test_dead_and_dense_fraction__from_counts():
    counts = torch.tensor([0, 0, 5, 50, 1])
    assert dead_fraction(counts) == pytest.approx(2 / 5)
    assert dense_fraction(counts, n_tokens=100, density=0.1) == pytest.approx(1 / 5)


def test_feature_density__codes_and_counts_agree():
    codes = torch.zeros(1000, 3)
    codes[:10, 0] = 1  # density 1e-2
    codes[:100, 1] = 1  # 1e-1; latent 2 dead
    d1, h1, e1 = feature_density(codes, bins=8, log10_range=(-8, 0))
    d2, h2, _ = feature_density(np.array([10, 100, 0]), n_tokens=1000, bins=8, log10_range=(-8, 0))
    assert np.allclose(d1, [0.01, 0.1, 0.0]) and np.array_equal(h1, h2) and h1.sum() == 3
    assert h1[0] == 1 and h1[np.searchsorted(e1, -2, side="right") - 1] == 1, (
        "dead latent goes in the lowest bin"
    )
    with pytest.raises(ValueError, match="needs n_tokens"):
        feature_density(np.array([1, 2]))


def test_reconstruction_stats__streamed_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g) + 3
    x_hat = x + 0.3 * torch.randn(300, 5, generator=g)
    codes = (torch.rand(300, 7, generator=g) > 0.8).float()
    st = ReconstructionStats()
    for i in range(0, 300, 70):
        st.update(x[i : i + 70], x_hat[i : i + 70], codes[i : i + 70])
    r = st.result()
    assert r["fvu"] == pytest.approx(float(fvu(x, x_hat)), rel=1e-9)
    assert r["cosine"] == pytest.approx(float(cosine(x, x_hat)), rel=1e-6)
    assert r["l0"] == pytest.approx(float(l0(codes)))
    assert r["relative_reconstruction_bias"] == pytest.approx(float(relative_reconstruction_bias(x, x_hat)))


def test_token_ce__hand_computed():
    from helpers.sae.metrics import token_ce

    # vocab 2, logits [0, log 3] -> p = [1/4, 3/4]; next token 1 -> -log 3/4, token 0 -> -log 1/4
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, 5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    got = token_ce(logits, ids)
    assert got.shape == (1, 2), "one loss per predicting position (T-1)"
    torch.testing.assert_close(got, torch.tensor([[-math.log(0.75), -math.log(0.25)]]))


def test_token_kl__zero_for_equal_logits_and_hand_computed_otherwise():
    from helpers.sae.metrics import token_kl

    ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # p = [1/2, 1/2]
    q = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])  # q = [1/4, 3/4]
    torch.testing.assert_close(token_kl(ref, ref), torch.zeros(1, 1))
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    torch.testing.assert_close(token_kl(ref, q), torch.tensor([[want]]))


def test_ce_loss_recovered__endpoints_and_degenerate_case():
    from helpers.sae.metrics import ce_loss_recovered

    assert ce_loss_recovered(3.0, 3.0, 7.0) == 1.0
    assert ce_loss_recovered(3.0, 7.0, 7.0) == 0.0
    assert ce_loss_recovered(3.0, 4.0, 7.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="undefined"):
        ce_loss_recovered(3.0, 4.0, 3.0)
