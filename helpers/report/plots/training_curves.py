"""Figures for SAE training runs: loss curves, L0 vs FVU per SAE, dead-latent fractions.

Every function takes explicit data and RETURNS a matplotlib Figure (saving is
`helpers.report.plots.save_figure`). Inputs come from the trainer's outputs:
`helpers.training.run_dir.load_training_log(dir)` (one dict per step) and `load_eval_summary(dir)`.
Architectures get fixed colours so every figure of the project agrees: the registry's n-th
architecture, in registration order, takes the palette's n-th colour (`arch_color`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from scipy.signal import lfilter

from helpers.sae import REGISTRY

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
METRIC_LABELS = {
    "loss": "total loss",
    "mse": "MSE (scaled units)",
    "fvu": "FVU",
    "l0": "L0",
    "dead_fraction": "dead fraction",
    "aux_loss": "aux loss",
    "sparsity_loss": "sparsity loss",
    "lr": "learning rate",
}


def arch_color(arch: str | None, i: int = 0) -> str:
    """The colour of an architecture in every figure (by its place in helpers.sae.REGISTRY); a name
    the registry lacks gets matplotlib's i-th default colour."""
    names = list(REGISTRY)
    return PALETTE[names.index(arch) % len(PALETTE)] if arch in names else f"C{i % 10}"


_color = arch_color


