"""Figures of notebook 08: absorption on the planted hierarchy, FVU of nested prefixes, letter probes.

Each function takes the outputs of helpers.analysis.{absorption,hierarchy_toy,hierarchy,spelling_probes}
and returns the matplotlib Figure; saving is `helpers.report.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

LABELS = {"topk": "TopK", "batchtopk": "BatchTopK", "relu": "ReLU+L1", "matryoshka_batchtopk": "Matryoshka"}
COLORS = {"topk": "#4c72b0", "batchtopk": "#dd8452", "relu": "#55a868", "matryoshka_batchtopk": "#8172b3"}


def plot_toy_absorption(scores: Sequence, metrics=("absorption", "parent_miss", "child_mmcs")) -> Figure:
    """One panel per metric: per architecture, a bar at the mean over seeds with each seed as a dot, and
    beside it a grey bar for its random (untrained) twin, the baseline of that number."""
    df = pd.DataFrame([vars(s) for s in scores])
    trained = df[~df.architecture.str.startswith("random ")]
    archs = list(dict.fromkeys(trained.architecture))
    titles = {
        "absorption": "absorption (child active, parent latent off,\nanother latent carries the parent)",
        "parent_miss": "parent miss (parent latent off\nwhere a child is active)",
        "child_mmcs": "child MMCS (best decoder cosine\nper planted child)",
        "parent_mmcs": "parent MMCS",
    }
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8))
    x = np.arange(len(archs))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for i, arch in enumerate(archs):
            vals = trained.loc[trained.architecture == arch, metric].to_numpy(float)
            ax.bar(i - 0.18, vals.mean(), width=0.36, color=COLORS.get(arch, f"C{i}"))
            ax.plot(np.full(len(vals), i - 0.18), vals, "o", color="k", ms=3)
            ax.annotate(
                f"{vals.mean():.3f}",
                (i - 0.18, vals.max()),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
            base = df.loc[df.architecture == f"random {arch}", metric].to_numpy(float)
            if len(base):
                ax.bar(i + 0.18, base.mean(), width=0.36, color="0.85", hatch="//", edgecolor="0.5")
        ax.set_xticks(x, [LABELS.get(a, a) for a in archs], fontsize=8)
        ax.set_title(titles.get(metric, metric), fontsize=9)
        ax.set_ylim(0, max(1.0, float(df[metric].max()) * 1.1) if metric.endswith("mmcs") else None)
    handles = [plt.Rectangle((0, 0), 1, 1, color="0.8", hatch="//", ec="0.5")]
    fig.legend(handles, ["untrained twin (baseline)"], loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.suptitle(
        "Planted hierarchy: trained SAEs (bars: mean, dots: seeds) at matched width and L0", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def plot_prefix_fvu(
    widths: Sequence[int], fvu: Mapping[str, np.ndarray], narrow: Mapping[int, float]
) -> Figure:
    """FVU against the number of latents that decode (log x): a line per SAE decoding its first n latents
    in index order, and markers for narrow SAEs trained at width n, each decoding all of its latents."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, v) in enumerate(fvu.items()):
        ax.plot(widths, v, "o-", label=f"{label}: first n latents", color=f"C{i}")
    if narrow:
        w = sorted(narrow)
        ax.plot(w, [narrow[n] for n in w], "k*", ms=11, ls="none", label="narrow TopK SAE of width n (all)")
    ax.set_xscale("log")
    ax.set_xticks(list(widths), [str(w) for w in widths])
    ax.set_xlabel("latents that decode (n)")
    ax.set_ylabel("held-out FVU")
    ax.set_ylim(0, max(1.05, max(float(np.max(v)) for v in fvu.values()) * 1.05))
    ax.axhline(1, color="0.6", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("Nested prefixes: FVU from the first n latents alone", fontsize=10)
    fig.tight_layout()
    return fig


def plot_letter_f1(
    f1: Mapping[str, float], n_test: Mapping[str, int], threshold: float = 0.6, needed: int = 20
) -> Figure:
    """Per-letter F1 of the first-letter probe on held-out words (green above SAEBench's 0.6, strictly),
    each bar labelled with its number of test words (an F1 on 1-2 words is noise)."""
    letters = sorted(f1)
    vals = [f1[c] for c in letters]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.bar(letters, vals, color=["C2" if v > threshold else "C3" for v in vals])
    for i, c in enumerate(letters):
        ax.text(i, vals[i] + 0.01, str(int(n_test[c])), ha="center", va="bottom", fontsize=7)
    ax.axhline(threshold, color="k", ls="--", lw=1)
    n = sum(v > threshold for v in vals)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("probe F1 (test words)")
    ax.set_title(
        f"First-letter probe: {n} of {len(letters)} letters at F1 > {threshold} (SAEBench scores "
        f"absorption at >= {needed}); above each bar: its test words",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
