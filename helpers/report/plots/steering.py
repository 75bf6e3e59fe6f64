"""Figures of notebook 06: steering curves, ablation effects, and SAE vs baseline dictionaries."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def plot_steering_curves(curves: Mapping[str, Mapping[str, object]]) -> Figure:
    """curves: {label: {"alphas", "lens_lift", "effect_lift", "kl"}} (arrays over alphas).
    Left/middle: how many times more probable the target tokens became (log y); right: the price,
    KL to the clean next-token distribution."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    panels = [
        ("lens_lift", "logit-lens tokens of W_dec[f]\n(direct path)", True),
        ("effect_lift", "tokens steering promotes\n(chosen on other text)", True),
        ("kl", "KL(clean || steered), nats", False),
    ]
    for ax, (key, title, log) in zip(axes, panels):
        for label, c in curves.items():
            ax.plot(c["alphas"], c[key], marker="o", label=label)
        ax.set_xscale("symlog", linthresh=1)
        alphas = next(iter(curves.values()))["alphas"]
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.set_xlabel("alpha (x the feature's typical activation)")
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
            ax.axhline(1, color="grey", lw=0.8, ls=":")
            ax.set_ylabel("target probability / at alpha 0")
        else:
            ax.set_ylabel("nats per token")
    axes[-1].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "Steering: adding alpha x typical activation x W_dec[f] to resid_pre at every position >= 1",
        fontsize=11,
    )
    return fig


def plot_ablation_effects(effects: Mapping[str, object]) -> Figure:
    """effects: {label: AblationEffect}. Mean change of next-token CE where the latent fired on the
    current token vs elsewhere (later positions see the edit through attention)."""
    labels = list(effects)
    fired = [effects[k].mean_where(True) for k in labels]
    other = [effects[k].mean_where(False) for k in labels]
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 3, 3.6), constrained_layout=True)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, fired, 0.4, label="where it fired")
    ax.bar(x + 0.2, other, 0.4, label="elsewhere in the same text")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("mean change of next-token CE (nats)")
    ax.set_title("Zero-ablating one latent (SAE error term kept)", fontsize=11)
    ax.legend(fontsize=8)
    return fig


def plot_baselines(table, concentration: Mapping[str, object], k: int) -> Figure:
    """Left: FVU at k terms per token (held-out). Right: the proxy's distribution per dictionary
    (share of a direction's top-N tokens that are its most common token), as an ECDF."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.9), constrained_layout=True)
    names = list(table.index)
    a.bar(names, table["fvu"], color=["C3"] + ["C0"] * (len(names) - 1))
    for i, v in enumerate(table["fvu"]):
        a.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    a.set_ylabel("FVU (held-out, massive tokens excluded)")
    a.set_title(f"Reconstruction keeping {k} terms per token", fontsize=10)
    palette = ["C3", "C0", "C1", "C2", "C4", "C5", "C6"]  # the SAE in red, as on the left
    for i, name in enumerate(names):
        s = np.sort(concentration[name].share)
        if len(s):
            b.step(
                s,
                np.arange(1, len(s) + 1) / len(s),
                where="post",
                label=name,
                color=palette[i % len(palette)],
                lw=2 if i == 0 else 1.2,
            )
    b.set_xlabel("share of the top-20 activating tokens that are the same token")
    b.set_ylabel("fraction of directions (ends) at or below")
    b.set_title("Interpretability proxy (token concentration), not a judge", fontsize=10)
    b.legend(fontsize=8)
    return fig


def plot_ablation_variants(effects: Mapping[str, Mapping[str, object]]) -> Figure:
    """effects: {feature label: {"zero" | "mean" | "resample": AblationEffect}}. Mean change of
    next-token CE where the latent fired, per ablation, feature by feature (left), and the
    spill-over at the other positions (right)."""
    labels = list(effects)
    modes = list(next(iter(effects.values())))
    fig, axes = plt.subplots(
        1, 2, figsize=(2.0 * len(labels) + 5, 3.8), constrained_layout=True, sharey=False
    )
    x = np.arange(len(labels))
    w = 0.8 / len(modes)
    for ax, fired, title in zip(axes, (True, False), ("where it fired", "elsewhere in the same text")):
        for i, m in enumerate(modes):
            ax.bar(
                x + (i - (len(modes) - 1) / 2) * w,
                [effects[k][m].mean_where(fired) for k in labels],
                w,
                label=m,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, labels, fontsize=8, rotation=20, ha="right")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mean change of next-token CE (nats)")
    axes[0].legend(title="ablation", fontsize=8)
    fig.suptitle(
        "Zero, mean and resample ablation of one latent (applied where it fires, SAE error kept)", fontsize=11
    )
    return fig


def plot_caa_vs_sae(curves: Mapping[str, object], target: str, kl_marker: float | None = None) -> Figure:
    """curves: {label: SteeringCurve} steering the same targets. Lift of the targets against the KL
    paid (left) and KL against alpha (right): the cheaper direction sits higher at the same KL."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.9), constrained_layout=True)
    for label, c in curves.items():
        a.plot(c.kl, c.lift(target), marker="o", label=label)
        b.plot(c.alphas, c.kl, marker="o", label=label)
    if kl_marker is not None:
        a.axvline(kl_marker, color="grey", ls=":", lw=1)
    a.set(xlabel="KL(clean || steered), nats/token", ylabel="target probability / at alpha 0", yscale="log")
    a.set_title("Promoted tokens against the KL price", fontsize=10)
    b.set(xlabel="alpha (x each direction's own unit)", ylabel="KL, nats/token")
    b.set_title("KL per alpha", fontsize=10)
    a.legend(fontsize=8)
    fig.suptitle(
        "Contrastive activation addition (mean difference) vs the best-matching SAE latent", fontsize=11
    )
    return fig
