"""Figures for feature matching (the post's Part 2, F10-F13).

Top-1..Top-k cosine histograms per variant, top-1 ratio vs threshold curves, the factor study,
the layer-pair heatmap and feature splitting. Each function takes explicit data (outputs of
`helpers.analysis.matching`) and returns the matplotlib Figure; saving is `helpers.report.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from helpers.analysis.matching import FeatureSplitting, PairResult, rank_factors
from helpers.analysis.similarity import top1_ratio_curve


def _np(x: Any) -> np.ndarray:
    return (
        torch.as_tensor(x).detach().cpu().double().numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, float)
    )


def _subsample(v: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """At most max_points rows (fixed seed): KDE / violins on 16k+ points are slow, not better."""
    if len(v) <= max_points:
        return v
    return v[np.random.default_rng(seed).choice(len(v), max_points, replace=False)]


def plot_topk_histograms(
    values: Mapping[str, Any],
    threshold: float = 0.7,
    bins: int = 100,
    kde: bool = True,
    title: str | None = None,
    max_points: int = 20_000,
) -> Figure:
    """One row per variant (e.g. decoder / encoder / neuron): overlaid histograms (+ KDE) of the
    1st..k-th best cosine of each latent of B in A (values [n_B, k] from topk_cosine)."""
    fig, axes = plt.subplots(len(values), 1, figsize=(9, 2.6 * len(values)), sharex=True, squeeze=False)
    for ax, (name, v) in zip(axes[:, 0], values.items()):
        v = _np(v)
        v = v[:, None] if v.ndim == 1 else v
        ratio = float((v[:, 0] > threshold).mean())
        df = pd.DataFrame(_subsample(v, max_points), columns=[f"Top {i + 1}" for i in range(v.shape[1])])
        sns.histplot(
            df.melt(var_name="rank", value_name="cosine"),
            x="cosine",
            hue="rank",
            bins=bins,
            kde=kde,
            stat="density",
            common_norm=False,
            element="step",
            alpha=0.25,
            ax=ax,
        )
        ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.set_title(f"{name}: top-1 ratio {ratio:.3f} (cos > {threshold})", fontsize=10)
    axes[-1, 0].set_xlabel("cosine similarity")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_top1_ratio_curves(
    values: Mapping[str, Any], thresholds: Any = None, threshold: float = 0.7, title: str | None = None
) -> Figure:
    """Top-1 ratio vs threshold, one curve per pair/variant; `values` maps label -> best cosines
    ([n] or [n, k], column 0 used)."""
    t = np.linspace(-0.1, 1.0, 221) if thresholds is None else np.asarray(thresholds, float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, v in values.items():
        at = float(top1_ratio_curve(v, [threshold])[0])
        ax.plot(t, top1_ratio_curve(v, t), label=f"{label} ({at:.2f} at {threshold})")
    ax.axvline(threshold, color="k", ls="--", lw=1)
    ax.set(
        xlabel="threshold",
        ylabel="top-1 ratio (fraction of latents with best cos > threshold)",
        ylim=(-0.02, 1.02),
        title=title or "Top-1 ratio vs threshold",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_factor_study(
    results: Sequence[PairResult],
    kind: str = "violin",
    max_points: int = 20_000,
    title: str | None = None,
    ratio_label: str = "top-1",
    cosine_label: str = "best cosine",
) -> Figure:
    """Distribution of matched best cosine per factor, ordered by mean top-1 ratio (lowest first =
    the factor that changes features most), the ratio and its chance level (the pairs'
    `PairResult.null_ratio`, when computed) annotated above each factor. For a
    Hungarian study pass ratio_label="shared", cosine_label="matched cosine (one-to-one)"."""
    if kind not in ("violin", "box"):
        raise ValueError(f"unknown kind {kind!r}; valid: violin, box")
    ranks = rank_factors(results)
    order = [r.factor for r in ranks]
    frames = []
    for f in order:
        cos = np.concatenate([res.best_cos for res in results if res.factor == f])
        frames.append(pd.DataFrame({"factor": f, "cosine": _subsample(cos, max_points)}))
    df = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(1.6 * len(order) + 3, 4.5))
    plot = sns.violinplot if kind == "violin" else sns.boxplot
    extra = {"cut": 0, "density_norm": "width", "inner": "quart"} if kind == "violin" else {}
    plot(df, x="factor", y="cosine", hue="factor", order=order, hue_order=order, legend=False, ax=ax, **extra)
    thresholds = sorted({res.threshold for res in results})
    for th in thresholds:
        ax.axhline(th, color="k", ls="--", lw=1)
    for x, r in enumerate(ranks):
        chance = "" if np.isnan(r.mean_null_ratio) else f"\nchance {r.mean_null_ratio:.2f}"
        ax.text(
            x,
            1.02,
            f"{ratio_label} {r.mean_top1_ratio:.2f}{chance}\n({r.n_pairs} pairs)",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set(ylim=(min(-0.1, float(df.cosine.min())), 1.25), xlabel="factor that differs", ylabel=cosine_label)
    ax.set_title(title or f"Factor study (threshold {', '.join(map(str, thresholds))})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_layer_pair_heatmap(
    matrix: Any, labels: Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """Heatmap of layer_pair_matrix: cell [i, j] = fraction of latents of j with a match in i."""
    M = _np(matrix)
    labels = list(labels) if labels is not None else [str(i) for i in range(len(M))]
    fig, ax = plt.subplots(figsize=(0.55 * len(M) + 2.5, 0.5 * len(M) + 2))
    sns.heatmap(
        M,
        annot=True,
        fmt=".2f",
        vmin=0,
        vmax=1,
        cmap="viridis",
        square=True,
        xticklabels=labels,
        yticklabels=labels,
        annot_kws={"fontsize": 7},
        ax=ax,
        cbar_kws={"label": "top-1 ratio"},
    )
    ax.set(
        xlabel="B (latents matched)",
        ylabel="A (searched)",
        title=title or "Decoder top-1 ratio between layers",
    )
    fig.tight_layout()
    return fig


def plot_feature_splitting(split: FeatureSplitting, title: str | None = None) -> Figure:
    """Histogram of children per parent (a parent 'splits' when it has >= 2 children)."""
    counts = _np(split.counts).astype(int)
    freq = np.bincount(counts)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(np.arange(len(freq)), freq, width=0.8)
    for x, f in enumerate(freq):
        ax.text(x, f, str(f), ha="center", va="bottom", fontsize=8)
    n_child = len(split.best_parent)
    kept = int((_np(split.best_parent) >= 0).sum())
    ax.set(
        xlabel="children per parent",
        ylabel="parents",
        xticks=np.arange(len(freq)),
        title=title
        or f"Feature splitting: {kept}/{n_child} children matched (cos > {split.threshold}), "
        f"{int((counts >= 2).sum())} parents split",
    )
    ax.title.set_fontsize(10)
    fig.tight_layout()
    return fig


def plot_cross_corpus(table, metrics=("fvu", "delta_ce"), labels=None) -> Figure:
    """Heatmaps of train corpus (rows) x eval corpus (columns), one per metric of a
    `helpers.analysis.cross_corpus` table; the diagonal (an SAE on its own corpus) is outlined."""
    labels = labels or {"fvu": "FVU (massive tokens excluded)", "delta_ce": "CE increase spliced in (nats)"}
    trains = list(dict.fromkeys(table.index.get_level_values("train")))
    evals = list(dict.fromkeys(table.index.get_level_values("eval")))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), constrained_layout=True)
    for ax, m in zip(np.atleast_1d(axes), metrics):
        M = np.array([[table.loc[(a, b), m] for b in evals] for a in trains], dtype=float)
        im = ax.imshow(M, cmap="viridis_r", aspect="auto")
        for i in range(len(trains)):
            for j in range(len(evals)):
                lum = im.norm(M[i, j]) if np.isfinite(M[i, j]) else 0.5
                ax.text(
                    j,
                    i,
                    f"{M[i, j]:.3f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="black" if lum < 0.5 else "white",
                )
                if trains[i] == evals[j]:  # inset, so that neighbouring cells do not look outlined too
                    ax.add_patch(plt.Rectangle((j - 0.44, i - 0.44), 0.88, 0.88, fill=False, lw=2, ec="red"))
        ax.set_xticks(range(len(evals)), evals)
        ax.set_yticks(range(len(trains)), trains)
        ax.set(xlabel="evaluated on", ylabel="SAE trained on", title=labels.get(m, m))
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Cross-corpus evaluation at the main layer (red box: an SAE on its own corpus)", fontsize=10)
    return fig
