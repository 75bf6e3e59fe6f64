"""Tests for helpers.analysis.positions: streaming sums vs a dense numpy reference, histogram quantiles vs
np.quantile, planted position features recovered, hand-computed eta^2 and smoothing."""

import numpy as np
import pytest
import torch

from helpers.analysis import position_features as PF
from helpers.analysis import positions as P

N_SEQ, T, D = 12, 16, 24


def _codes(n_seq=N_SEQ, t=T, d=D, density=0.2, seed=0):
    """Sparse non-negative codes [n_seq, t, d], position 0 with a huge 'sink' scale."""
    rng = np.random.default_rng(seed)
    v = rng.lognormal(0.0, 1.0, (n_seq, t, d)) * (rng.random((n_seq, t, d)) < density)
    v[:, 0] *= 50.0
    v[:, :, 3] = 0.0  # a dead latent
    return v.astype(np.float32)


def _dense_reference(c):
    """Direct dense computation of every statistic the accumulator returns (float64)."""
    c = c.astype(np.float64)
    ref = {}
    pm, ps, pd_ = [], [], []
    for p in range(c.shape[1]):
        nz = c[:, p][c[:, p] != 0]
        pm.append(nz.mean()), ps.append(nz.std()), pd_.append(nz.size / c[:, p].size)
    ref["pos"] = np.array([pm, ps, pd_])
    for name, sl in (("with", slice(0, None)), ("without", slice(1, None))):
        x = c[:, sl].reshape(-1, c.shape[2])
        cnt = (x != 0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = x.sum(0) / cnt
            std = np.sqrt((x**2).sum(0) / cnt - mean**2)
        ref[name] = np.array([cnt, mean, std, cnt / x.shape[0]])
    eta = []
    for j in range(c.shape[2]):
        a = c[:, :, j]
        tot = ((a - a.mean()) ** 2).sum()
        between = (a.shape[0] * (a.mean(0) - a.mean()) ** 2).sum()
        eta.append(between / tot if tot > 0 else np.nan)
    ref["eta2"] = np.array(eta)
    return ref


def _check_against_reference(res, ref):
    got = np.array([res.pos_mean, res.pos_std, res.pos_density])
    np.testing.assert_allclose(
        got,
        ref["pos"],
        rtol=1e-9,
        err_msg="per-position nonzero stats wrong: zeros counted, or positions mis-assigned across chunks",
    )
    for name, incl in (("with", True), ("without", False)):
        fs = res.feature_stats(include_first=incl)
        got = fs[["nnz", "mean", "std", "density"]].to_numpy().T
        np.testing.assert_allclose(
            got, ref[name], rtol=1e-9, equal_nan=True, err_msg=f"per-feature stats {name} position 0 wrong"
        )
    np.testing.assert_allclose(
        PF.position_feature_scores(res)["eta2"],
        ref["eta2"],
        rtol=1e-9,
        atol=1e-12,
        equal_nan=True,
        err_msg="eta^2 differs from dense",
    )


def _feed(acc, c, how):
    n_seq, t, d = c.shape
    flat, pos = c.reshape(-1, d), np.tile(np.arange(t), n_seq)
    if how == "by_sequence_chunks":
        for i in range(0, n_seq, 5):
            acc.update(torch.from_numpy(c[i : i + 5]))
    elif how == "flat_chunks_split_sequences":
        for i in range(0, len(flat), 7):
            acc.update(flat[i : i + 7], positions=torch.from_numpy(pos[i : i + 7]))
    elif how == "shuffled_tokens":
        perm = np.random.permutation(len(flat))
        acc.update(flat[perm], positions=pos[perm])
    elif how == "sparse_topk":
        k = int((c != 0).sum(-1).max())
        vals, idx = torch.from_numpy(c).topk(k, dim=-1)  # includes zeros: skipped
        for i in range(0, n_seq, 4):
            acc.update_sparse(vals[i : i + 4], idx[i : i + 4])
    return acc.result()


@pytest.mark.parametrize(
    "how", ["by_sequence_chunks", "flat_chunks_split_sequences", "shuffled_tokens", "sparse_topk"]
)
def test_streaming_stats__equal_dense_numpy_for_any_chunking(how):
    c = _codes()
    res = _feed(P.PositionStats(T, D, n_bins=64), c, how)
    assert res.tokens.tolist() == [N_SEQ] * T
    _check_against_reference(res, _dense_reference(c))


def test_streaming_stats__unused_positions_are_nan_not_zero():
    acc = P.PositionStats(T + 4, D)
    acc.update(_codes())
    res = acc.result()
    assert np.isnan(res.pos_mean[T:]).all() and np.isfinite(res.pos_mean[:T]).all()
    scores = PF.position_feature_scores(res)
    assert np.isnan(scores.loc[3, "eta2"]), "a latent that never fires must have eta2 NaN, not 0/1"


def test_result__save_load_roundtrip(tmp_path):
    acc = P.PositionStats(T, D, n_bins=32)
    acc.update(_codes())
    res = acc.result()
    res.save(tmp_path / "r.npz")
    back = P.PositionStatsResult.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.hist_rest, res.hist_rest)
    np.testing.assert_array_equal(back.pl_sum, res.pl_sum)
    acc.update(_codes())
    np.testing.assert_array_equal(res.pl_sum, back.pl_sum, err_msg="result() must be a snapshot")
    assert acc.result().tokens.sum() == 2 * res.tokens.sum()


def test_negative_codes__counted_in_sums_and_underflow_bin():
    acc = P.PositionStats(2, 2, n_bins=8)
    acc.update(np.array([[[-1.0, 2.0], [3.0, 0.0]]]))
    res = acc.result()
    assert res.n_negative == 1 and res.hist_first[0, 0] == 1
    assert res.feature_stats()["mean"].tolist() == [1.0, 2.0]


def test_bad_inputs__raise_one_line_value_errors():
    acc = P.PositionStats(T, D)
    with pytest.raises(ValueError, match="n_positions"):
        acc.update(np.ones((2, T + 1, D)))
    with pytest.raises(ValueError, match="d_sae"):
        acc.update(np.ones((2, T, D + 1)))
    with pytest.raises(ValueError, match="positions="):
        acc.update(np.ones((5, D)))


def test_histogram_quantiles__within_one_bin_ratio_of_np_quantile():
    rng = np.random.default_rng(1)
    d, n = 6, 4000
    scale = np.array([1e-3, 1e-2, 0.3, 1.0, 20.0, 300.0])
    x = rng.lognormal(0, 1.5, (n, d)) * scale  # spans ~1e-5 .. 1e4
    x[:, 2] = rng.pareto(1.2, n) + 0.05  # heavy tail
    acc = P.PositionStats(4, d, n_bins=256)
    acc.update(x, positions=rng.integers(0, 4, n))
    res = acc.result()
    qs = np.array(P.DECILES)
    est = P.feature_quantiles(res, qs, include_first=True)
    true = np.quantile(x, qs, axis=0).T
    lo, hi = res.bin_edges[0], res.bin_edges[-1]
    inside = (true > lo * 1.2) & (true < hi / 1.2)
    r = (hi / lo) ** (1 / 256)
    err = np.abs(np.log(est / true))[inside]
    assert err.max() <= np.log(r) * 1.01, (
        f"histogram quantile off by {np.exp(err.max()):.4f}x "
        f"> bin ratio {r:.4f}: wrong bin edges or interpolation"
    )
    assert np.all(est[~inside] > 0)
    med = P.feature_median(res, include_first=True)
    np.testing.assert_allclose(np.log(med), np.log(np.median(x, 0)), atol=np.log(r) * 1.01)


def test_histogram_quantiles__exclude_first_position():
    c = np.zeros((200, 3, 2), np.float32)
    c[:, 0, 0] = 100.0  # sink value at position 0
    c[:, 1:, 0] = np.random.default_rng(0).uniform(1, 2, (200, 2))
    acc = P.PositionStats(3, 2)
    acc.update(c)
    res = acc.result()
    with_first, without = (P.feature_quantiles(res, (0.9,), inc)[0, 0] for inc in (True, False))
    assert with_first == pytest.approx(100, rel=0.08) and 1.8 < without < 2.1
    assert np.isnan(P.feature_quantiles(res)[1]).all(), "a never-firing latent must give NaN"


