"""Acausal crosscoders across layers (Anthropic, "Sparse Crosscoders for Cross-Layer Features and
Model Diffing", 2024): one dictionary that reads and reconstructs several resid_pre layers at once.

What: the input is the layers' activations side by side, x = [x^1 | ... | x^L] [B, L*d] (d_in = L*d,
cfg.n_layers = L, metadata["layers"] names them); every latent j has one encoder column over all
layers and one decoder block W_dec_j^l [d] per layer (`decoder_blocks`: W_dec viewed as [m, L, d]).
- "crosscoder": f = ReLU((x - b_dec) W_enc + b_enc) and
      loss = sum_l ||x^l - x_hat^l||^2 + l1 * sum_j f_j sum_l ||W_dec_j^l||,
  the paper's penalty: a latent pays for every layer it writes to, so it writes only where it must.
  Free decoder norms (init 0.1 per row, W_enc = W_dec^T); the fused ReLU step with block norms
  (helpers.sae.relu.decoder_norms).
- "batchtopk_crosscoder": the B*k largest scores f_j * sum_l ||W_dec_j^l|| of the batch (the
  BatchTopK crosscoder of Minder et al. 2025, arXiv 2504.02922), decoder rows at unit norm over all
  layers, AuxK; inference keeps f_j where its score exceeds the calibrated threshold (as BatchTopK).
  The sparse TopK step trains it. Nothing in its loss asks a latent to write few layers: on planted
  data (tests/test_crosscoder.py) it found 9 of 12 one-layer features at their layer alone and
  merged 3 with others (largest share 0.6-0.7), where the L1 crosscoder found all 12 alone.
Per-layer input normalisation, as the reference implementations do: while training, layer l is
scaled by s_l so that its mean norm is sqrt(d). The weights stay in that space; the scales are the
buffer `layer_scale` [L], so a saved crosscoder takes raw activations (encode scales its input,
decode unscales its output) and the decoder blocks compare across layers as trained.
Format (helpers.sae.save_sae / load_sae): cfg.json (architecture, d_in = L*d, d_sae, n_layers, k,
metadata.layers, metadata.hook_names) + sae_weights.safetensors (W_enc [L*d, m], W_dec [m, L*d],
b_enc [m], b_dec [L*d], layer_scale [L]; batchtopk_crosscoder adds topk_threshold []). SAELens has
no crosscoder class, so SAELens cannot load these; everything here can.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from helpers.sae.base import SAE, SAEError, register
from helpers.sae.batchtopk import BatchTopKSAE
from helpers.sae.relu import ReluSAE, decoder_norms


class _LayerBlocks(SAE):
    """What both crosscoders share: the per-layer input scale and the decoder's layer blocks."""

    def _init_extra(self, dtype: torch.dtype, device: torch.device) -> None:
        super()._init_extra(dtype, device)
        if self.cfg.n_layers < 2:
            raise SAEError(
                f"a {self.architecture} reads >= 2 layers; got n_layers={self.cfg.n_layers} "
                "(set TrainConfig.layers, or use a one-layer architecture)"
            )
        self.register_buffer("layer_scale", torch.ones(self.cfg.n_layers, dtype=dtype, device=device))

    @property
    def d_layer(self) -> int:
        return self.cfg.d_in // self.cfg.n_layers

    def _per_layer(self, x: Tensor, op) -> Tensor:
        """x [..., L*d] with block l combined with layer_scale[l] by `op` (mul or div)."""
        L, d = self.cfg.n_layers, self.d_layer
        return op(x.unflatten(-1, (L, d)), self.layer_scale.to(x.dtype)[:, None]).flatten(-2)

    def encode_flat(self, x: Tensor) -> Tensor:
        return super().encode_flat(self._per_layer(x, torch.mul))

    def decode(self, codes: Tensor) -> Tensor:
        return self._per_layer(super().decode(codes), torch.div)

    def decoder_blocks(self) -> Tensor:
        """W_dec as [d_sae, n_layers, d]: latent j's decoder direction at each layer (training space)."""
        return self.W_dec.detach().view(self.cfg.d_sae, self.cfg.n_layers, self.d_layer)

    def layer_norms(self) -> Tensor:
        """[d_sae, n_layers] decoder-block norms ||W_dec_j^l||."""
        return self.decoder_blocks().norm(dim=-1)

    @torch.no_grad()
    def fold_norm_scale(self, s) -> SAE:
        """A copy that takes raw activations when self was trained on layer l scaled by s[l] (a
        scalar scales every layer alike): the scales go to `layer_scale`, the weights stay."""
        s = torch.as_tensor(s, dtype=self.layer_scale.dtype).reshape(-1).expand(self.cfg.n_layers)
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise SAEError(f"layer scales must be positive and finite, got {s.tolist()}")
        out = copy.deepcopy(self)
        out.layer_scale.copy_(s)
        return out


@register
class CrosscoderSAE(_LayerBlocks, ReluSAE):
    """ReLU crosscoder; l1 (ReluOptions.l1) weighs sum_l ||W_dec_j^l||."""

    architecture = "crosscoder"
    extra_tensors = ("layer_scale",)


@register
class BatchTopKCrosscoderSAE(_LayerBlocks, BatchTopKSAE):
    """BatchTopK crosscoder: the batch's B*k largest f_j * sum_l ||W_dec_j^l||."""

    architecture = "batchtopk_crosscoder"
    extra_tensors = ("topk_threshold", "layer_scale")

    def score_weights(self) -> Tensor:
        return decoder_norms(self.W_dec.detach(), self.cfg.n_layers)[0]


def layer_shares(sae: _LayerBlocks) -> Tensor:
    """[d_sae, n_layers]: each latent's share of its decoder norm at each layer,
    ||W_dec_j^l|| / sum_l' ||W_dec_j^l'|| (rows sum to 1)."""
    n = sae.layer_norms()
    return n / n.sum(1, keepdim=True).clamp_min(1e-12)
