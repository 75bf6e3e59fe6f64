"""Figures of notebook 09: layer CKA across two models, cross-model latent matching with its baselines,
and SAEs on one layer's hook points.

Each function takes the outputs of helpers.analysis.{cka,universality,hook_points} and returns the
matplotlib Figure; saving is `helpers.report.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def plot_cka_heatmap(
    cka_LK: np.ndarray, layers_a: Sequence[int], layers_b: Sequence[int], names: Sequence[str], mark=None
) -> Figure:
    """Linear CKA of every layer of model a (rows) with every layer of model b (columns), colour scale
    fixed to [0, 1]; each row's best column as a dot, and `mark` (row layer, column layer) boxed."""
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * len(layers_a) / max(len(layers_b), 1) * 0.55 + 1.2))
    im = ax.imshow(cka_LK, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    best = cka_LK.argmax(1)
    ax.plot(best, np.arange(len(layers_a)), "o", color="white", ms=3, label="best layer of " + names[1])
    if mark is not None:
        r, c = list(layers_a).index(mark[0]), list(layers_b).index(mark[1])
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=2))
    step_a, step_b = max(1, len(layers_a) // 10), max(1, len(layers_b) // 10)
    ax.set_yticks(range(0, len(layers_a), step_a), [layers_a[i] for i in range(0, len(layers_a), step_a)])
    ax.set_xticks(range(0, len(layers_b), step_b), [layers_b[i] for i in range(0, len(layers_b), step_b)])
    ax.set_ylabel(f"{names[0]} resid_pre layer")
    ax.set_xlabel(f"{names[1]} resid_pre layer")
    ax.set_title("linear CKA on word-aligned held-out rows")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.6)
    fig.colorbar(im, ax=ax, shrink=0.8, label="CKA")
    fig.tight_layout()
    return fig


def plot_cross_model_shares(table: pd.DataFrame, threshold: float) -> Figure:
    """Three panels over the comparisons (rows of `table`, columns shared, best_shared, median_best_corr,
    n_alive, n_matched): the share of live latents whose one-to-one partner clears `threshold` (a black
    tick where fewer partners than live latents cap it: n_matched / n_alive), the share whose best partner
    (many-to-one) clears it, and the median best correlation; baselines in grey, the other model's SAE in
    colour, the seed twin (noise floor) hatched."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = list(table.index)
    colors = ["#4c72b0" if n.endswith(" SAE") else "#bbbbbb" for n in names]  # the other model's SAE
    panels = (
        ("shared", f"one-to-one partner at r > {threshold}\n(black tick: the most one-to-one allows)"),
        ("best_shared", f"best partner (many-to-one) at r > {threshold}"),
        ("median_best_corr", "median best correlation"),
    )
    cap = (table["n_matched"] / table["n_alive"]).clip(upper=1).to_numpy(float)
    for ax, (col, title) in zip(axes, panels):
        vals = table[col].to_numpy(float)
        bars = ax.barh(np.arange(len(names)), vals, color=colors)
        for bar, name in zip(bars, names):
            if "twin" in name:
                bar.set_hatch("//")
                bar.set_facecolor("#dd8452")
        for i, v in enumerate(vals):
            ax.annotate(
                f"{v:.1%}" if col != "median_best_corr" else f"{v:.2f}",
                (v, i),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        if col == "shared":
            for i, c in enumerate(cap):
                if c < 1:
                    ax.plot([c, c], [i - 0.4, i + 0.4], color="black", lw=1.5)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        ax.set_xlim(0, max(1e-3, vals.max(), *(cap[cap < 1] if col == "shared" else [])) * 1.25)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_hook_points(table: pd.DataFrame) -> Figure:
    """Per hook point: held-out FVU, dead share, position features, and each latent's best decoder cosine
    with a resid_pre latent (median; the share above 0.7 printed) beside its random-rotation null (grey)."""
    hooks = [h.split(".", 2)[-1] for h in table.index]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    x = np.arange(len(hooks))
    for ax, col, title in zip(
        axes[:3], ("fvu", "dead", "position_features"), ("held-out FVU", "dead share", "position features")
    ):
        vals = table[col].to_numpy(float)
        ax.bar(x, vals, color="#4c72b0")
        for i, v in enumerate(vals):
            ax.annotate(
                f"{v:.3g}", (i, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8
            )
        ax.set_title(title, fontsize=10)
    ax = axes[3]
    cos, cos_null = table["resid_cos"].to_numpy(float), table["resid_cos_null"].to_numpy(float)
    share = table["in_resid"].to_numpy(float)
    ax.bar(x - 0.18, np.nan_to_num(cos), width=0.36, color="#4c72b0", label="trained")
    ax.bar(x + 0.18, np.nan_to_num(cos_null), width=0.36, color="#bbbbbb", label="random rotation")
    for i, (c, sh) in enumerate(zip(cos, share)):
        text = "n/a" if np.isnan(c) else f"{sh:.1%} > 0.7"
        ax.annotate(
            text,
            (i - 0.18, 0 if np.isnan(c) else c),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    ax.set_ylim(0, 1)
    ax.set_title("best decoder cosine with a resid_pre latent\n(median; share above 0.7 printed)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    for a in axes:
        a.set_xticks(x, hooks, rotation=20, fontsize=8)
    fig.tight_layout()
    return fig


def pairs_table(
    pairs: Sequence, words_a: Mapping[int, list[str]], words_b: Mapping[int, list[str]]
) -> pd.DataFrame:
    """The best matched (latent a, latent b, r) pairs with each latent's top words."""
    return pd.DataFrame(
        [
            {
                "latent a": i,
                "latent b": j,
                "r": round(float(r), 3),
                "top words (a)": " | ".join(words_a[i]),
                "top words (b)": " | ".join(words_b[j]),
            }
            for i, j, r in pairs
        ]
    )
