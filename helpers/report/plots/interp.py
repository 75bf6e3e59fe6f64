"""Figures of notebook 10: the embedding score, the LLM scores with the judge's own check, and sparse
probing, each over the four dictionaries (SAE latents, neurons, PCA directions, random directions).

Each function takes the tables of helpers.analysis.interp_study and returns the matplotlib Figure; saving
is `helpers.report.plots.save_figure`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

COLORS = {"SAE": "#4c72b0", "neurons": "#dd8452", "PCA": "#55a868", "random": "#8c8c8c"}


def _strip(ax, table: pd.DataFrame, col: str, order, seed: int = 0) -> None:
    """One column of points per dictionary (jittered) with its median as a black bar and the count."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(order):
        v = table.loc[table.dictionary == name, col].dropna().to_numpy(float)
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(v)), v, s=12, alpha=0.6, color=COLORS.get(name, "k"))
        if len(v):
            ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, color="black", lw=2)
            ax.annotate(f"{np.median(v):.2f}\nn={len(v)}", (i + 0.32, np.median(v)), fontsize=7, va="center")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(order)), order)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(-0.5, len(order) - 0.2)


def plot_embedding_scores(table: pd.DataFrame) -> Figure:
    """Per dictionary, each direction's embedding AUROC (activating vs random excerpts), median marked."""
    order = [d for d in COLORS if d in set(table.dictionary)]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    _strip(ax, table, "auroc", order)
    ax.set_ylabel("AUROC, activating vs random excerpts")
    ax.set_title("embedding score (0.5 = chance, dotted)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_llm_scores(table: pd.DataFrame, check: pd.DataFrame) -> Figure:
    """Detection and fuzzing AUROC per dictionary (points, median bar), and in a last column the judge's
    own check: pseudo-latents of token classes scored with their true explanations (stars)."""
    order = [d for d in COLORS if d in set(table.dictionary)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, col, title in zip(
        axes,
        ("detection_auroc", "fuzzing_auroc"),
        ("detection (unmarked excerpts)", "fuzzing (marked tokens)"),
    ):
        _strip(ax, table, col, order)
        x = len(order)
        for _, row in check.iterrows():
            ax.scatter([x], [row[col]], marker="*", s=90, color="#c44e52", zorder=3)
            ax.annotate(row["class"], (x + 0.12, row[col]), fontsize=7, va="center")
        ax.set_xticks(range(x + 1), order + ["judge check\n(true expl.)"])
        ax.set_xlim(-0.5, x + 0.9)
        ax.set_title(f"{title}: AUROC of P(Yes)", fontsize=10)
    axes[0].set_ylabel("AUROC (0.5 = chance, dotted)")
    fig.tight_layout()
    return fig


def plot_probing(table: pd.DataFrame) -> Figure:
    """One panel per task: mean test accuracy against k per dictionary (error bars: sd over splits), the
    shuffled-label controls as thin grey lines."""
    tasks = list(dict.fromkeys(table.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = table[table.task == task]
        for name in dict.fromkeys(sub.dictionary):
            d = sub[sub.dictionary == name].sort_values("k")
            shuffled = name.endswith("(shuffled)")
            ax.errorbar(
                d.k,
                d.accuracy,
                yerr=d.sd.fillna(0),
                label=None if shuffled else name,
                color="#bbbbbb" if shuffled else COLORS.get(name, "k"),
                lw=0.8 if shuffled else 1.8,
                marker="" if shuffled else "o",
                ms=4,
                capsize=2,
            )
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ks = sorted(set(sub.k))
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (latents / directions in the probe)")
        ax.set_title(f"{task} ({int(sub.n_test.iloc[0])} test rows)", fontsize=10)
    axes[0][0].set_ylabel("test accuracy (balanced; 0.5 = chance)")
    axes[0][0].plot([], [], color="#bbbbbb", lw=0.8, label="shuffled labels")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
