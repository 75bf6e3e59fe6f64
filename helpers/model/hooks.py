"""Hook points beyond resid_pre, named as SAELens / TransformerLens name them, read from ONE nnsight pass.

What: `HookPoint(layer, kind)` and `parse_hook("blocks.6.hook_mlp_out")`; `check_hooks` validates hooks
against a model before any pass; `hook_activations(model, input_ids [B, T], hooks)` returns
{name: [B, T, width]} fp32 on the CPU; `hook_width` gives each hook's width (d_model or d_mlp).

Why: SAEs published for SAELens sit on attention / MLP outputs and MLP neurons as well as on the residual
stream, and cross-model comparisons need the same hook read the same way on every architecture.

The hooks of block L (SAELens names), in forward order, and what they read:
- `blocks.L.hook_resid_pre`: the input of decoder block L (== `helpers.model.residuals.residuals`).
- `blocks.L.hook_attn_out`: what the attention sub-block adds to the residual. Llama: `self_attn` output[0];
  GPT-2: `attn` output[0]; Gemma 3: the output of `post_attention_layernorm`, since Gemma3DecoderLayer adds
  the NORMED attention output (`residual + post_attention_layernorm(self_attn(...))`).
- `blocks.L.mlp.hook_post`: the MLP hidden activation [.., d_mlp], the input of the down projection
  (`mlp.down_proj` for Llama / Gemma 3, `mlp.c_proj` for GPT-2).
- `blocks.L.hook_mlp_out`: what the MLP sub-block adds to the residual. Llama / GPT-2: `mlp` output;
  Gemma 3: the output of `post_feedforward_layernorm`.
- `blocks.L.hook_resid_post`: the output of block L (== resid_pre of block L+1).
So resid_pre + attn_out + mlp_out == resid_post on all three (GPT-2's dropouts are identity in eval).
"""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import torch

from helpers.model.models import ModelSpec, blocks, hf_blocks, spec_of
from helpers.model.residuals import FP32_PREFIX, context_ids, model_input_ids
from helpers.precision import autocast, resolve_precision

# Hook kinds (the SAELens suffix after "blocks.L."), in the order a forward pass reaches them.
KINDS = ("hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
MLP_KINDS = ("mlp.hook_post",)  # width d_mlp; the others have width d_model


@dataclass(frozen=True)
class Layout:
    """Where one architecture's hooks live, relative to a decoder block: (module path, output index or
    None for the whole output, "input" or "output")."""

    attn_out: tuple[str, int | None, str]
    mlp_post: tuple[str, int | None, str]
    mlp_out: tuple[str, int | None, str]

    def site(self, kind: str) -> tuple[str, int | None, str]:
        """(sub-module path, index, "input"/"output") that `kind` reads; "" is the block itself."""
        if kind == "hook_resid_pre":
            return "", None, "input"
        if kind == "hook_resid_post":
            return "", None, "output"
        return {"hook_attn_out": self.attn_out, "mlp.hook_post": self.mlp_post, "hook_mlp_out": self.mlp_out}[
            kind
        ]


# transformers `config.model_type` -> layout. The attention modules return (output, weights): index 0.
LAYOUTS: dict[str, Layout] = {
    "llama": Layout(("self_attn", 0, "output"), ("mlp.down_proj", None, "input"), ("mlp", None, "output")),
    "gpt2": Layout(("attn", 0, "output"), ("mlp.c_proj", None, "input"), ("mlp", None, "output")),
    "gemma3_text": Layout(
        ("post_attention_layernorm", None, "output"),
        ("mlp.down_proj", None, "input"),
        ("post_feedforward_layernorm", None, "output"),
    ),
}


@dataclass(frozen=True)
class HookPoint:
    """One hook: decoder block `layer` and a `kind` from KINDS; `.name` is its SAELens string."""

    layer: int
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown hook kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")

    @property
    def name(self) -> str:
        """The SAELens / TransformerLens name, e.g. "blocks.6.hook_resid_pre"."""
        return f"blocks.{self.layer}.{self.kind}"

    @property
    def order(self) -> tuple[int, int]:
        """(layer, kind's rank in the forward pass): sorting by it is forward order."""
        return self.layer, KINDS.index(self.kind)


def parse_hook(name: str | HookPoint) -> HookPoint:
    """The HookPoint of a SAELens name "blocks.L.<kind>" (a HookPoint passes through), so hooks can be
    given as the strings SAELens configs carry; one-line errors list the valid kinds."""
    if isinstance(name, HookPoint):
        return name
    parts = str(name).split(".", 2)
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].lstrip("-").isdigit():
        raise ValueError(
            f"hook name {name!r} is not 'blocks.<layer>.<kind>'; valid kinds: {', '.join(KINDS)} "
            "(e.g. 'blocks.6.hook_resid_pre')"
        )
    if parts[2] not in KINDS:
        raise ValueError(f"hook {name!r} has unknown kind {parts[2]!r}; valid kinds: {', '.join(KINDS)}")
    return HookPoint(int(parts[1]), parts[2])


def _hf(model_or_hf) -> torch.nn.Module:
    """The transformers module of an nnsight model (or the module itself)."""
    return getattr(model_or_hf, "_module", model_or_hf)


