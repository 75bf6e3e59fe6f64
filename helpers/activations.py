"""All nnsight access to the model: reading the residual stream and splicing into it.

resid_pre of layer L (SAELens `blocks.L.hook_resid_pre`, the reference post's convention) is
the input of decoder block L, which equals transformers' `hidden_states[L]`. Several layers come
from ONE forward pass, and `tracer.stop()` ends that pass right after the deepest one, so the
blocks above it and the unembedding never run (~4-5x faster at layer 6 of 30).
"""
from __future__ import annotations

import nnsight
import torch

from .models import blocks, check_layers, spec_of


@torch.no_grad()
def residuals(model, input_ids: torch.Tensor, layers) -> dict[int, torch.Tensor]:
    """{layer: resid_pre [B, T, d]} for LongTensor input_ids [B, T], all layers from one pass."""
    spec = spec_of(model)
    layers = check_layers(spec, layers)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > spec.n_ctx:
        raise ValueError(f"sequence length {input_ids.shape[1]} is beyond {spec.name}'s context "
                         f"of {spec.n_ctx} positions; use seq_len <= {spec.n_ctx}")
    envoys = blocks(model)
    with model.trace(input_ids.long()) as tracer:
        # Access in forward order: nnsight 0.8 serves module values as the pass reaches them.
        saved = nnsight.save([envoys[layer].input for layer in layers])
        tracer.stop()
    return dict(zip(layers, saved))
