"""Figures of raw residual-stream activations (notebook 01)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def plot_position_norms(norms: dict[int, np.ndarray], model: str = "", corpus: str = ""):
    """Mean residual norm per position, one line per layer (log y), and the first-position
    norm over the mean of the rest per layer. `norms`: {layer: [T] mean ||x|| per position}."""
    layers = sorted(norms)
    cmap = plt.get_cmap("viridis")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    for i, layer in enumerate(layers):
        ax.plot(
            np.arange(len(norms[layer])),
            norms[layer],
            lw=1,
            color=cmap(i / max(1, len(layers) - 1)),
            label=f"L{layer}",
        )
    ax.set(
        yscale="log",
        xlabel="token position",
        ylabel="mean ||resid_pre||",
        title=f"Residual norm by position ({model}, {corpus})",
    )
    ax.legend(ncol=2, fontsize=7, title="layer")
    ratio = [norms[layer][0] / norms[layer][1:].mean() for layer in layers]
    bx.bar(
        [str(layer) for layer in layers],
        ratio,
        color=[cmap(i / max(1, len(layers) - 1)) for i in range(len(layers))],
    )
    bx.axhline(1, color="k", lw=0.5)
    bx.set(xlabel="layer", ylabel="norm(pos 0) / mean norm(pos > 0)", title="First-token outlier")
    fig.tight_layout()
    return fig


def plot_massive_tokens(massive: Mapping[int, Any], title: str = "") -> Figure:
    """Per layer (helpers.data.massive.MassiveTokens): how many tokens exceed ratio x the median norm
    (left) and the share of the variance about the mean they carry (right)."""
    layers = sorted(massive)
    counts = [max(massive[l].count, 0) for l in layers]
    shares = [massive[l].variance_share for l in layers]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    a.bar([f"L{l}" for l in layers], counts, color="C3")
    a.set_ylabel("massive tokens (count)")
    a.set_ylim(0, max(max(counts), 1) * 1.15)
    for i, c in enumerate(counts):  # zero bars get their "0" too
        a.text(i, c, str(c), ha="center", va="bottom", fontsize=8)
    a.set_title(
        f"tokens above {massive[layers[0]].ratio:g}x the layer's median norm "
        f"(of {massive[layers[0]].n_tokens:,})",
        fontsize=9,
    )
    b.bar([f"L{l}" for l in layers], shares, color="C0")
    b.set_ylim(0, 1)
    b.set_ylabel("share of variance about the mean")
    b.set_title("what they do to FVU's denominator", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig
