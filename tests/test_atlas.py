import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from helpers.analysis.atlas import (
    align_sequence,
    embed_combined,
    exact_knn,
    pca_embed,
    procrustes_align,
    procrustes_fit,
    stack_groups,
    umap_embed,
)
from helpers.report.plots.umap_views import animate_layers, plot_combined_by_layer, plot_layer_grid, plot_pair


def rotation(theta, reflect=False):
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return r @ np.diag([1.0, -1.0]) if reflect else r


@pytest.mark.parametrize("reflect", [False, True])
def test_procrustes_fit__recovers_planted_rotation_translation_scale(reflect):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 2))
    R, s, t = rotation(0.7, reflect), 2.5, np.array([3.0, -1.0])
    y_ref = s * y @ R + t
    fit = procrustes_fit(y_ref, y)
    np.testing.assert_allclose(fit.rotation, R, atol=1e-10, err_msg="rotation not recovered (transposed R?)")
    assert fit.scale == pytest.approx(s), "scale should be tr(S D) / ||y - mean||^2"
    np.testing.assert_allclose(fit.translation, t, atol=1e-10)
    np.testing.assert_allclose(fit.apply(y), y_ref, atol=1e-5)


def test_procrustes_fit__without_reflection_returns_proper_rotation():
    y = np.random.default_rng(1).standard_normal((30, 2))
    fit = procrustes_fit(y @ rotation(0.3, reflect=True), y, allow_reflection=False)
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0), "allow_reflection=False must give det(R) = +1"


def test_procrustes_align__fits_on_matched_rows_and_moves_all_rows():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((40, 2))
    R, s, t = rotation(-1.2), 0.5, np.array([-2.0, 4.0])
    y_ref = np.concatenate([rng.standard_normal((10, 2)), s * y[:25] @ R + t])  # other rows differ
    rows_ref, rows = np.arange(10, 35), np.arange(25)
    out = procrustes_align(y_ref, y, rows_ref, rows)
    np.testing.assert_allclose(
        out,
        s * y @ R + t,
        atol=1e-5,
        err_msg="unmatched rows must move by the transform fitted on matched rows",
    )
    with pytest.raises(ValueError, match="both"):
        procrustes_align(y_ref, y, rows_ref, None)


def test_align_sequence__chains_frames_back_to_the_first():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((20, 2))
    frames = [base, 3 * base @ rotation(1.0) + 1, 0.2 * base @ rotation(2.0, True) - 5]
    perm = rng.permutation(20)
    frames[2] = frames[2][perm]  # frame 2 rows are permuted; pairs say which match
    pairs = [(np.arange(20), np.arange(20)), (perm, np.arange(20))]
    out = align_sequence(frames, pairs)
    np.testing.assert_allclose(out[1], base, atol=1e-5)
    np.testing.assert_allclose(out[2], base[perm], atol=1e-5)


def test_exact_knn__matches_brute_force_cosine_and_puts_self_first():
    x = np.random.default_rng(4).standard_normal((37, 5)).astype(np.float32)
    idx, dist = exact_knn(x, 4, chunk_elems=100)  # several chunks
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1 - u @ u.T
    np.fill_diagonal(d, -1)
    expect = np.argsort(d, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, expect)
    np.fill_diagonal(d, 0)
    np.testing.assert_allclose(dist, np.take_along_axis(d, expect, 1), atol=1e-5)
    assert (dist[:, 0] == 0).all()


def test_umap_embed__small_n_falls_back_to_pca_with_warning():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="PCA-2"):
        y = umap_embed(x, n_neighbors=15)
    np.testing.assert_allclose(y, pca_embed(x), atol=1e-6)
    assert umap_embed(x[:1]).shape == (1, 2)
    with pytest.raises(ValueError, match="small_n"):
        umap_embed(x, small_n="tsne")


def test_pca_embed__recovers_planted_plane_distances():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((30, 2)) * [3.0, 1.0]
    q, _ = np.linalg.qr(rng.standard_normal((8, 2)))
    y = pca_embed(z @ q.T + 7.0, normalize=False)  # points on a 2-plane in R^8
    dz = np.linalg.norm(z[:, None] - z[None], axis=-1)
    dy = np.linalg.norm(y[:, None] - y[None], axis=-1)
    np.testing.assert_allclose(dy, dz, atol=1e-4, err_msg="PCA-2 of planar data must be an isometry")


def test_embed_combined__labels_rows_and_split_round_trip():
    groups = {6: np.eye(4, 5), 7: np.ones((3, 5)) + np.arange(5)}
    x, labels, rows, keys = stack_groups(groups)
    assert (
        labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and rows.tolist() == [0, 1, 2, 3, 0, 1, 2] and keys == [6, 7]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = embed_combined(groups, verbose=False)
    parts = emb.split()
    np.testing.assert_array_equal(parts[7], emb.coords[4:])
    assert emb.stack({6: np.zeros(4), 7: np.arange(3)}).tolist() == [0, 0, 0, 0, 0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = embed_combined(groups, max_rows_per_group=2, verbose=False)
    assert sub.coords.shape == (4, 2)
    assert len(sub.stack({6: np.arange(4), 7: np.arange(3)})) == 4, "stack must follow the sampled rows"
    with pytest.raises(ValueError, match="d_in"):
        stack_groups({0: np.zeros((2, 3)), 1: np.zeros((2, 4))})


def test_plots__return_figures_and_gif_has_one_frame_per_layer(tmp_path):
    rng = np.random.default_rng(7)
    coords = {l: rng.standard_normal((25, 2)) for l in range(5)}
    dens = {l: np.where(rng.random(25) < 0.2, 0.0, 10 ** rng.uniform(-4, -1, 25)) for l in range(5)}
    fig = plot_layer_grid(coords, dens, ncols=3)
    assert isinstance(fig, Figure)
    assert sum(ax.get_visible() for ax in fig.axes[:6]) == 5, "one visible panel per layer, extras hidden"
    fig2 = plot_combined_by_layer(
        np.concatenate(list(coords.values())), np.repeat(np.arange(5), 25), list(coords)
    )
    assert isinstance(fig2, Figure)
    matched = rng.random(50) < 0.6
    fig3 = plot_pair(rng.standard_normal((50, 2)), np.repeat([0, 1], 25), ["seed42", "seed49"], matched)
    assert f"matched ({matched.sum()}" in " ".join(
        t.get_text() for t in fig3.axes[1].get_legend().get_texts()
    )
    with pytest.raises(ValueError, match="one entry per"):
        plot_pair(rng.standard_normal((50, 2)), np.repeat([0, 1], 25), ["a", "b"], matched[:10])
    path = animate_layers(
        coords, tmp_path / "layers.gif", dens, background=np.concatenate(list(coords.values())), dpi=30
    )
    with Image.open(path) as im:
        assert im.n_frames == 5


@pytest.mark.slow
def test_umap_embed__real_fit_is_deterministic_and_separates_planted_clusters():
    """One small real UMAP fit (n=200, d=16). Slow the first time in a process (~15-30 s import+compile)."""
    rng = np.random.default_rng(8)
    centers = rng.standard_normal((2, 16)) * 4
    x = (centers[np.repeat([0, 1], 100)] + rng.standard_normal((200, 16))).astype(np.float32)
    y1 = umap_embed(x, verbose=False)
    y2 = umap_embed(x, verbose=False)
    np.testing.assert_array_equal(y1, y2, err_msg="fixed random_state must make fits reproducible")
    a, b = y1[:100], y1[100:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    spread = max(np.linalg.norm(a - a.mean(0), axis=1).mean(), np.linalg.norm(b - b.mean(0), axis=1).mean())
    assert gap > 2 * spread, "two well-separated cosine clusters should embed apart"


def test_centroid_steps__distances_between_successive_groups_centroids():
    from helpers.analysis.atlas import GroupedEmbedding, centroid_steps

    # group 0 centroid (0, 0); group 1 centroid (3, 4); group 2 centroid (3, 5)
    coords = np.array([[-1, 0], [1, 0], [3, 3], [3, 5], [3, 5]], dtype=np.float32)
    emb = GroupedEmbedding(coords, np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0]), [4, 8, 12])
    assert centroid_steps(emb) == pytest.approx([5.0, 1.0])


def test_median_split__medians_of_each_side_and_nan_without_warning_for_an_empty_side():
    from helpers.analysis.atlas import median_split

    on, off = median_split([0.1, 0.5, 0.2, 0.9, 0.4], [True, False, True, False, True])
    assert (on, off) == pytest.approx((0.2, 0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on, off = median_split([0.1, 0.3], [False, False])
    assert np.isnan(on) and off == pytest.approx(0.2)
    with pytest.raises(ValueError, match="one entry each"):
        median_split([0.1, 0.3], [True])


def test_pair_view__marks_latents_matched_above_the_threshold_in_each_direction():
    from helpers.analysis.atlas import pair_view

    # A's rows 0, 1 have a twin in B (cos 1, cos 0.8 > 0.7); row 2 reaches only cos 0.6; B's row 2 is alone.
    A = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    B = np.array([[1.0, 0, 0, 0], [0, 0.8, 0.6, 0], [0, 0, 0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 6 rows: the PCA fallback warns
        pair = pair_view(A, B, verbose=False)
    assert pair.matched_a.tolist() == [True, True, False]
    assert pair.matched_b.tolist() == [True, True, False], "B row 1's best cosine in A is 0.8"
    assert pair.coords.shape == (6, 2) and pair.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert pair.matched.tolist() == [True, True, False, True, True, False]
    assert pair.summary() == "67% of A and 67% of B matched."
    assert pair.summary(density_a=[0.01, 0.03, 0.5]) == (
        "67% of A and 67% of B matched; matched A latents fire on 2.00% of tokens (median) vs 50.00% "
        "for unmatched."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strict = pair_view(A, B, threshold=0.9, verbose=False)
    assert strict.matched_a.tolist() == [True, False, False]