def test_eta2__hand_computed_tiny_example():
    # position 0: [2, 4], position 1: [0, 2]; N = 4, S = 8, Q = 24
    # SS_tot = 24 - 64/4 = 8, SS_between = 36/2 + 4/2 - 16 = 4 -> eta2 = 0.5
    # eta2_adj = 1 - (4 / (4 - 2)) / (8 / 3) = 0.25; fire_u: F = [1,1 | 0,1]
    c = np.array([[[2.0], [0.0]], [[4.0], [2.0]]])
    acc = P.PositionStats(2, 1)
    acc.update(c)
    s = PF.position_feature_scores(acc.result()).iloc[0]
    assert s.eta2 == pytest.approx(0.5) and s.eta2_adj == pytest.approx(0.25)
    h = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))  # noqa: E731
    assert s.fire_u == pytest.approx(1 - 0.5 * h(0.5) / h(0.75))
    assert s.argmax_pos == 0 and s.peak_ratio == pytest.approx(3.0 / 2.0)
    assert s.first_frac == pytest.approx(2 / 3)


def _planted(n_seq=96, t=32, d=12, seed=0):
    rng = np.random.default_rng(seed)
    c = np.zeros((n_seq, t, d))
    p = np.arange(t)
    c[:, 0, 0] = 50 + rng.normal(0, 2, n_seq)  # sink latent
    c[:, :, 1] = 0.2 * p + rng.normal(0, 0.1, (n_seq, t))  # ramp
    c[:, :, 2] = 2 + 1.5 * np.sin(2 * np.pi * p / 8) + rng.normal(0, 0.2, (n_seq, t))  # periodic
    c[:, :, 3] = rng.exponential(1.0, (n_seq, t)) * (rng.random((n_seq, t)) < 0.3)  # iid
    c[:, :, 4] = (rng.pareto(1.1, (n_seq, t)) * 10) * (rng.random((n_seq, t)) < 0.05)  # heavy
    c[:, :, 5] = rng.lognormal(0, 2, (n_seq, t))  # dense iid
    c[0, 5, 6] = 1e4  # one huge outlier
    c[:, :, 7] = rng.exponential(1.0, (n_seq, t)) * (p >= 1)  # iid but never at p=0
    # 8: dead; 9-11: iid sparse
    c[:, :, 9:] = rng.exponential(2.0, (n_seq, t, 3)) * (rng.random((n_seq, t, 3)) < 0.1)
    return np.maximum(c, 0).astype(np.float32)


def test_position_features__planted_found_and_iid_not():
    acc = P.PositionStats(32, 12)
    acc.update(_planted())
    res = acc.result()
    table = PF.position_features(res)
    kinds = dict(zip(table.latent, table.kind))
    assert kinds.get(0) == "sink", f"sink latent 0 not flagged as sink: {kinds}"
    assert kinds.get(1) == "position" and kinds.get(2) == "position", (
        f"ramp (1) / periodic (2) latents missed: {kinds}"
    )
    assert set(kinds) == {0, 1, 2}, f"position-independent latents flagged: {kinds}"
    s = PF.position_feature_scores(res).set_index("latent")
    assert s.loc[[0, 1, 2], "eta2"].min() > 0.8
    assert s.loc[[3, 4, 5, 6, 7, 9, 10, 11], "eta2_adj"].max() < 0.1, (
        "iid / heavy-tailed latents should have ~0 chance-corrected eta2"
    )
    assert np.isnan(s.loc[8, ["eta2", "eta2_adj", "fire_u"]].astype(float)).all()
    assert s.loc[8, "argmax_pos"] == -1, "a dead latent has no argmax position"
    assert s.loc[0, "argmax_pos"] == 0 and s.loc[1, "argmax_pos"] == 31
    assert s.loc[0, "fire_u"] > 0.99 and s.loc[3, "fire_u"] < 0.05
    prof = PF.position_profile(res, 1)
    np.testing.assert_allclose(prof, 0.2 * np.arange(32), atol=0.05)


def test_position_features__skip_first_ignores_latents_driven_by_position_0_only():
    rng = np.random.default_rng(0)
    c = np.zeros((64, 32, 3))
    c[:, 0, 0] = 100.0  # BOS value, iid elsewhere
    c[:, 1:, 0] = rng.exponential(1.0, (64, 31)) * (rng.random((64, 31)) < 0.3)
    c[:, 0, 1] = 50.0  # pure sink
    c[:, :, 2] = 0.1 * np.arange(32)  # ramp
    acc = P.PositionStats(32, 3)
    acc.update(c)
    res = acc.result()
    with_first = dict(zip(*PF.position_features(res)[["latent", "kind"]].to_numpy().T))
    without = dict(zip(*PF.position_features(res, skip_first=True)[["latent", "kind"]].to_numpy().T))
    assert with_first == {0: "position", 1: "sink", 2: "position"}, with_first
    assert without == {1: "sink", 2: "position"}, f"BOS-driven latent 0 kept: {without}"
    s = PF.position_feature_scores(res, skip_first=True)
    assert s.loc[2, "eta2"] == pytest.approx(1.0) and s.loc[0, "eta2"] < 0.1
    assert s.loc[1, "density"] == pytest.approx(1 / 32), "density must count all positions"


