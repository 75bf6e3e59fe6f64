"""Figures for the decoder-direction atlas (post F14) and the feature card's small plots.

All helpers take explicit arrays (coordinates from `helpers.analysis.atlas`) and RETURN a matplotlib Figure
built with `matplotlib.figure.Figure` (no pyplot state, so notebooks do not show it twice);
`animate_layers` writes a GIF with PillowWriter (pillow ships with matplotlib) and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.animation import PillowWriter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DEAD_COLOR = "#cccccc"
PAIR_COLORS = ("#4c72b0", "#dd8452")
MATCH_COLORS = {"matched": "#2a9d8f", "unmatched": "#e76f51"}


def _density_norm(densities) -> colors.LogNorm | None:
    pos = np.concatenate([np.asarray(d, dtype=np.float64).ravel() for d in densities])
    pos = pos[pos > 0]
    if pos.size == 0:
        return None
    lo, hi = pos.min(), pos.max()
    return colors.LogNorm(lo, hi if hi > lo else lo * 10)


def _scatter_density(ax, xy, density, norm, cmap, s):
    """Alive latents coloured by log density over dead ones (density 0) in grey; returns the mappable."""
    xy = np.asarray(xy)
    if density is None or norm is None:
        return ax.scatter(xy[:, 0], xy[:, 1], s=s, c=PAIR_COLORS[0], linewidths=0)
    d = np.asarray(density, dtype=np.float64)
    dead = d <= 0
    ax.scatter(xy[dead, 0], xy[dead, 1], s=s, c=DEAD_COLOR, linewidths=0)
    return ax.scatter(xy[~dead, 0], xy[~dead, 1], s=s, c=d[~dead], cmap=cmap, norm=norm, linewidths=0)


def _clean(ax, title=None):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if title is not None:
        ax.set_title(title, fontsize=10)


def plot_layer_grid(
    coords_by_layer: Mapping,
    density_by_layer: Mapping | None = None,
    ncols: int = 4,
    point_size: float = 2.0,
    cmap: str = "viridis",
    label_fmt: str = "layer {}",
) -> Figure:
    """One UMAP panel per layer (F14 3x4 grid), coloured by feature density on a shared log scale."""
    layers = list(coords_by_layer)
    if not layers:
        raise ValueError("coords_by_layer is empty; pass {layer: coords [n, 2]}")
    nrows = -(-len(layers) // ncols)
    ncols = min(ncols, len(layers))
    fig = Figure(figsize=(2.6 * ncols + 0.8, 2.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    norm = _density_norm([density_by_layer[l] for l in layers]) if density_by_layer else None
    mappable = None
    for ax, layer in zip(axes, layers):
        dens = density_by_layer[layer] if density_by_layer else None
        mappable = _scatter_density(ax, coords_by_layer[layer], dens, norm, cmap, point_size)
        _clean(ax, label_fmt.format(layer))
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    if norm is not None:
        fig.colorbar(
            mappable, ax=axes[: len(layers)].tolist(), label="feature density (log; grey = dead)", shrink=0.8
        )
    return fig


def plot_combined_by_layer(
    coords,
    labels,
    groups,
    point_size: float = 1.5,
    cmap: str = "viridis",
    seed: int = 0,
    label_fmt: str = "layer {}",
) -> Figure:
    """One embedding of all layers' decoders coloured by layer (sequential colormap, discrete colourbar).

    coords [N, 2], labels [N] (position in `groups`), groups: layer keys in order (a GroupedEmbedding's
    fields). Points are drawn in a seeded random order so no layer hides the others.
    """
    coords, labels = np.asarray(coords), np.asarray(labels)
    k = len(groups)
    order = np.random.default_rng(seed).permutation(len(coords))
    cm = colormaps[cmap].resampled(k)
    norm = colors.BoundaryNorm(np.arange(k + 1) - 0.5, k)
    fig = Figure(figsize=(7.5, 6.2), layout="constrained")
    ax = fig.subplots()
    sc = ax.scatter(
        coords[order, 0], coords[order, 1], c=labels[order], cmap=cm, norm=norm, s=point_size, linewidths=0
    )
    _clean(ax, f"combined embedding of {k} decoders")
    cb = fig.colorbar(sc, ax=ax, ticks=np.arange(k), shrink=0.85)
    cb.ax.set_yticklabels([label_fmt.format(g) for g in groups])
    return fig


def plot_pair(coords, labels, groups, matched, point_size: float = 2.0, seed: int = 0) -> Figure:
    """Seed/corpus pair view: one embedding of two SAEs' decoder rows; left by SAE, right by matched.

    matched [N] bool, in the embedding's row order (the caller computes it with helpers.analysis.matching,
    e.g.
    top-1 cosine > 0.7; `GroupedEmbedding.stack({name: mask})` builds it from per-SAE masks).
    """
    coords, labels, matched = np.asarray(coords), np.asarray(labels), np.asarray(matched, dtype=bool)
    if matched.shape != labels.shape:
        raise ValueError(f"matched {matched.shape} must have one entry per embedded row {labels.shape}")
    order = np.random.default_rng(seed).permutation(len(coords))  # interleave: no class hides another
    xy = coords[order]
    sae_cols = [
        PAIR_COLORS[i] if len(groups) <= 2 else colors.to_hex(colormaps["tab10"](i % 10))
        for i in range(len(groups))
    ]
    fig = Figure(figsize=(12, 5.6), layout="constrained")
    ax_sae, ax_match = fig.subplots(1, 2)
    ax_sae.scatter(xy[:, 0], xy[:, 1], s=point_size, linewidths=0, c=np.array(sae_cols)[labels[order]])
    _legend(ax_sae, [(f"{g} ({(labels == i).sum()})", sae_cols[i]) for i, g in enumerate(groups)])
    _clean(ax_sae, "coloured by SAE")
    match_cols = np.where(matched[order], MATCH_COLORS["matched"], MATCH_COLORS["unmatched"])
    ax_match.scatter(xy[:, 0], xy[:, 1], s=point_size, linewidths=0, c=match_cols)
    _legend(
        ax_match,
        [
            (f"matched ({matched.sum()}, {matched.mean():.0%})", MATCH_COLORS["matched"]),
            (f"unmatched ({(~matched).sum()}, {(~matched).mean():.0%})", MATCH_COLORS["unmatched"]),
        ],
    )
    _clean(ax_match, "coloured by matched / unmatched")
    return fig


def _legend(ax, entries):
    handles = [Line2D([], [], ls="", marker="o", color=c, label=t) for t, c in entries]
    ax.legend(handles=handles, fontsize=8, loc="best")


def animate_layers(
    frames: Mapping,
    path,
    density_by_layer: Mapping | None = None,
    background=None,
    fps: float = 2.0,
    dpi: int = 80,
    point_size: float = 3.0,
    cmap: str = "viridis",
    label_fmt: str = "layer {}",
) -> Path:
    """GIF with one frame per layer, axes fixed across frames so positions stay comparable.

    frames: {layer: coords [n_l, 2]} - either `GroupedEmbedding.split()` of ONE combined fit, or
    per-layer fits chained by `helpers.analysis.atlas.align_sequence`. background [M, 2]: drawn grey in every
    frame (e.g. all rows of the combined fit). Returns the written path.
    """
    layers = list(frames)
    if not layers:
        raise ValueError("frames is empty; pass {layer: coords [n, 2]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    allxy = np.concatenate(
        [np.asarray(frames[l]) for l in layers] + ([np.asarray(background)] if background is not None else [])
    )
    lo, hi = allxy.min(0), allxy.max(0)
    pad = 0.03 * (hi - lo + 1e-9)
    norm = _density_norm([density_by_layer[l] for l in layers]) if density_by_layer else None
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi=dpi):
        for layer in layers:
            ax.clear()
            if background is not None:
                bg = np.asarray(background)
                ax.scatter(bg[:, 0], bg[:, 1], s=point_size * 0.4, c="#e6e6e6", linewidths=0)
            dens = density_by_layer[layer] if density_by_layer else None
            _scatter_density(ax, frames[layer], dens, norm, cmap, point_size)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label_fmt.format(layer))
            writer.grab_frame()
    return path


def plot_feature_card(card) -> Figure:
    """The browser's small plots for one FeatureCard: nonzero-activation histogram + position profile."""
    panels = [
        p
        for p in ("hist", "profile")
        if getattr(card, {"hist": "hist_counts", "profile": "position_profile"}[p]) is not None
    ]
    fig = Figure(figsize=(3.4, 2.2 * max(len(panels), 1)), layout="constrained")
    if not panels:
        fig.text(0.5, 0.5, "no histogram / position profile", ha="center", va="center")
        return fig
    axes = np.atleast_1d(fig.subplots(len(panels), 1))
    for ax, p in zip(axes, panels):
        if p == "hist":
            e = np.asarray(card.hist_edges, dtype=np.float64)
            ax.stairs(np.asarray(card.hist_counts), e, fill=True, color=PAIR_COLORS[0])
            if e[0] > 0 and e[-1] / e[0] > 50:
                ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1)
            ax.set_title(f"nonzero activations (density {card.density:.2e})", fontsize=9)
        else:
            prof = np.asarray(card.position_profile, dtype=np.float64)
            ax.plot(np.arange(len(prof)), prof, color=PAIR_COLORS[1], lw=1)
            ax.set_title("mean activation by position", fontsize=9)
            ax.set_xlabel("position", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig
