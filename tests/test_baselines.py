"""PCA / ICA / random / neuron dictionaries and the interpretability proxy (helpers.analysis.baselines)."""

import numpy as np
import pytest
import torch

from helpers.analysis import baselines as B
from helpers.sae import make_sae
from helpers.sae.base import SAEConfig


def _data(n=400, d=6, seed=0):
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, d)) * np.array([5.0, 3, 2, 1, 0.5, 0.1])[:d] + 2.0).astype(np.float32)


def test_pca_reconstruction_equals_a_hand_computed_svd():
    x = _data()
    mu = x.mean(0)
    U, S, Vt = np.linalg.svd(x - mu, full_matrices=False)
    for n in (2, 4):
        hand = mu + (U[:, :n] * S[:n]) @ Vt[:n]  # the rank-n truncated SVD
        got = B.pca(x, n).reconstruct(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, hand, rtol=0, atol=1e-4)
    # keep-top-k per token on the full basis: the k largest |coefficients| of each row
    coef = (x - mu) @ Vt.T
    keep = np.argsort(-np.abs(coef), axis=1)[:, :2]
    sparse = np.zeros_like(coef)
    np.put_along_axis(sparse, keep, np.take_along_axis(coef, keep, 1), 1)
    np.testing.assert_allclose(
        B.pca(x).reconstruct(torch.from_numpy(x), k=2).numpy(), mu + sparse @ Vt, rtol=0, atol=1e-4
    )
    fvu = B.reconstruction(B.pca(x), x, k=None)["fvu"]
    assert fvu == pytest.approx(0.0, abs=1e-9)


def test_ica_unmixes_two_planted_sources():
    g = np.random.default_rng(0)
    s = np.stack([g.uniform(-1, 1, 4000), g.laplace(size=4000)], 1)  # non-Gaussian sources
    A = np.array([[1.0, 0.4], [0.3, 1.0], [0.2, -0.5]])  # mixing into 3 dims
    x = (s @ A.T).astype(np.float32)
    ica = B.ica(x, n=2)
    true = A.T / np.linalg.norm(A.T, axis=1, keepdims=True)  # [2, 3] planted directions
    found = torch.nn.functional.normalize(ica.decoder, dim=1).numpy()  # [2, 3] ICA's mixing columns
    cos = np.abs(true @ found.T)
    assert cos.max(1).min() > 0.99, cos
    assert ica.info["converged"]
    assert B.reconstruction(ica, x, k=None)["fvu"] < 1e-6


def test_random_basis_is_a_rotation_and_neurons_the_identity():
    x = _data()
    R = B.random_basis(x, seed=3).decoder
    torch.testing.assert_close(R @ R.T, torch.eye(6), rtol=0, atol=1e-5)
    assert B.reconstruction(B.random_basis(x), x, k=None)["fvu"] < 1e-9
    n = B.neuron_basis(x)
    out = n.reconstruct(torch.from_numpy(x), k=1).numpy()
    dev = x - x.mean(0)
    j = np.abs(dev).argmax(1)  # one coordinate per token: its largest deviation from the mean
    want = np.tile(x.mean(0), (len(x), 1))
    want[np.arange(len(x)), j] = x[np.arange(len(x)), j]
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)


def test_mmcs_abs_ignores_sign_and_finds_planted_rows():
    A = torch.eye(4)[:2]
    Bm = torch.cat([-torch.eye(4)[:2], torch.ones(1, 4)])
    assert B.mmcs_abs(A, Bm) == pytest.approx(1.0)
    assert B.mmcs_abs(torch.ones(1, 4), torch.eye(4)) == pytest.approx(0.5)


def test_the_proxy_ranks_a_planted_single_token_direction_above_a_random_one():
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 16
    token_ids = torch.randint(0, 50, (n,), generator=g)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    x = torch.randn(n, d, generator=g) + 4.0 * u * (token_ids == 7)[:, None]  # token 7 writes u
    rnd = torch.nn.functional.normalize(torch.randn(3, d, generator=g), dim=1)
    dirs = torch.cat([u[None], rnd])
    con = B.token_concentration(x @ dirs.T, token_ids, n_top=20)
    assert con.share[0] == 1.0 and con.top_token[0] == 7
    assert con.share[1:].max() < 0.5, con.share
    signed = B.token_concentration(x @ dirs.T, token_ids, n_top=20, signed=True)
    assert signed.n_total == 8 and signed.share[0] == 1.0
    with pytest.raises(ValueError, match="one id per token"):
        B.token_concentration(x @ dirs.T, token_ids[:10])


def test_sae_dictionary_shares_the_decoder_and_directions_firing_rarely_are_left_out():
    sae = make_sae(SAEConfig("topk", 16, 32, k=2), seed=0)
    d = B.sae_dictionary(sae)
    assert not d.signed and torch.equal(d.decoder, sae.W_dec.detach())
    codes = torch.zeros(30, 3)
    codes[:25, 0] = torch.arange(25.0) + 1  # fires 25 times
    codes[:5, 1] = 1.0  # fires 5 times: fewer than n_top
    con = B.token_concentration(codes, torch.arange(30), n_top=20)
    assert con.n_scored == 1 and con.n_total == 3


def test_compare_puts_the_sae_first_and_scores_every_dictionary():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    ids = torch.randint(0, 20, (600,), generator=g)
    sae = make_sae(SAEConfig("topk", 16, 32, k=4), seed=0)
    table, conc = B.compare(sae, [B.pca(x), B.neuron_basis(x)], x, ids, k=4)
    assert list(table.index) == ["SAE", "PCA", "neurons"] and list(conc) == ["SAE", "PCA", "neurons"]
    assert table.loc["PCA", "directions"] == 16 and table.loc["SAE", "mmcs_to_sae"] == 1.0
    assert table.loc["PCA", "fvu"] == pytest.approx(B.reconstruction(B.pca(x), x, 4)["fvu"])
    assert table.loc["neurons", "ends_scored"] == "32/32"


def test_concentration_per_direction_marks_the_unscored():
    codes = torch.zeros(30, 2)
    codes[:25, 0] = torch.arange(25.0) + 1
    share, tok = B.token_concentration(codes, torch.zeros(30, dtype=torch.long), n_top=20).per_direction()
    assert share[0] == 1.0 and tok[0] == 0 and np.isnan(share[1]) and tok[1] == -1


def test_fit_all__the_four_baselines_in_table_order_and_ica_keeps_n_components():
    x = _data()
    got = B.fit_all(x, n_ica=3)
    assert [d.name for d in got] == ["PCA", "ICA", "random", "neurons"]
    assert [tuple(d.decoder.shape) for d in got] == [(6, 6), (3, 6), (6, 6), (6, 6)]
    torch.testing.assert_close(got[0].decoder, B.pca(x).decoder)
    assert set(got[1].info) == {"converged", "n_iter"}


def test_variance_share__one_minus_fvu_in_the_top_principal_subspace():
    x = np.array([[3.0, 0, 0], [-3.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])  # variance 18 on e0, 2 on e1
    # top-1 subspace is e0: it misses the e1 parts, 2 of the total 20 -> FVU 0.1
    assert B.variance_share(x, x, 1) == pytest.approx(0.9)
    assert B.variance_share(x, x, 2) == pytest.approx(1.0)
    held = np.array([[0, 2.0, 0], [0, -2.0, 0]])  # all on e1: nothing inside e0
    assert B.variance_share(x, held, 1) == pytest.approx(0.0, abs=1e-12)
