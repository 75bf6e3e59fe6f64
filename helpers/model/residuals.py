"""The residual stream through nnsight: read resid_pre at several layers, or splice a replacement in.

What: `residuals` (resid_pre of the asked layers, one forward pass stopped after the deepest),
`residuals_and_logits`, `logits_with_resid` (the logits with one layer's resid_pre replaced, for
CE-loss evaluation) and `model_input_ids` (token ids checked against the model's vocabulary).
Single-latent interventions (steer, clamp, ablate, generate) build on these in
helpers.analysis.interventions.

resid_pre of layer L (SAELens `blocks.L.hook_resid_pre`, the reference post's convention) is
the input of decoder block L, which equals transformers' `hidden_states[L]`. Several layers come
from ONE forward pass, and `tracer.stop()` ends that pass right after the deepest one, so the
blocks above it and the unembedding never run (~4-5x faster at layer 6 of 30).
"""

from __future__ import annotations

import nnsight
import torch

from helpers.checks import check_token_ids, vocab_size_of
from helpers.model.models import ModelSpec, blocks, check_layers, spec_of
from helpers.precision import autocast, resolve_precision


def model_input_ids(model, input_ids, spec: ModelSpec | None = None) -> torch.Tensor:
    """input_ids as LongTensor [B, T] with ids inside the model's vocabulary (one-line errors)."""
    spec = spec or spec_of(model)
    ids = check_token_ids(input_ids, vocab_size_of(model), "input_ids", spec.name)
    if ids.ndim != 2:
        raise ValueError(
            f"input_ids must be [batch, seq], got shape {tuple(ids.shape)}; add a batch axis with ids[None]"
        )
    return ids


def context_ids(model, input_ids, spec: ModelSpec) -> torch.Tensor:
    """`model_input_ids`, and no longer than the model's context (one line naming the fix otherwise)."""
    ids = model_input_ids(model, input_ids, spec)
    if ids.shape[1] > spec.n_ctx:
        raise ValueError(
            f"sequence length {ids.shape[1]} is beyond {spec.name}'s context "
            f"of {spec.n_ctx} positions; use seq_len <= {spec.n_ctx}"
        )
    return ids


POSITION_ABLATIONS = (None, "zero", "shuffle")


def _ablation_kwargs(model, input_ids: torch.Tensor, ablation: str | None, seed: int, spec: ModelSpec):
    """Forward kwargs and an in-trace edit that remove or scramble position information.

    Learned position embeddings (GPT-2's `wpe`): "zero" zeroes the wpe output, "shuffle" gives
    each position another position's embedding (one seeded permutation for the batch). RoPE models
    have no embedding to ablate; the closest honest analogue edits `position_ids`, which set the
    rotations: "zero" rotates every query/key alike (attention loses relative position),
    "shuffle" rotates each by a wrong, permuted position. In both cases the causal mask still
    leaks position (a token sees how many tokens precede it)."""
    if ablation not in POSITION_ABLATIONS:
        raise ValueError(f"unknown position ablation {ablation!r}; use one of {POSITION_ABLATIONS}")
    if ablation is None:
        return {}, None
    T = input_ids.shape[1]
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed))
    if spec.learned_positions:

        def edit():
            out = model.transformer.wpe.output
            model.transformer.wpe.output = torch.zeros_like(out) if ablation == "zero" else out[:, perm]

        return {}, edit
    pos = torch.zeros(T, dtype=torch.long) if ablation == "zero" else perm
    return {"position_ids": pos.expand(input_ids.shape[0], T)}, None


@torch.no_grad()
def residuals(
    model,
    input_ids: torch.Tensor,
    layers,
    position_ablation: str | None = None,
    seed: int = 0,
    precision: str = "float32",
) -> dict[int, torch.Tensor]:
    """{layer: resid_pre [B, T, d]} for LongTensor input_ids [B, T], all layers from one pass.

    `position_ablation` ("zero" | "shuffle") removes or scrambles position information first
    (see `_ablation_kwargs`). `precision` "bfloat16" (or "auto" where bf16 is measured faster) runs the
    model's matmuls under bf16 autocast; the residual stream, norms and the returned tensors
    stay fp32 (`benchmarks/bench_bf16.py` measures the residuals' error against fp32); the first
    `FP32_PREFIX` positions are then recomputed in fp32 (`_fp32_prefix`). The model's ModelSpec is
    read once (`spec_of`, resolved when the model was loaded) and passed along."""
    spec = spec_of(model)
    out = _trace_residuals(
        model, input_ids, layers, position_ablation, seed, logits=False, precision=precision, spec=spec
    )[0]
    device = next(model._module.parameters()).device
    if resolve_precision(precision, device, note=False) != torch.float32 and position_ablation is None:
        _fp32_prefix(model, input_ids, layers, out, spec)
    return out


FP32_PREFIX = 4


def _fp32_prefix(model, input_ids, layers, out: dict[int, torch.Tensor], spec: ModelSpec) -> None:
    """Overwrite positions [0, FP32_PREFIX) of a bf16 pass's residuals `out` with an fp32 pass over
    those positions alone (causal attention: they do not depend on later tokens), ~1% of the cost.

    Why: a token near the start attends over a handful of tokens, so its bf16 rounding is not
    averaged away, and the first token after BOS can turn into a second attention sink whose
    norm is ill-conditioned: on SmolLM2 over Python docs, "<BOS>," grew to norm 1,792 at block 11
    in fp32 but 1,040 in bf16, one token that alone lifted the aggregate relative error of the
    bench's 24 windows from 0.79% to 2.87% (it stays under the 10x-median massive cut at layers
    20-24, where the bulk's norm has grown)."""
    ids = model_input_ids(model, input_ids, spec)[:, :FP32_PREFIX]
    prefix = _trace_residuals(model, ids, layers, None, 0, logits=False, precision="float32", spec=spec)[0]
    for layer, x in out.items():
        x[:, : ids.shape[1]] = prefix[layer]


@torch.no_grad()
def residuals_and_logits(
    model, input_ids: torch.Tensor, layers, position_ablation: str | None = None, seed: int = 0
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """`residuals` plus the logits [B, T, vocab], from ONE full forward pass."""
    return _trace_residuals(model, input_ids, layers, position_ablation, seed, logits=True)


def _trace_residuals(
    model,
    input_ids,
    layers,
    position_ablation,
    seed,
    logits: bool,
    precision: str = "float32",
    spec: ModelSpec | None = None,
):
    spec = spec or spec_of(model)
    layers = check_layers(spec, layers)
    input_ids = context_ids(model, input_ids, spec)
    envoys = blocks(model, spec)
    kwargs, edit = _ablation_kwargs(model, input_ids, position_ablation, seed, spec)
    out = None
    device = next(model._module.parameters()).device  # the ids go where the model is (a GPU, or the CPU)
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    remote = getattr(model, "_sae_lab_remote", False)  # helpers.model.models: trace on NDIF
    with (
        autocast(resolve_precision(precision, device), device),
        model.trace(input_ids.long().to(device), remote=remote, **kwargs) as tracer,
    ):
        if edit is not None:
            edit()
        # Access in forward order: nnsight 0.8 serves module values as the pass reaches them.
        saved = nnsight.save([envoys[layer].input for layer in layers])
        if logits:
            out = nnsight.save(model.output.logits)
        else:
            tracer.stop()  # nothing above the deepest layer is needed
    return {layer: x.float() for layer, x in zip(layers, saved)}, out


@torch.no_grad()
def logits_with_resid(
    model,
    input_ids: torch.Tensor,
    layer: int,
    replace=None,
    keep_positions=(),
    position_ablation: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Logits [B, T, vocab] with resid_pre of `layer` replaced by `replace(x)` (x: [B, T, d]).

    `replace=None` gives the clean logits. Positions in `keep_positions` keep their original
    residual (e.g. (0,): the BOS/attention-sink token an SAE trained without it cannot
    reconstruct); it may also be a bool mask [B, T] (e.g. `input_ids == bos_id`, every
    separator token). Used for the SAE's downstream CE loss and for zero ablation."""
    spec = spec_of(model)
    check_layers(spec, [layer])
    input_ids = model_input_ids(model, input_ids, spec)
    kwargs, edit = _ablation_kwargs(model, input_ids, position_ablation, seed, spec)
    if replace is None and edit is None:
        return model._module(input_ids.long(), **kwargs).logits
    envoy = blocks(model, spec)[layer]
    if isinstance(keep_positions, torch.Tensor):
        keep = keep_positions.bool()
        if keep.shape != input_ids.shape:
            raise ValueError(f"keep mask {tuple(keep.shape)} must match input_ids {tuple(input_ids.shape)}")
    else:
        keep = torch.zeros(input_ids.shape, dtype=torch.bool)
        keep[:, list(keep_positions)] = True
    if replace is None:
        with model.trace(input_ids.long(), **kwargs):
            edit()
            logits = nnsight.save(model.output.logits)
        return logits
    with model.trace(input_ids.long(), **kwargs):
        if edit is not None:
            edit()
        x = envoy.input
        new = torch.where(keep[..., None], x, replace(x).to(x.dtype))
        envoy.input = new
        logits = nnsight.save(model.output.logits)
    return logits
