"""Many spliced forward passes over one batch, each run from its own layer up.

A downstream evaluation splices a dozen SAEs into the same tokens at a few layers. Through
`residuals.logits_with_resid` each splice is a full forward pass, although the blocks below the
spliced layer see exactly the clean pass's inputs. So: one clean pass keeps every layer's
resid_pre (`residuals.residuals_and_logits`), and then
- `logits_from(model, ids, layer, x)`: the logits with resid_pre of `layer` set to x [B, T, d]. The
  blocks below `layer` are skipped (each returns its input unchanged, and a pre-hook hands block
  `layer` the given x), so a splice at layer L costs the blocks from L up and the unembedding. The
  model's own forward still runs around them: embeddings, masks, rotary tables, final norm and
  head are the model's, whatever its architecture.

The results equal `logits_with_resid` (tests/test_splice.py, Llama and GPT-2 layouts): the same
blocks run on the same inputs.
"""

from __future__ import annotations

import torch

from helpers.model.models import check_layers, hf_blocks, spec_of
from helpers.model.residuals import model_input_ids


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


@torch.no_grad()
def logits_from(model, input_ids, layer: int, x: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, vocab] with resid_pre of `layer` set to `x` [B, T, d], running only the blocks
    from `layer` up (see the module docstring)."""
    spec = spec_of(model)
    check_layers(spec, [layer])
    ids = model_input_ids(model, input_ids, spec).long()
    if x.shape != (*ids.shape, spec.d_model):
        raise ValueError(f"x must be [B, T, d] = {(*ids.shape, spec.d_model)}, got {tuple(x.shape)}")
    hf = model._module
    blocks = hf_blocks(hf, spec)

    def put(module, args, kwargs):
        if args:
            return (x.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x.to(kwargs["hidden_states"].dtype)}

    skipped = [(b, b.__dict__.get("forward")) for b in list(blocks)[:layer]]
    handle = blocks[layer].register_forward_pre_hook(put, with_kwargs=True)
    try:
        for b, _ in skipped:
            b.forward = _identity
        return hf(ids, use_cache=False).logits
    finally:
        handle.remove()
        for b, own in skipped:
            if own is None:
                del b.forward
            else:
                b.forward = own
