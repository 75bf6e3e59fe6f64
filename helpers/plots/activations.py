"""Figures of raw residual-stream activations (notebook 01)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def plot_position_norms(norms: dict[int, np.ndarray], model: str = "", corpus: str = ""):
    """Mean residual norm per position, one line per layer (log y), and the first-position
    norm over the mean of the rest per layer. `norms`: {layer: [T] mean ||x|| per position}."""
    layers = sorted(norms)
    cmap = plt.get_cmap("viridis")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    for i, layer in enumerate(layers):
        ax.plot(np.arange(len(norms[layer])), norms[layer], lw=1,
                color=cmap(i / max(1, len(layers) - 1)), label=f"L{layer}")
    ax.set(yscale="log", xlabel="token position", ylabel="mean ||resid_pre||",
           title=f"Residual norm by position ({model}, {corpus})")
    ax.legend(ncol=2, fontsize=7, title="layer")
    ratio = [norms[layer][0] / norms[layer][1:].mean() for layer in layers]
    bx.bar([str(layer) for layer in layers], ratio, color=[cmap(i / max(1, len(layers) - 1))
                                                          for i in range(len(layers))])
    bx.axhline(1, color="k", lw=0.5)
    bx.set(xlabel="layer", ylabel="norm(pos 0) / mean norm(pos > 0)",
           title="First-token outlier")
    fig.tight_layout()
    return fig
