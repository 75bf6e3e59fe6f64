"""Tests for helpers.analysis.position_layers and the ablation tables of helpers.analysis.position_ablation:
every per-layer number checked against a value computed by hand on tiny codes."""

import numpy as np
import pytest
import torch

from helpers.analysis import position_ablation, position_layers
from helpers.analysis.positions import PositionMSEResult, PositionStats
from helpers.checks import InputError


def _result(codes):
    """PositionStatsResult of dense codes [n_seq, T, d]."""
    acc = PositionStats(codes.shape[1], codes.shape[2])
    acc.update(torch.as_tensor(codes, dtype=torch.float32))
    return acc.result()


# 2 sequences x 5 positions x 2 latents; latent 0 fires everywhere, latent 1 only at positions 1 and 4.
CODES = np.zeros((2, 5, 2), dtype=np.float32)
CODES[:, :, 0] = [[8.0, 1.0, 2.0, 3.0, 4.0], [8.0, 1.0, 2.0, 3.0, 4.0]]
CODES[:, 1, 1] = 3.0
CODES[:, 4, 1] = [1.0, 3.0]


def test_late_over_early__last_over_first_part_without_position_0():
    r = _result(CODES)
    # per-position nonzero means: p1 (1+3)/2 = 2, p2 2, p3 3, p4 (4+1+4+3)/4 = 3; T // 5 = 1 position each
    assert position_layers.late_over_early({7: r}, parts=5)[7] == pytest.approx(3 / 2)
    # parts=2: n = 2 -> mean(p3, p4) / mean(p1, p2) = 3 / 2; position 0 (mean 8) never enters
    assert position_layers.late_over_early({7: r}, parts=2)[7] == pytest.approx(3 / 2)
    assert position_layers.late_over_early({7: r}, parts=1)[7] == pytest.approx(1.0), "n = T: same window"


def test_max_position_std_and_massive_table():
    r = _result(CODES)
    # position 4's nonzeros 4, 1, 4, 3: mean 3, population std sqrt((1 + 4 + 1 + 0) / 4)
    # position 1's 1, 3, 1, 3: std 1; position 0 (8, 8: std 0) is left out anyway
    assert position_layers.max_position_std({0: r})[0] == pytest.approx(np.sqrt(1.5))
    kept = _result(CODES[:1])
    table = position_layers.massive_std_table({0: r}, {0: kept})
    assert table.loc[0, "tokens"] == 10 and table.loc[0, "tokens_kept"] == 5
    # sequence 0 alone: position 4 holds 4 and 1 -> std 1.5; position 1 holds 1 and 3 -> std 1
    assert table.loc[0, "max_std_no_massive"] == pytest.approx(1.5)
    assert list(table.columns) == ["max_std", "max_std_no_massive", "tokens", "tokens_kept"]


def test_density_vs_mean__range_correlation_and_nan_for_constant_density():
    r = _result(CODES)
    got = position_layers.density_vs_mean({"relu": r})
    # density at p1..p4: 4/4, 2/4, 2/4, 4/4; means 2, 2, 3, 3 -> corr(d, m) = 0 by symmetry
    assert got.loc["relu", "density_min"] == pytest.approx(0.5)
    assert got.loc["relu", "density_max"] == pytest.approx(1.0)
    assert got.loc["relu", "corr_with_mean"] == pytest.approx(0.0, abs=1e-12)
    topk = np.ones((2, 4, 3), dtype=np.float32)
    topk[:, :, 2] = 0.0
    topk[:, 2] *= 5.0  # the mean moves, the density stays 2/3 at every position
    assert np.isnan(position_layers.density_vs_mean({"topk": _result(topk)}).loc["topk", "corr_with_mean"])


def test_largest_activation__with_and_without_position_0():
    r = _result(CODES)
    with_first = position_layers.largest_activation({0: r}, include_first=True)[0]
    without = position_layers.largest_activation({0: r}, include_first=False)[0]
    # the histogram's bin ratio is 1e8 ** (1/256): the estimate lies in [true, true * ratio]
    step = 1e8 ** (1 / 256)
    assert 8.0 <= with_first <= 8.0 * step, "the maximum is 8, at position 0"
    assert 4.0 <= without <= 4.0 * step, "without position 0 the maximum is 4"


def test_features_below__counts_latents_with_a_small_mean():
    r = _result(CODES)
    # means without position 0: latent 0 (1+2+3+4)*2/8 = 2.5, latent 1 (3+3+1+3)/4 = 2.5
    assert position_layers.features_below({0: r}, 2.5)[0] == 0, "strictly below"
    assert position_layers.features_below({0: r}, 2.6)[0] == 2
    # with position 0, latent 0's mean is (2.5 * 8 + 16) / 10 = 3.6
    assert position_layers.features_below({0: r}, 3.0, include_first=True)[0] == 1


def test_first_position_error__position_0_over_mean_of_the_rest():
    m = PositionMSEResult(np.array([6.0, 1.0, np.nan, 3.0]), np.zeros(4), np.array([2, 2, 0, 2]))
    assert position_layers.first_position_error({4: m})[4] == pytest.approx(3.0), "6 / mean(1, 3)"


def test_delta_ce_by_position__reads_notebook_02_file_and_names_what_is_missing(tmp_path):
    from types import SimpleNamespace

    runs = {3: SimpleNamespace(name="L3-a")}
    with pytest.raises(InputError, match="run notebook 02"):
        position_layers.delta_ce_by_position(tmp_path, runs)
    res = SimpleNamespace(ce_sae_pos=np.array([3.0, 2.5]), ce_clean_pos=np.array([2.0, 2.25]))
    torch.save({"L3-a": res}, tmp_path / "downstream.pt")
    np.testing.assert_allclose(position_layers.delta_ce_by_position(tmp_path, runs)[3], [1.0, 0.25])
    with pytest.raises(InputError, match="L5-a"):
        position_layers.delta_ce_by_position(tmp_path, {5: SimpleNamespace(name="L5-a")})


def test_layer_passes__one_pass_per_layer_saved_where_notebook_05_reads(tmp_path, monkeypatch):
    from helpers import paths

    class Identity:  # an SAE-like encoder whose codes are its relu'd input
        W_dec = torch.eye(2)

        def encode(self, x):
            return torch.relu(x.float())

        def decode(self, c):
            return c

    class Store:
        seq_len = 5

        def sequences(self, layer):
            return [(None, torch.as_tensor(CODES * (layer + 1)))]

    monkeypatch.setattr(position_layers.experiments, "max_norm", lambda store, layer, profile: 1e9)
    monkeypatch.setattr(paths, "position_stats_path", lambda name, layer: tmp_path / name / f"L{layer}.npz")
    profile = type("P", (), {"name": "t"})()
    passes = position_layers.layer_passes(Store(), {0: Identity(), 2: Identity()}, profile)
    assert sorted(passes) == [0, 2]
    np.testing.assert_allclose(passes[2].stats.pl_sum, 3 * _result(CODES).pl_sum)
    np.testing.assert_allclose(passes[0].mse.mse, 0.0)
    assert passes[0].typical.tokens.sum() == 10, "nothing is above a cut of 1e9"
    assert (tmp_path / "t" / "L2.npz").is_file()


def test_ablation_curves_and_summary():
    stats = _result(CODES)
    mse = PositionMSEResult(np.array([9.0, 1.0, 2.0, 3.0, 6.0]), np.zeros(5), np.full(5, 2))
    abl = {
        None: position_ablation.AblationResult({1: stats}, {1: mse}, np.array([1.0, 2.0, 3.0, 4.0])),
        "zero": position_ablation.AblationResult({1: stats}, {1: mse}, np.array([2.0, 2.0, 2.0, 2.0])),
    }
    curves = position_ablation.ablation_curves(abl, 1)
    assert sorted(curves) == ["ce", "density", "mse", "position_means"]
    assert list(curves["ce"]) == ["None", "zero"], "labels are strings, the clean run 'None'"
    np.testing.assert_allclose(curves["position_means"]["None"], [8.0, 2.0, 2.0, 3.0, 3.0])
    np.testing.assert_allclose(curves["density"]["zero"], [0.5, 1.0, 0.5, 0.5, 1.0])
    table = position_ablation.ablation_summary(abl, 1)
    assert table.loc["None", "model_ce"] == pytest.approx(2.5)
    assert table.loc["zero", "sae_mse"] == pytest.approx(3.0), "mean of positions >= 1: (1+2+3+6)/4"


def test_plot_ablation_curves__four_figures_position_0_left_out_of_the_code_curves():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.report.plots import position_profiles

    curves = {
        "position_means": {"None": np.arange(6.0), "zero": np.ones(6)},
        "density": {"None": np.ones(6), "zero": np.ones(6)},
        "mse": {"None": np.arange(6.0)},
        "ce": {"None": np.ones(5)},
    }
    figs = position_profiles.plot_ablation_curves(curves, layer=3)
    assert sorted(figs) == ["ce", "density", "mse", "position_means"]
    line = figs["position_means"].axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5], "position 0 left out, x still the true position"
    assert list(figs["mse"].axes[0].lines[0].get_xdata()) == [0, 1, 2, 3, 4, 5], "the MSE curve keeps it"
    assert "L3" in figs["mse"].axes[0].get_ylabel()
    plt.close("all")