def _smooth(y: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average s_t = alpha s_{t-1} + (1 - alpha) y_t, s_0 = y_0 (alpha 0 = raw)."""
    if alpha <= 0 or len(y) == 0:
        return y
    return lfilter([1 - alpha], [1, -alpha], y, zi=[alpha * y[0]])[0]


def plot_loss_curves(
    logs: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str] = ("mse", "fvu", "l0", "dead_fraction"),
    architectures: Mapping[str, str] | None = None,
    smooth: float = 0.9,
    log_y: Sequence[str] = ("mse", "loss", "l0"),
) -> Figure:
    """One panel per metric, one line per SAE, against training tokens (L0 on a log axis: a ReLU
    SAE starts near d_sae active latents and ends near TopK's k).

    logs: {name: [per-step dicts with "tokens" and the metrics]} (training_log.jsonl rows).
    architectures: {name: architecture} for colours; smooth: EMA weight (0 = raw).
    """
    if not logs:
        raise ValueError("no training logs to plot; pass {name: load_training_log(dir)}")
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.8 * len(metrics), 3.0), squeeze=False, constrained_layout=True
    )
    for j, metric in enumerate(metrics):
        ax = axes[0, j]
        for i, (name, rows) in enumerate(logs.items()):
            rows = [r for r in rows if metric in r]
            if not rows:
                continue
            t = np.array([r["tokens"] for r in rows], dtype=float)
            y = _smooth(np.array([r[metric] for r in rows], dtype=float), smooth)
            ax.plot(t, y, label=name, color=_color((architectures or {}).get(name), i), lw=1.2)
        ax.set_xlabel("training tokens")
        ax.set_title(METRIC_LABELS.get(metric, metric))
        if metric in log_y:
            ax.set_yscale("log")
    # one legend beside the panels (inside, it covered the last panel's curves)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    return fig


def plot_l0_vs_fvu(summaries: Mapping[str, Mapping[str, Any]], annotate: bool = True) -> Figure:
    """Scatter of L0 (x, log) against FVU (y), one point per SAE, coloured by architecture.

    summaries: {name: {"l0": ..., "fvu": ..., "architecture": ...}}; an eval_summary.json dict
    (with its "eval" block) is accepted as is. Points are numbered and the numbers keyed in a
    table beside the axes, so SAEs at the same L0 (every TopK SAE sits at its k) stay readable.
    """
    if not summaries:
        raise ValueError("no SAEs to plot; pass {name: load_eval_summary(dir)}")
    fig, (ax, key) = plt.subplots(
        1, 2, figsize=(9.0, 4.2), constrained_layout=True, gridspec_kw={"width_ratios": [1.2, 1.0]}
    )
    seen: set[str] = set()
    points = []
    for i, (name, s) in enumerate(summaries.items()):
        ev = s.get("eval") or s
        arch = s.get("architecture", "?")
        points.append((i + 1, name, float(ev["l0"]), float(ev["fvu"]), arch))
        ax.scatter(
            ev["l0"],
            ev["fvu"],
            color=_color(arch, i),
            s=36,
            zorder=3,
            label=arch if arch not in seen else None,
        )
        seen.add(arch)
    if annotate:  # numbers in a column beside each cluster of equal L0, spaced apart, with leader lines
        lo, hi = min(p[3] for p in points), max(p[3] for p in points)
        gap = 0.045 * max(hi - lo, 1e-6)
        by_l0: dict[int, list] = {}
        for p in points:
            by_l0.setdefault(round(20 * np.log10(max(p[2], 1e-9))), []).append(p)
        for group in by_l0.values():
            group = sorted(group, key=lambda q: q[3])
            ys = [group[0][3]]
            for q in group[1:]:
                ys.append(max(q[3], ys[-1] + gap))
            shift = (np.mean([q[3] for q in group]) - np.mean(ys)) if len(group) > 1 else 0.0
            for (n, _, l0, fvu, _), y in zip(group, ys):
                ax.annotate(
                    str(n),
                    (l0, fvu),
                    xytext=(max(q[2] for q in group) * 1.15, y + shift),
                    textcoords="data",
                    fontsize=7,
                    va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey", "shrinkA": 1, "shrinkB": 3},
                )
        lines = [f"{n:>2}  {name}  (L0 {l0:.1f}, FVU {fvu:.3f})" for n, name, l0, fvu, _ in points]
        key.text(
            0,
            1,
            "\n".join(lines),
            va="top",
            ha="left",
            family="monospace",
            fontsize=6.5,
            transform=key.transAxes,
        )
    key.axis("off")
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(title="architecture", fontsize=8)
    return fig


def plot_dead_fraction(dead: Mapping[str, float], architectures: Mapping[str, str] | None = None) -> Figure:
    """Bars of the fraction of dead latents per SAE (never fired in the dead window / eval set)."""
    if not dead:
        raise ValueError("no SAEs to plot; pass {name: dead_fraction}")
    names = list(dead)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.55 * len(names) + 1.5), 3.2), constrained_layout=True)
    colors = [_color((architectures or {}).get(n), i) for i, n in enumerate(names)]
    ax.bar(range(len(names)), [dead[n] for n in names], color=colors)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("dead fraction")
    ax.set_ylim(0, max(0.05, 1.1 * max(dead.values())))
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_convergence(curve: Sequence[Any], criteria: Any | None = None, title: str = "") -> Figure:
    """The seed pair along training (helpers.analysis.convergence.CurvePoint rows): shared fraction and
    median top-1 cosine (left), each SAE's median cosine to its initial decoder (right), against
    tokens seen (log x; the initial point sits at the left edge). Dashed lines: the criteria."""
    pts = [p if isinstance(p, Mapping) else vars(p) for p in curve]
    t = np.array([p["tokens"] for p in pts], dtype=float)
    x = np.where(t > 0, t, t[t > 0].min() / 2 if (t > 0).any() else 1.0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    a.plot(x, [p["shared_fraction"] for p in pts], "o-", label="shared latents (Hungarian, cos > 0.7)")
    a.plot(x, [p["median_top1"] for p in pts], "s-", label="median top-1 cosine")
    b.plot(x, [p["drift_a"] for p in pts], "o-", label="seed A")
    b.plot(x, [p["drift_b"] for p in pts], "s-", label="seed B")
    if criteria is not None:
        a.axhline(criteria.min_shared, ls="--", c="C0", lw=1)
        a.axhline(criteria.min_median_top1, ls="--", c="C1", lw=1)
        b.axhline(criteria.max_drift, ls="--", c="grey", lw=1, label="criterion")
    for ax, yl in ((a, "seed agreement"), (b, "median cos(row, its initial row)")):
        ax.set_xscale("log")
        ax.set_xlabel("training tokens (leftmost point: initialisation)")
        ax.set_ylabel(yl)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_title("two seeds, same data and order")
    b.set_title("drift from initialisation")
    if title:
        fig.suptitle(title)
    return fig
