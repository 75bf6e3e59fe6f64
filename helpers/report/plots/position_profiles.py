"""Figures for the token-position analysis (the post's F1-F7, F9 and position features).

Every function takes explicit data (usually `results = {layer: PositionStatsResult}`) and RETURNS
a matplotlib Figure; saving is `helpers.report.plots.save_figure`. Layers are coloured by depth
(viridis over the layer ids), positions by the post's "flare" palette, deciles by "mako".
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from helpers.analysis import position_features as PF
from helpers.analysis import positions as P
from helpers.report.plots import clip_outliers


def _cmap(name):
    """A matplotlib colormap, or a seaborn palette ('flare', 'mako', ...) as one."""
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        import seaborn as sns

        return sns.color_palette(name, as_cmap=True)


def _grid(n: int, ncols: int = 4, panel=(3.6, 2.8), **kw):
    """-> (fig, flat axes list of length n); unused panels are hidden."""
    if n < 1:
        raise ValueError("nothing to plot: pass a non-empty {layer: result} dict")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel[0] * ncols, panel[1] * nrows),
        squeeze=False,
        constrained_layout=True,
        **kw,
    )
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _depth(layers, cmap="viridis"):
    """-> (layer -> colour, ScalarMappable for a 'layer' colourbar)."""
    layers = list(layers)
    norm = matplotlib.colors.Normalize(min(layers), max(max(layers), min(layers) + 1))
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=_cmap(cmap))
    return {layer: sm.to_rgba(layer) for layer in layers}, sm


def _positions_colorbar(fig, axes, mappable):
    fig.colorbar(mappable, ax=axes, shrink=0.8, label="token position")


def plot_position_means(results: dict, skip_first: bool = False, ncols: int = 4, cmap="flare"):
    """F1/F2: mean nonzero activation per position, one panel per layer (skip_first drops BOS)."""
    fig, axes = _grid(len(results), ncols)
    for ax, (layer, r) in zip(axes, results.items()):
        x, y = P.position_curve(r, "mean", skip_first)
        ax.plot(x, y, color="grey", alpha=0.5, lw=0.8)
        sc = ax.scatter(x, y, c=x, cmap=_cmap(cmap), s=4, vmin=0, vmax=r.n_positions - 1)
        ax.set(title=f"layer {layer}", xlabel="position", ylabel="mean nonzero activation")
        _log_y_if_outliers_set_it(ax, y, note="log y")  # the sink is up to ~300x the rest
    _positions_colorbar(fig, axes, sc)
    logged = any(ax.get_yscale() == "log" for ax in axes)
    fig.suptitle(
        "Mean activation per position"
        + (" (without position 0)" if skip_first else "")
        + ("; log y in panels where a few positions are far above the rest" if logged else "")
    )
    return fig


def plot_position_means_overlay(results: dict, window: int = 10, skip_first: bool = True, cmap="viridis"):
    """F3: all layers' smoothed (moving average `window`) mean-per-position curves, by depth."""
    colors, sm = _depth(results, cmap)
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for layer, r in results.items():
        x, y = P.position_curve(r, "mean", skip_first, window)
        ax.plot(x, y, color=colors[layer], lw=1.2, label=f"layer {layer}")
    fig.colorbar(sm, ax=ax, label="layer")
    ax.set(
        xlabel="position",
        ylabel=f"mean nonzero activation (smoothed, w={window})",
        title="Smoothed mean activation per position, all layers",
    )
    return fig