def test_layer_tables__first_vs_rest_and_feature_counts():
    accs = {}
    for layer, scale in ((0, 1.0), (5, 10.0)):
        acc = P.PositionStats(32, 12)
        acc.update(_planted() * np.float32(scale))
        accs[layer] = acc.result()
    fr = P.layer_first_vs_rest(accs)
    c = _planted().astype(np.float64)
    first = c[:, 0][c[:, 0] != 0].mean()
    assert fr.loc[0, "first_mean"] == pytest.approx(first)
    assert fr.loc[1, "first_mean"] == pytest.approx(10 * first)
    assert fr.loc[0, "rest_mean"] == pytest.approx(c[:, 1:][c[:, 1:] != 0].mean())
    counts = PF.position_features_per_layer(accs)
    assert counts["n_total"].tolist() == [3, 3] and counts["n_sink"].tolist() == [1, 1]


def test_smooth__hand_computed_edges():
    y = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    # window 3 centred: [mean(1,2), mean(1,2,3), mean(2,3,4), mean(3,4,10), mean(4,10)]
    np.testing.assert_allclose(P.smooth(y, 3), [1.5, 2.0, 3.0, 17 / 3, 7.0])
    # window 2 covers i .. i+1 (the last point alone)
    np.testing.assert_allclose(P.smooth(y, 2), [1.5, 2.5, 3.5, 7.0, 10.0])
    np.testing.assert_allclose(P.smooth(y, 1), y)
    np.testing.assert_allclose(P.smooth([1.0, np.nan, 3.0], 3), [1.0, 2.0, 3.0])


def test_counts_below_and_kde():
    assert P.counts_below([0.5, 1.0, np.nan, 3.0], [0.1, 1.0, 1.01, 5]).tolist() == [0, 1, 2, 3]
    acc = P.PositionStats(T, D)
    acc.update(_codes())
    x, dens = P.feature_mean_kde(acc.result())
    lx = np.log10(x)
    assert np.trapezoid(dens, lx) == pytest.approx(1.0, abs=0.02), "KDE must integrate to 1"


def test_position_mse__matches_direct_mean_per_position():
    rng = np.random.default_rng(0)
    x, xh = rng.normal(size=(6, 5, 4)), rng.normal(size=(6, 5, 4))
    m = P.PositionMSE(5)
    m.update(x[:4], xh[:4])
    flat_x, flat_h = x[4:].reshape(-1, 4), xh[4:].reshape(-1, 4)
    m.update(flat_x, flat_h, positions=np.tile(np.arange(5), 2))
    r = m.result()
    np.testing.assert_allclose(r.mse, ((x - xh) ** 2).mean(-1).mean(0))
    np.testing.assert_allclose(r.rel_mse, ((x - xh) ** 2).sum((0, 2)) / (x**2).sum((0, 2)))
    assert r.tokens.tolist() == [6] * 5


