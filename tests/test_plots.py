"""save_figure writes PNG + SVG and keeps SVGs of big scatters small."""

import matplotlib.pyplot as plt
import numpy as np

from helpers.report.plots import save_figure


def test_save_figure__writes_both_formats_and_rasterizes_big_point_clouds(tmp_path):
    rng = np.random.default_rng(0)
    fig, (a, b) = plt.subplots(1, 2)
    big = a.scatter(*rng.normal(size=(2, 20_000)), s=1)
    small = b.scatter(*rng.normal(size=(2, 50)), s=1)
    paths = save_figure(fig, "cloud", tmp_path)
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in paths)
    assert big.get_rasterized() and not small.get_rasterized()
    # 20k vector markers would take ~2 MB; rasterised, the SVG stays small
    assert paths[1].stat().st_size < 500_000
    plt.close(fig)


def _sink_result(T=512, seed=0):
    """Per-position stats shaped like SmolLM2 layer 12: positions 1 and 7 are 5-30x the rest."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    mean = 10 + 5 * np.exp(-np.arange(T) / 50) + rng.normal(0, 0.2, T)
    std = 2 * mean + rng.normal(0, 0.3, T)
    mean[1], std[1], mean[7], std[7] = 390.0, 1150.0, 57.0, 410.0
    return SimpleNamespace(pos_mean=mean, pos_std=std, pos_density=np.full(T, 0.007), n_positions=T)


def test_outlier_scaled_axes__flags_a_linear_axis_set_by_two_points_but_not_a_log_one():
    from helpers.report.plots import outlier_scaled_axes

    r = _sink_result()
    fig, (a, b) = plt.subplots(1, 2)
    a.scatter(r.pos_mean, r.pos_std)
    a.set_title("linear")
    b.scatter(r.pos_mean, r.pos_std)
    b.set(xscale="log", yscale="log", title="log")
    problems = outlier_scaled_axes(fig)
    assert len(problems) == 2 and all("'linear'" in p for p in problems), problems
    assert "log axis or clip the outliers" in problems[0]
    plt.close(fig)


def test_save_figure__warns_naming_the_figure_and_raises_in_strict_mode(tmp_path, monkeypatch):
    import pytest

    from helpers.report.plots import UnreadableFigureWarning

    r = _sink_result()
    fig, ax = plt.subplots()
    ax.scatter(r.pos_mean, r.pos_std)
    with pytest.warns(UnreadableFigureWarning, match="figure squashed: .*x range"):
        save_figure(fig, "squashed", tmp_path, formats=("png",))
    monkeypatch.setenv("SAE_LAB_STRICT_FIGURES", "1")
    with pytest.raises(ValueError, match="figure squashed: .*use a log axis or clip the outliers"):
        save_figure(fig, "squashed", tmp_path, formats=("png",))
    plt.close(fig)


def test_position_mean_std__pins_the_sink_positions_and_names_them():
    from helpers.report.plots import outlier_scaled_axes
    from helpers.report.plots.position_profiles import plot_position_mean_std, plot_position_means

    fig = plot_position_mean_std({12: _sink_result()})
    ax = fig.axes[0]
    assert outlier_scaled_axes(fig) == []
    assert "pos 1" in ax.get_title() and "pos 7" in ax.get_title()
    assert ax.get_xlim()[1] < 30 and ax.get_ylim()[1] < 60  # the bulk fills the panel
    labels = [t.get_text() for t in ax.texts]
    assert "(390, 1.15e+03)" in labels and "(57, 410)" in labels
    plt.close(fig)
    for skip_first in (False, True):  # position 1 is a sink too at SmolLM2's layers 12-24
        fig = plot_position_means({12: _sink_result()}, skip_first=skip_first)
        assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_title() == "layer 12 (log y)"
        assert "log y in panels where" in fig._suptitle.get_text() and outlier_scaled_axes(fig) == []
        plt.close(fig)
    flat = _sink_result()
    flat.pos_mean[[1, 7]] = 10.0
    fig = plot_position_means({4: flat}, skip_first=True)
    assert fig.axes[0].get_yscale() == "linear" and "log" not in fig._suptitle.get_text()
    plt.close(fig)


def test_position_curves__spikes_switch_to_log_y_and_the_title_says_so():
    from helpers.report.plots import outlier_scaled_axes
    from helpers.report.plots.position_profiles import plot_position_curves

    rng = np.random.default_rng(0)
    mse = {layer: 5 + rng.random(512) for layer in (0, 12)}
    mse[12][1] = 700.0  # the sink
    fig = plot_position_curves(mse, "mse")
    assert fig.axes[0].get_yscale() == "log" and "log y" in fig.axes[0].get_title()
    assert outlier_scaled_axes(fig) == []
    plt.close(fig)
    delta = {0: rng.normal(0, 1, 512)}
    delta[0][3] = -400.0
    fig = plot_position_curves(delta, "delta CE")
    assert "y clipped to the bulk: 1 outlying points" in fig.axes[0].get_title()
    plt.close(fig)
    fig = plot_position_curves({0: rng.normal(0, 1, 512)}, "delta CE")  # no outliers: untouched
    assert fig.axes[0].get_yscale() == "linear" and "\n" not in fig.axes[0].get_title()
    plt.close(fig)


def test_clip_outliers__a_constant_axis_is_left_alone():
    """TopK: density per position is k / d_sae everywhere (up to float noise); only x clips."""
    from helpers.report.plots import clip_outliers

    r = _sink_result()
    dens = np.full(512, 8 / 4608) * (1 + 1e-12 * np.random.default_rng(0).normal(size=512))
    fig, ax = plt.subplots()
    _, out = clip_outliers(ax, r.pos_mean, dens, s=3)
    assert sorted(np.flatnonzero(out)) == [1, 7]  # the two sinks, by their means only
    assert ax.get_ylim()[0] < dens.min() and ax.get_ylim()[1] > dens.max()
    plt.close(fig)