def _per_position_scatter(results, ystat, ylabel, skip_first, ncols, cmap, title):
    fig, axes = _grid(len(results), ncols)
    for ax, (layer, r) in zip(axes, results.items()):
        x, m = P.position_curve(r, "mean", skip_first)
        _, y = P.position_curve(r, ystat, skip_first)
        sc, out = clip_outliers(ax, m, y, c=x, cmap=_cmap(cmap), s=5, vmin=0, vmax=r.n_positions - 1)
        ax.plot(m[~out], y[~out], color="grey", alpha=0.3, lw=0.5, zorder=0)  # the trajectory
        clipped = ", ".join(f"pos {int(p)}" for p in x[out][:3]) + (" ..." if out.sum() > 3 else "")
        ax.set(
            title=f"layer {layer}" + (f" ({clipped} off-scale)" if out.any() else ""),
            xlabel="mean nonzero activation",
            ylabel=ylabel,
        )
        ax.title.set_fontsize(9)
    _positions_colorbar(fig, axes, sc)
    fig.suptitle(
        title + " (red triangles: off-scale positions pinned to the border, labelled (mean, " + ylabel + "))",
        fontsize=10,
    )
    return fig


def plot_position_mean_std(
    results: dict,
    skip_first: bool = True,
    ncols: int = 4,
    cmap="flare",
    title: str = "Per-position mean vs std",
):
    """F4: per-position mean vs std of nonzero activations, coloured by position."""
    return _per_position_scatter(results, "std", "std", skip_first, ncols, cmap, title)


def plot_position_mean_density(results: dict, skip_first: bool = True, ncols: int = 4, cmap="flare"):
    """F5: per-position mean vs density (fraction of nonzero (token, latent) pairs)."""
    return _per_position_scatter(
        results, "density", "density", skip_first, ncols, cmap, "Per-position mean vs density"
    )


def plot_feature_deciles(
    results: dict, include_first: bool = True, qs=P.DECILES, ncols: int = 4, cmap="mako"
):
    """F6: per-feature quantiles of nonzero activations (features sorted by median, log y)."""
    fig, axes = _grid(len(results), ncols)
    colors = _cmap(cmap)(np.linspace(0.1, 0.9, len(qs)))
    for ax, (layer, r) in zip(axes, results.items()):
        q = P.feature_quantiles(r, qs, include_first)
        q = q[np.argsort(P.feature_median(r, include_first), kind="stable")]
        for i in range(len(qs)):
            ax.plot(q[:, i], color=colors[i], lw=0.8, label=f"q={qs[i]:g}")
        ax.set(yscale="log", title=f"layer {layer}", xlabel="feature (sorted by median)", ylabel="activation")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(
        "Per-feature deciles of nonzero activations "
        + ("(with position 0)" if include_first else "(without position 0)")
    )
    return fig


def plot_feature_mean_density(results: dict, include_first: bool = False, ncols: int = 4, cmap="viridis"):
    """F7a: per-feature mean vs density, log-log, one panel per layer."""
    colors, _ = _depth(results, cmap)
    fig, axes = _grid(len(results), ncols)
    for ax, (layer, r) in zip(axes, results.items()):
        fs = r.feature_stats(include_first)
        ax.scatter(fs["mean"], fs["density"], s=2, alpha=0.5, color=colors[layer])
        ax.set(
            xscale="log",
            yscale="log",
            title=f"layer {layer}",
            xlabel="feature mean",
            ylabel="feature density",
        )
    fig.suptitle("Per-feature mean vs density")
    return fig


def plot_feature_mean_kde(results: dict, include_first: bool = False, cmap="viridis"):
    """F7b: KDE of per-feature means (log x), one curve per layer coloured by depth."""
    colors, sm = _depth(results, cmap)
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for layer, r in results.items():
        x, dens = P.feature_mean_kde(r, include_first)
        ax.plot(x, dens, color=colors[layer])
    fig.colorbar(sm, ax=ax, label="layer")
    ax.set(
        xscale="log",
        xlabel="feature mean",
        ylabel="density per log10 unit",
        title="Distribution of feature means",
    )
    return fig