def test_plots__every_figure_builds_with_one_panel_per_layer():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.report.plots import position_profiles as PP

    res = {}
    for layer in (0, 3, 7):
        acc = P.PositionStats(32, 12)
        acc.update(_planted(n_seq=16, seed=layer))
        res[layer] = acc.result()
    mse = P.PositionMSE(32)
    mse.update(np.ones((2, 32, 4)), np.zeros((2, 32, 4)))
    figs = [
        PP.plot_position_means(res),
        PP.plot_position_means(res, skip_first=True),
        PP.plot_position_means_overlay(res),
        PP.plot_position_mean_std(res),
        PP.plot_position_mean_density(res),
        PP.plot_feature_deciles(res),
        PP.plot_feature_mean_density(res),
        PP.plot_feature_mean_kde(res),
        PP.plot_feature_mean_std(res),
        PP.plot_counts_below(res, np.linspace(0, 5, 20)),
        PP.plot_counts_below(res, 1.0, stat="median"),
        PP.plot_position_mse({0: mse.result(), 1: mse.result()}),
        PP.plot_position_curves({"clean": np.ones(32), "spliced": np.ones(32)}, "CE"),
        PP.plot_position_feature_counts(PF.position_features_per_layer(res)),
        PP.plot_position_profiles(res),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    panels = [a for a in figs[0].axes if a.get_visible() and a.get_label() != "<colorbar>"]
    assert len(panels) == 3, "one panel per layer expected"
    assert len(figs[-1].axes) == 3 * 4
    plt.close("all")


def test_position_pass__equals_manual_chunked_accumulation():
    from helpers.analysis.positions import PositionMSE, PositionStats, position_pass

    class Relu:  # a tiny SAE-like encoder: codes = relu(x W), x_hat = codes W^T
        def __init__(self, W):
            self.W_dec = W.T

        def encode(self, x):
            return torch.relu(x @ self.W_dec.T)

        def decode(self, c):
            return c @ self.W_dec

    torch.manual_seed(0)
    sae = Relu(torch.randn(6, 10))
    chunks = [(None, torch.randn(5, 7, 6)), (None, torch.randn(3, 7, 6))]
    chunks[0][1][1, 3] *= 100  # a massive token at position 3 of sequence 1
    stats, mse, typical = position_pass(chunks, sae, 7, chunk_seqs=2, progress=False)
    assert typical is None
    ref, ref_mse = PositionStats(7, 10), PositionMSE(7)
    x = torch.cat([a for _, a in chunks])
    ref.update(sae.encode(x))
    ref_mse.update(x, sae.decode(sae.encode(x)))
    np.testing.assert_allclose(stats.pl_sum, ref.result().pl_sum, rtol=1e-6)
    np.testing.assert_array_equal(stats.pl_nnz, ref.result().pl_nnz)
    np.testing.assert_allclose(mse.mse, ref_mse.result().mse, rtol=1e-6)
    # max_norm: the typical statistics are those of every token but the massive one
    cut = float(x.norm(dim=-1).flatten().sort().values[-2]) * 1.01
    _, _, typical = position_pass(chunks, sae, 7, chunk_seqs=2, progress=False, max_norm=cut)
    keep = torch.ones(8, 7, dtype=torch.bool)
    keep[1, 3] = False
    ref_t = PositionStats(7, 10)
    ref_t.update(sae.encode(x)[keep], torch.arange(7).expand(8, 7)[keep])
    np.testing.assert_allclose(typical.pl_sum, ref_t.result().pl_sum, rtol=1e-6)
    assert typical.tokens[3] == 7 and stats.tokens[3] == 8, "only the massive token is left out"
    assert typical.pl_sum[3].sum() < stats.pl_sum[3].sum() / 5, "it carried most of position 3's mass"


def test_position_pass__a_topk_sae_sparse_path_equals_its_dense_codes():
    from helpers.analysis.positions import position_pass
    from helpers.sae import SAEConfig, make_sae

    sae = make_sae(SAEConfig("topk", 16, 64, k=5), seed=3)
    with torch.no_grad():
        sae.b_enc.normal_(-1.8, 0.5)  # some of the k largest pre-activations negative: ReLU zeros them
    torch.manual_seed(1)
    chunks = [(None, torch.randn(5, 9, 16)), (None, torch.randn(3, 9, 16))]
    chunks[1][1][0, 4] *= 50

    class Dense:  # the same SAE without encode_sparse: the dense path
        W_dec, encode, decode = sae.W_dec, sae.encode, sae.decode

    v, _ = sae.encode_sparse(torch.cat([a for _, a in chunks]))
    assert 0 < (v == 0).float().mean() < 0.5, "the planted biases should zero some top-k values"
    cut = float(torch.cat([a for _, a in chunks]).norm(dim=-1).max()) * 0.9
    got = position_pass(chunks, sae, 9, chunk_seqs=2, progress=False, max_norm=cut)
    want = position_pass(chunks, Dense(), 9, chunk_seqs=2, progress=False, max_norm=cut)
    for a, b in ((got.stats, want.stats), (got.typical, want.typical)):
        np.testing.assert_array_equal(a.pl_nnz, b.pl_nnz)
        np.testing.assert_array_equal(a.hist_rest, b.hist_rest)
        np.testing.assert_allclose(a.pl_sum, b.pl_sum, rtol=1e-6)
    assert got.typical.tokens.sum() == want.typical.tokens.sum() == 71
    np.testing.assert_allclose(got.mse.mse, want.mse.mse, rtol=1e-5)
