"""Downstream evaluation of an SAE: splice its reconstruction into the model, measure the loss.

For token windows [n, T] from a store, three forward passes per batch (clean, SAE-spliced,
zero-ablated at the SAE's layer) give per-token next-token cross-entropies and the KL of the
spliced logits to the clean ones. Averages and per-position curves come out together; the
formulas are in `helpers.sae.metrics` (`token_ce`, `token_kl`, `ce_loss_recovered`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.checks import check_token_ids, vocab_size_of
from helpers.model.models import spec_of
from helpers.model.residuals import residuals_and_logits
from helpers.model.splice import logits_from
from helpers.sae.metrics import ReconstructionStats, ce_loss_recovered, token_ce, token_kl


@dataclass
class DownstreamResult:
    """Averages over all predicted tokens, and per-position curves [T-1] (index t = the loss of
    predicting token t+1 from positions <= t)."""

    ce_clean: float
    ce_sae: float
    ce_zero: float
    delta_ce: float  # ce_sae - ce_clean (nats)
    ce_recovered: float  # (ce_zero - ce_sae) / (ce_zero - ce_clean)
    kl: float  # KL(clean || spliced), nats per token
    ce_clean_pos: np.ndarray
    ce_sae_pos: np.ndarray
    ce_zero_pos: np.ndarray
    kl_pos: np.ndarray
    n_tokens: int

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}


@torch.no_grad()
def downstream_eval(
    model, saes: dict, tokens, batch_size: int = 4, keep_positions=(0,), keep_tokens=(), progress: bool = True
) -> dict[str, DownstreamResult]:
    """CE / KL with each SAE's reconstruction spliced in at resid_pre of its layer.

    `saes`: {name: (sae, layer)}. `tokens`: [n, T] token windows (held-out ones, e.g. from
    `store.split()`). The clean pass runs once per batch and the zero-ablation once per layer, so
    n SAEs cost n + 1 + n_layers forward passes. `keep_positions`: positions that keep their
    clean residual in the SAE and zero-ablation runs (default: the BOS attention sink, which
    our SAEs are trained without); `keep_tokens`: token ids that keep it wherever they occur
    (e.g. the BOS id, which also separates documents mid-sequence). The clean pass keeps each
    layer's residual, and every other pass runs only from its layer up (`helpers.model.splice`)."""
    tokens = check_token_ids(tokens, vocab_size_of(model), "tokens", spec_of(model).name)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n, T] windows, got shape {tuple(tokens.shape)}")
    T = tokens.shape[1]
    layers = sorted({layer for _, layer in saes.values()})
    zeros = lambda: torch.zeros(T - 1, dtype=torch.float64)  # noqa: E731
    clean_sum, zero_sum = zeros(), {layer: zeros() for layer in layers}
    sae_sum = {name: zeros() for name in saes}
    kl_sum = {name: zeros() for name in saes}
    n_rows = 0
    bar = tqdm(
        total=len(tokens) * (1 + len(layers) + len(saes)),
        unit="seq",
        desc="downstream CE",
        disable=not progress,
    )
    for b in range(0, len(tokens), batch_size):
        ids = tokens[b : b + batch_size]
        keep = torch.isin(ids, torch.as_tensor(list(keep_tokens), dtype=torch.long))
        keep[:, list(keep_positions)] = True
        keep = keep[..., None]
        resid, clean = residuals_and_logits(model, ids, layers)
        clean_sum += token_ce(clean, ids).sum(0).double()
        for layer in layers:
            zero = logits_from(model, ids, layer, torch.where(keep, resid[layer], 0.0))
            zero_sum[layer] += token_ce(zero, ids).sum(0).double()
        for name, (sae, layer) in saes.items():
            x = resid[layer]
            x_hat = sae.decode(sae.encode(x)).to(x.dtype)
            spliced = logits_from(model, ids, layer, torch.where(keep, x, x_hat))
            sae_sum[name] += token_ce(spliced, ids).sum(0).double()
            kl_sum[name] += token_kl(clean, spliced).sum(0).double()
        n_rows += len(ids)
        bar.update(len(ids) * (1 + len(layers) + len(saes)))
    bar.close()
    ce_clean_pos = (clean_sum / n_rows).numpy()
    out = {}
    for name, (_, layer) in saes.items():
        ce_sae_pos, ce_zero_pos = (sae_sum[name] / n_rows).numpy(), (zero_sum[layer] / n_rows).numpy()
        kl_pos = (kl_sum[name] / n_rows).numpy()
        c, s_, z = float(ce_clean_pos.mean()), float(ce_sae_pos.mean()), float(ce_zero_pos.mean())
        out[name] = DownstreamResult(
            ce_clean=c,
            ce_sae=s_,
            ce_zero=z,
            delta_ce=s_ - c,
            ce_recovered=ce_loss_recovered(c, s_, z),
            kl=float(kl_pos.mean()),
            ce_clean_pos=ce_clean_pos,
            ce_sae_pos=ce_sae_pos,
            ce_zero_pos=ce_zero_pos,
            kl_pos=kl_pos,
            n_tokens=n_rows * (T - 1),
        )
    return out


@torch.no_grad()
def reconstruction_eval(
    sae,
    store,
    layer: int,
    shards,
    exclude_positions=(0,),
    exclude_tokens=(),
    batch_size: int = 4096,
    max_norm: float | None = None,
) -> dict[str, float]:
    """Reconstruction metrics (FVU, explained variance, L0, cosine, relative bias, median
    per-token relative error, dead and dense fractions) of `sae` on the given store shards (the
    held-out ones), over the tokens left after `exclude_positions`, `exclude_tokens` and
    `max_norm` (massive tokens, helpers.data.massive); "n_tokens" says how many that was."""
    batches = store.batches(
        layer,
        batch_size,
        shuffle=False,
        exclude_positions=exclude_positions,
        shards=shards,
        exclude_tokens=exclude_tokens,
        max_norm=max_norm,
    )
    return sae_stats(sae, batches)


@torch.no_grad()
def sae_stats(sae, batches) -> dict[str, float]:
    """`ReconstructionStats` of `sae` over an iterable of [n, d] activation batches."""
    stats = ReconstructionStats()
    for x in batches:
        x = x.float()
        codes = sae.encode(x)
        stats.update(x, sae.decode(codes), codes)
    return stats.result()
