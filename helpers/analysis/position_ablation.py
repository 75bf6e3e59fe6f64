"""Positional-information ablation (the post's F8/F9): redo the position statistics, the SAE's
per-position reconstruction error and the model's per-position CE with position information
zeroed or shuffled (`helpers.model.residuals` documents what that means for wpe and for RoPE)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.analysis.positions import PositionMSEResult, PositionStatsResult, position_pass
from helpers.checks import check_token_ids, vocab_size_of
from helpers.model.models import spec_of
from helpers.model.residuals import residuals_and_logits
from helpers.sae.metrics import token_ce


@dataclass
class AblationResult:
    stats: dict[int, PositionStatsResult]  # {layer: SAE code statistics by position}
    mse: dict[int, PositionMSEResult]  # {layer: SAE reconstruction error by position}
    ce_pos: np.ndarray  # [T-1] the model's next-token CE by position


@torch.no_grad()
def ablation_study(
    model,
    saes: dict,
    tokens,
    ablations=(None, "zero", "shuffle"),
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict[str | None, AblationResult]:
    """For each ablation: residuals at every SAE's layer and the logits (one pass per batch); the
    residuals are encoded by that layer's SAE into position statistics, the logits give the
    model's CE per position.

    `saes`: {layer: sae}. `tokens`: [n, T] windows. Memory: n * T * d floats per layer."""
    tokens = check_token_ids(tokens, vocab_size_of(model), "tokens", spec_of(model).name)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n, T] windows, got shape {tuple(tokens.shape)}")
    layers = sorted(saes)
    T = tokens.shape[1]
    out = {}
    for ablation in ablations:
        acts = {layer: [] for layer in layers}
        ce_sum = torch.zeros(T - 1, dtype=torch.float64)
        for b in tqdm(range(0, len(tokens), batch_size), desc=f"ablation {ablation}", disable=not progress):
            ids = tokens[b : b + batch_size]
            res, logits = residuals_and_logits(model, ids, layers, ablation, seed)  # one pass
            for layer, x in res.items():
                acts[layer].append(x)
            ce_sum += token_ce(logits, ids).sum(0).double()
        stats, mse = {}, {}
        for layer in layers:
            run = position_pass([(None, torch.cat(acts[layer]))], saes[layer], T, progress=False)
            stats[layer], mse[layer] = run.stats, run.mse
        out[ablation] = AblationResult(stats, mse, (ce_sum / len(tokens)).numpy())
    return out


def ablation_curves(
    results: dict[str | None, AblationResult], layer: int
) -> dict[str, dict[str, np.ndarray]]:
    """The per-position curves of `ablation_study` at one SAE layer, by quantity then ablation label
    (None -> "None"): "position_means" [T] mean nonzero code, "density" [T] fraction of nonzero
    (token, latent) pairs, "mse" [T] the SAE's reconstruction MSE, "ce" [T-1] the model's next-token CE."""
    return {
        "position_means": {str(a): r.stats[layer].pos_mean for a, r in results.items()},
        "density": {str(a): r.stats[layer].pos_density for a, r in results.items()},
        "mse": {str(a): r.mse[layer].mse for a, r in results.items()},
        "ce": {str(a): r.ce_pos for a, r in results.items()},
    }


def ablation_summary(results: dict[str | None, AblationResult], layer: int) -> pd.DataFrame:
    """One row per ablation: the model's mean next-token CE (nats) and the SAE's mean reconstruction
    MSE at `layer` averaged over positions >= 1 (the SAE never trained on position 0)."""
    return pd.DataFrame(
        {
            str(a): {"model_ce": float(r.ce_pos.mean()), "sae_mse": float(np.nanmean(r.mse[layer].mse[1:]))}
            for a, r in results.items()
        }
    ).T.rename_axis("ablation")
