"""Figures of notebook 07: the crosscoder's layer shares, tied vs untied SAEs, width stitching.

Each function takes the outputs of helpers.analysis.{crosscoders,tied,stitching} and returns the
matplotlib Figure; saving is `helpers.report.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from helpers.analysis.crosscoders import ONE_LAYER_SHARE, LayerKinds
from helpers.analysis.stitching import KINDS, PUBLISHED, StitchingSplit

KIND_COLORS = {"identical": "#4c72b0", "split": "#55a868", "novel": "#c44e52"}


def plot_layer_shares(kinds: LayerKinds, title: str = "", name: str = "Crosscoder") -> Figure:
    """Left: per live latent, its largest per-layer share of decoder norm (1/L = spread evenly, 1 = one
    layer), one histogram per top layer, stacked. Right: latents per kind (one layer each, or spanning).
    The default title names the layers and the number of live latents."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    top = kinds.shares.max(1)
    L = len(kinds.layers)
    bins = np.linspace(1 / L, 1, 31)
    data = [top[kinds.top_layer == i] for i in range(L)]
    ax.hist(data, bins=bins, stacked=True, label=[f"top layer L{layer}" for layer in kinds.layers])
    ax.axvline(ONE_LAYER_SHARE, color="k", ls="--", lw=1)
    ax.text(
        ONE_LAYER_SHARE, ax.get_ylim()[1] * 0.95, f" one layer (>= {ONE_LAYER_SHARE})", va="top", fontsize=8
    )
    ax.set_xlabel("largest per-layer share of the latent's decoder norm")
    ax.set_ylabel("live latents")
    ax.legend(fontsize=8, loc="upper left")
    t = kinds.table()
    colors = [f"C{i}" for i in range(L)] + ["0.5"]
    bx.bar(t["kind"], t["latents"], color=colors)
    for i, (n, f) in enumerate(zip(t["latents"], t["fraction"])):
        bx.text(i, n, f"{f:.0%}", ha="center", va="bottom", fontsize=8)
    bx.set_ylabel("live latents")
    bx.tick_params(axis="x", labelsize=8)
    layers = ", ".join(map(str, kinds.layers))
    fig.suptitle(title or f"{name} over layers {layers}: {len(kinds.latents)} live latents", fontsize=10)
    fig.tight_layout()
    return fig


def plot_encoder_decoder_cosines(cosines: Mapping[str, np.ndarray]) -> Figure:
    """Histogram of per-latent cos(W_enc[:, j], W_dec[j]) for each untied SAE; a tied SAE (every latent
    at exactly 1) is a dashed line at 1 named in the legend, so its spike does not set the y axis."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    bins = np.linspace(-0.2, 1.0001, 49)
    styles = iter([(0, (4, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2))])
    for i, (name, c) in enumerate(cosines.items()):
        if np.all(c > 1 - 1e-5):
            ax.axvline(
                1.0, color=f"C{i}", lw=1.5, ls=next(styles), label=f"{name}: all {len(c)} latents at 1"
            )
        else:
            ax.hist(
                np.clip(c, -0.2, 1.0),
                bins=bins,
                histtype="step",
                lw=1.5,
                color=f"C{i}",
                label=f"{name} (median {np.median(c):.2f})",
            )
    ax.set_xlabel("cos(encoder column, decoder row) per latent")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_stitching(split: StitchingSplit, live: np.ndarray | None = None, title: str = "") -> Figure:
    """Left: each wide latent's best decoder cosine to the narrow SAE, coloured by kind (threshold
    dashed). Right: the share of each kind beside the published split (Leask, Bussmann et al. 2024)."""
    keep = np.ones(len(split.kind), bool) if live is None else live
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
    bins = np.linspace(0, 1, 41)
    data = [split.best_cos[keep & (split.kind == k)] for k in KINDS]
    ax.hist(data, bins=bins, stacked=True, color=[KIND_COLORS[k] for k in KINDS], label=list(KINDS))
    ax.axvline(split.threshold, color="k", ls="--", lw=1)
    ax.set_xlabel("best decoder cosine to the half-width SAE")
    ax.set_ylabel("latents of the base SAE")
    ax.legend(fontsize=8)
    f = split.fractions(keep)
    ours = [f["identical"] + f["split"], f["novel"]]
    x = np.arange(2)
    bx.bar(x - 0.2, ours, 0.4, label="ours", color="#4c72b0")
    bx.bar(
        x + 0.2, [PUBLISHED["identical or split"], PUBLISHED["novel"]], 0.4, label="published", color="0.7"
    )
    for xi, v in zip(x - 0.2, ours):
        bx.text(xi, v, f"{v:.0%}", ha="center", va="bottom", fontsize=8)
    bx.set_xticks(x, ["identical or split", "novel"])
    bx.set_ylim(0, 1)
    bx.set_ylabel("share of latents")
    bx.legend(fontsize=8)
    fig.suptitle(title or "Width stitching: the base SAE against its half-width twin", fontsize=10)
    fig.tight_layout()
    return fig