def plot_feature_mean_std(
    results: dict, include_first: bool = False, cmap="viridis", max_points: int = 5000, seed: int = 0
):
    """F7c: per-feature mean vs std, all layers overlaid (at most max_points per layer)."""
    colors, sm = _depth(results, cmap)
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for layer, r in results.items():
        fs = r.feature_stats(include_first).dropna()
        if len(fs) > max_points:
            fs = fs.iloc[rng.choice(len(fs), max_points, replace=False)]
        ax.scatter(fs["mean"], fs["std"], s=2, alpha=0.4, color=colors[layer])
    fig.colorbar(sm, ax=ax, label="layer")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="feature mean",
        ylabel="feature std",
        title="Feature mean vs std across layers",
    )
    return fig


def plot_counts_below(
    results: dict, thresholds, stat: str = "mean", include_first: bool = False, cmap="viridis"
):
    """F7d: number of features whose mean (or median) is below each threshold, per layer:
    curves over thresholds, or bars per layer when a single threshold is given."""
    if stat not in ("mean", "median"):
        raise ValueError(f"unknown stat {stat!r}; choose 'mean' or 'median'")
    colors, sm = _depth(results, cmap)
    thr = np.atleast_1d(thresholds)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    counts = {}
    for layer, r in results.items():
        v = (
            r.feature_stats(include_first)["mean"].to_numpy()
            if stat == "mean"
            else P.feature_median(r, include_first)
        )
        counts[layer] = P.counts_below(v, thr)
    if thr.size == 1:
        ax.bar([str(k) for k in counts], [c[0] for c in counts.values()], color=[colors[k] for k in counts])
        ax.set(xlabel="layer", ylabel=f"features with {stat} < {thr[0]:g}")
    else:
        for layer, c in counts.items():
            ax.plot(thr, c, color=colors[layer])
        fig.colorbar(sm, ax=ax, label="layer")
        ax.set(xlabel="threshold", ylabel=f"features with {stat} < threshold")
    ax.set_title(f"Features with low {stat} activation")
    return fig


def plot_position_curves(
    curves: dict,
    ylabel: str,
    skip_first: bool = False,
    window: int | None = None,
    title: str | None = None,
    cmap="viridis",
):
    """Generic per-position curves {label: [T] array} (e.g. per-position CE per layer); integer
    labels are coloured by depth, others by the colormap in order."""
    labels = list(curves)
    if all(isinstance(k, (int, np.integer)) for k in labels):
        colors, sm = _depth(labels, cmap)
    else:
        cs = _cmap(cmap)(np.linspace(0, 1, max(len(labels), 2)))
        colors, sm = dict(zip(labels, cs)), None
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for k, y in curves.items():
        y = np.asarray(y, dtype=np.float64)
        x = np.arange(len(y))
        if skip_first:
            x, y = x[1:], y[1:]
        ax.plot(x, P.smooth(y, window) if window else y, color=colors[k], lw=1, label=str(k))
    if sm is not None:
        fig.colorbar(sm, ax=ax, label="layer")
    else:
        ax.legend(fontsize=7)
    ax.set(xlabel="position", ylabel=ylabel, title=title or ylabel + " per position")
    _log_y_if_outliers_set_it(ax, np.concatenate([line.get_ydata() for line in ax.lines]))
    return fig


def _log_y_if_outliers_set_it(ax, y, note: str = "log y: a few positions are far above the rest") -> None:
    """A few spikes (the sink at position 0/1, every separator token) can be 10-300x the rest
    and flatten every curve to a line at the bottom: then use a log y axis (all values > 0) or
    clip the y range to the bulk, and say so in the title."""
    from helpers.report.plots import OUTLIER_SPAN_RATIO

    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size < 20:
        return
    lo, hi = np.quantile(y, [0.01, 0.99])
    if not (hi > lo and y.max() - y.min() > OUTLIER_SPAN_RATIO * (hi - lo)):
        return
    if y.min() > 0:
        ax.set_yscale("log")
        ax.set_title(
            ax.get_title() + f"\n({note})"
            if "\n" in note or len(note) > 12
            else ax.get_title() + f" ({note})",
            fontsize=10,
        )
    else:
        pad = 0.5 * (hi - lo)
        n_out = int(((y < lo - pad) | (y > hi + pad)).sum())
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(
            ax.get_title() + f"\n(y clipped to the bulk: {n_out} outlying points off-scale)", fontsize=10
        )


def plot_position_mse(
    mse_results: dict, key: str = "mse", skip_first: bool = True, window: int | None = None
):
    """F9: per-position SAE reconstruction error {layer: PositionMSEResult}, a line per layer."""
    if key not in ("mse", "rel_mse"):
        raise ValueError(f"unknown key {key!r}; choose 'mse' or 'rel_mse'")
    curves = {layer: getattr(m, key) for layer, m in mse_results.items()}
    return plot_position_curves(
        curves,
        "reconstruction " + key.replace("_", " "),
        skip_first,
        window,
        "SAE reconstruction error per position",
    )


def plot_position_feature_counts(counts):
    """Flagged latents per layer, stacked by kind (the DataFrame of `position_features_per_layer`):
    sink latents below, position features above; a bar's height is the layer's `n_total`."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    x = np.arange(len(counts))
    ax.bar(x, counts["n_sink"], 0.6, label="sink (fires almost only at position 0)", color="tab:orange")
    ax.bar(
        x,
        counts["n_position"],
        0.6,
        bottom=counts["n_sink"],
        label="position (eta2_adj >= threshold)",
        color="tab:blue",
    )
    ax.set_xticks(x, [str(v) for v in counts["layer"]])
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel="number of latents")
    ax.set_ylim(0, max(1, int(counts["n_total"].max())) * 1.05)
    ax.set_title("Position and sink latents per layer", pad=24)
    ax.legend(
        fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False
    )  # above the bars
    return fig


def plot_ablation_curves(curves: dict[str, dict[str, np.ndarray]], layer: int) -> dict[str, plt.Figure]:
    """{name: Figure} of `position_ablation.ablation_curves`, one line per ablation: "position_means"
    and "density" of layer `layer`'s codes (position 0, the sink, left out), "mse" of its SAE and the
    model's "ce"."""
    labels = {
        "position_means": (f"mean nonzero activation (L{layer})", True),
        "density": (f"density (L{layer})", True),
        "mse": (f"SAE MSE (L{layer})", False),
        "ce": ("model CE, nats", False),
    }
    return {
        name: plot_position_curves(curves[name], ylabel=ylabel, skip_first=skip)
        for name, (ylabel, skip) in labels.items()
    }


def plot_position_profiles(results: dict, tables: dict | None = None, top: int = 4, skip_first: bool = False):
    """Small multiples: rows = layers, columns = the `top` position features by eta2 (tables =
    {layer: position_features(...)} or computed with defaults); mean activation per position."""
    tables = tables or {layer: PF.position_features(r) for layer, r in results.items()}
    fig, axes = plt.subplots(
        len(results), top, figsize=(2.8 * top, 2.0 * len(results)), squeeze=False, constrained_layout=True
    )
    for row, (layer, r) in zip(axes, results.items()):
        tab = tables[layer].head(top)
        for ax in row[len(tab) :]:
            ax.axis("off")
        row[0].set_ylabel(f"layer {layer}")
        for ax, f in zip(row, tab.itertuples()):
            y = PF.position_profile(r, int(f.latent))
            x = np.arange(len(y))
            ax.plot(x[int(skip_first) :], y[int(skip_first) :], lw=1)
            ax.set_title(f"#{f.latent} {f.kind} eta2={f.eta2:.2f}", fontsize=8)
        if len(tab) == 0:
            row[0].axis("on")
            row[0].text(0.5, 0.5, "none", ha="center", va="center", transform=row[0].transAxes)
            row[0].set_xticks([]), row[0].set_yticks([])
    fig.suptitle("Position profiles (mean activation per position, zeros included)")
    return fig
