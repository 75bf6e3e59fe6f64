"""The position statistics of every layer (notebook 03): one streaming pass per layer, and the per-layer
numbers read off them.

`layer_passes` runs `positions.position_pass` once per layer over the whole store (every shard, every
position: position statistics are not a held-out metric) and writes each layer's statistics where
notebook 05 reads them. Every other function takes `{layer: result}` (or `{label: result}`) and returns
one number per layer as a pandas Series / DataFrame indexed by that key, so a notebook shows it as a
table. "Mean" is always the mean of NONZERO activations, as in the reference post.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers import paths
from helpers.analysis import positions
from helpers.analysis.positions import (
    PositionMSEResult,
    PositionPass,
    PositionStatsResult,
    counts_below,
    feature_quantiles,
    position_curve,
)
from helpers.checks import InputError
from helpers.training import experiments


def layer_passes(store, saes: dict, profile, save: bool = True) -> dict[int, PositionPass]:
    """{layer: `position_pass` of that layer's SAE over every sequence of `store`}, with the profile's
    massive-token cut (`experiments.max_norm`) giving each pass its `typical` statistics too. With
    `save`, each layer's statistics go to `paths.position_stats_path(profile.name, layer)` (notebook 05
    reads them)."""
    out = {}
    for layer, sae in saes.items():
        cut = experiments.max_norm(store, layer, profile)
        out[layer] = layer_pass(store, layer, sae, cut)
        if save:
            out[layer].stats.save(paths.position_stats_path(profile.name, layer))
    return out


def layer_pass(
    store, layer: int, sae, max_norm: float | None = None, desc: str | None = None
) -> PositionPass:
    """`positions.position_pass` of `sae` over every sequence of `store` at `layer` (T = store.seq_len)."""
    return positions.position_pass(
        store.sequences(layer), sae, store.seq_len, desc=desc or f"L{layer}", max_norm=max_norm
    )


def late_over_early(results: dict[int, PositionStatsResult], parts: int = 10) -> pd.Series:
    """Per layer: the per-position mean averaged over the last 1/parts of the T positions, over the same
    average for the first 1/parts (position 0 left out; n = max(1, T // parts) positions each). 1 means
    no drift with position; below 1, activations shrink along the sequence."""

    def ratio(r: PositionStatsResult) -> float:
        y = position_curve(r, "mean", skip_first=True)[1]  # [T - 1]
        n = max(1, r.n_positions // parts)
        return float(np.nanmean(y[-n:]) / np.nanmean(y[:n]))

    return _by_key(results, ratio, "late_over_early")


def max_position_std(results: dict[int, PositionStatsResult]) -> pd.Series:
    """Per layer: the largest per-position std of nonzero activations (position 0 left out)."""
    return _by_key(
        results, lambda r: float(np.nanmax(position_curve(r, "std", skip_first=True)[1])), "max_std"
    )


def massive_std_table(
    results: dict[int, PositionStatsResult], typical: dict[int, PositionStatsResult]
) -> pd.DataFrame:
    """Per layer: the largest per-position std with every token and with massive tokens left out, and
    the tokens each counted (`position_pass`'s `stats` and `typical`)."""
    return pd.DataFrame(
        {
            "max_std": max_position_std(results),
            "max_std_no_massive": max_position_std(typical),
            "tokens": _by_key(results, lambda r: int(r.tokens.sum())),
            "tokens_kept": _by_key(typical, lambda r: int(r.tokens.sum())),
        }
    )


def density_vs_mean(results: dict) -> pd.DataFrame:
    """Per key: the range of the per-position density (fraction of (token, latent) pairs that are
    nonzero) over positions >= 1, and its Pearson correlation with the per-position mean (NaN when the
    density is constant, as for a TopK SAE that fires exactly k latents on every token)."""
    rows = {}
    for key, r in results.items():
        m, d = (np.asarray(position_curve(r, s, skip_first=True)[1]) for s in ("mean", "density"))
        corr = float(np.corrcoef(m, d)[0, 1]) if d.std() > 0 else float("nan")
        rows[key] = {"density_min": float(d.min()), "density_max": float(d.max()), "corr_with_mean": corr}
    return pd.DataFrame.from_dict(rows, orient="index")


def largest_activation(results: dict[int, PositionStatsResult], include_first: bool) -> pd.Series:
    """Per layer: the largest nonzero activation of any latent (the 1.0 quantile of its histogram, i.e.
    the upper edge of the bin holding its maximum), with or without position 0."""
    return _by_key(
        results,
        lambda r: float(np.nanmax(feature_quantiles(r, (1.0,), include_first=include_first))),
        "with_first" if include_first else "without_first",
    )


def features_below(
    results: dict[int, PositionStatsResult], threshold: float, include_first: bool = False
) -> pd.Series:
    """Per layer: how many latents have a mean nonzero activation strictly below `threshold`."""
    return _by_key(
        results,
        lambda r: int(counts_below(r.feature_stats(include_first)["mean"].to_numpy(), [threshold])[0]),
        f"mean_below_{threshold:g}",
    )


def first_position_error(mse: dict[int, PositionMSEResult]) -> pd.Series:
    """Per layer: the SAE's MSE at position 0 over its mean MSE at positions >= 1."""
    return _by_key(mse, lambda m: float(m.mse[0] / np.nanmean(m.mse[1:])), "mse_first_over_rest")


def delta_ce_by_position(sae_root, runs: dict) -> dict[int, np.ndarray]:
    """{layer: [T-1] CE with the SAE's reconstruction spliced in minus the clean CE, per position}, read
    from notebook 02's held-out evaluation (`sae_root`/downstream.pt: {run name: DownstreamResult});
    `runs` = {layer: SAERun}."""
    path = Path(sae_root) / "downstream.pt"
    if not path.is_file():
        raise InputError(f"{path} not found; run notebook 02 (its held-out evaluation writes it)")
    downstream = torch.load(path, weights_only=False)
    missing = [run.name for run in runs.values() if run.name not in downstream]
    if missing:
        raise InputError(f"{path} has no evaluation of {missing}; re-run notebook 02")
    return {
        layer: np.asarray(downstream[run.name].ce_sae_pos - downstream[run.name].ce_clean_pos)
        for layer, run in runs.items()
    }


def _by_key(results: dict, fn, name: str | None = None) -> pd.Series:
    """pd.Series {key: fn(value)} (index named 'layer')."""
    return pd.Series({k: fn(v) for k, v in results.items()}, name=name).rename_axis("layer")