def layout_of(model_or_hf) -> Layout:
    """The Layout of a model's architecture (from `config.model_type`), or a one-line error naming the
    supported architectures: module paths differ per family and a wrong guess would read a wrong value."""
    model_type = getattr(getattr(_hf(model_or_hf), "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"hooks beyond resid_pre are not mapped for architecture {model_type!r}; supported: "
            f"{', '.join(sorted(LAYOUTS))} (add its module paths to helpers.model.hooks.LAYOUTS)"
        )
    return LAYOUTS[model_type]


def _submodule(module: torch.nn.Module, path: str):
    """`module.<path>` (dotted, "" is the module itself), or None where a part is missing."""
    for part in filter(None, path.split(".")):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def check_hooks(model, spec: ModelSpec, hooks) -> list[HookPoint]:
    """The hooks as HookPoints, deduplicated and sorted in forward order, after checking against the
    model BEFORE any pass (a bad hook would otherwise fail deep inside a trace): the layer is in range and
    the module each hook reads exists on this architecture."""
    points = sorted({parse_hook(h) for h in hooks}, key=lambda p: p.order)
    if not points:
        raise ValueError("no hooks requested; pass e.g. hooks=['blocks.0.hook_resid_pre']")
    layout = layout_of(model)
    hf_list = hf_blocks(_hf(model), spec)
    for p in points:
        if not 0 <= p.layer < spec.n_layers:
            raise ValueError(
                f"hook {p.name}: layer {p.layer} is out of range for {spec.name}; valid layers are "
                f"0..{spec.n_layers - 1}"
            )
        path = layout.site(p.kind)[0]
        if _submodule(hf_list[p.layer], path) is None:
            raise ValueError(
                f"hook {p.name}: {spec.name} has no module {spec.layers_path}.{p.layer}.{path}; "
                f"its block is {type(hf_list[p.layer]).__name__}, not the layout LAYOUTS maps"
            )
    return points


def hook_width(model_or_hf, spec: ModelSpec, hook: str | HookPoint) -> int:
    """The last-axis width of a hook's activations: d_mlp for `mlp.hook_post` (read off the down
    projection's input features), else d_model; what an SAE on that hook takes as d_in."""
    point = check_hooks(model_or_hf, spec, [hook])[0]
    if point.kind not in MLP_KINDS:
        return spec.d_model
    path = layout_of(model_or_hf).site(point.kind)[0]
    proj = _submodule(hf_blocks(_hf(model_or_hf), spec)[point.layer], path)
    if hasattr(proj, "in_features"):  # nn.Linear: weight [out, in]
        return int(proj.in_features)
    return int(proj.weight.shape[0])  # transformers' Conv1D (GPT-2): weight [in, out]


def _read(block_envoy, layout: Layout, kind: str):
    """The proxy of `kind`'s value in one block's envoy (inside a trace)."""
    path, index, which = layout.site(kind)
    envoy = block_envoy
    for part in filter(None, path.split(".")):
        envoy = getattr(envoy, part)
    value = envoy.input if which == "input" else envoy.output
    return value if index is None else value[index]


@torch.no_grad()
def hook_activations(
    model, input_ids: torch.Tensor, hooks, precision: str = "float32"
) -> dict[str, torch.Tensor]:
    """{SAELens name: activations [B, T, width]} fp32 on the CPU for LongTensor input_ids [B, T].

    All hooks come from ONE nnsight trace: envoys are read in forward order (layer, then resid_pre <
    attn_out < mlp.hook_post < mlp_out < resid_post; nnsight 0.8 serves values as the pass reaches them)
    and `tracer.stop()` ends the pass after the deepest, so the blocks above it never run. `precision`
    works as in `helpers.model.residuals.residuals`: bf16 autocast for the matmuls, then positions
    [0, FP32_PREFIX) recomputed in fp32, so resid_pre equals `residuals(...)` in every precision."""
    spec = spec_of(model)
    out = _trace_hooks(model, input_ids, hooks, precision, spec)
    device = next(_hf(model).parameters()).device
    if resolve_precision(precision, device, note=False) != torch.float32:
        ids = model_input_ids(model, input_ids, spec)[:, :FP32_PREFIX]
        prefix = _trace_hooks(model, ids, hooks, "float32", spec)
        for name, x_btd in out.items():
            x_btd[:, : ids.shape[1]] = prefix[name]
    return out


def _trace_hooks(model, input_ids, hooks, precision: str, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """One trace reading `hooks` (checked, forward order), stopped after the deepest; fp32 CPU tensors."""
    points = check_hooks(model, spec, hooks)
    layout = layout_of(model)
    input_ids = context_ids(model, input_ids, spec)
    envoys = blocks(model, spec)
    device = next(_hf(model).parameters()).device
    remote = getattr(model, "_sae_lab_remote", False)  # helpers.model.models: trace on NDIF
    with (
        autocast(resolve_precision(precision, device), device),
        model.trace(input_ids.long().to(device), remote=remote) as tracer,
    ):
        saved = nnsight.save([_read(envoys[p.layer], layout, p.kind) for p in points])
        tracer.stop()  # nothing above the deepest hook is needed
    return {p.name: x.float().cpu() for p, x in zip(points, saved)}
