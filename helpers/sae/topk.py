"""TopK SAE (Gao et al. 2024): codes = ReLU of the k largest pre-activations per token.

Trained with AuxK (k_aux dead latents reconstruct the residual, normalised MSE as in Gao et al.
App. A.2, coefficient 1/32). `loss` is the plain autograd form; `fast_loss` the sparse fused step of
`helpers.sae.fast.step`: after the dense encoder GEMM and the top-k selection everything touches
only the selected (token, latent) pairs (tests/test_sae.py proves the two equal).
On disk: SAELens "topk" (k, rescale_acts_by_decoder_norm false); a SAELens file saved with
rescale_acts_by_decoder_norm true is folded back to unit-norm rows on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.sae.base import SAE, register
from helpers.sae.fast.ops import row_topk, topk_selection
from helpers.sae.fast.step import dense_step, sparse_step
from helpers.sae.peer_formats import linear_layout
from helpers.sae.step_types import ArchOptions, AuxK, OptionsError, StepState, TrainOutput


@dataclass
class TopKOptions(ArchOptions):
    """TopK training options (shared by BatchTopK)."""

    auxk_coef: float = 1 / 32
    """AuxK loss coefficient (Gao et al. App. A.2); 0 turns AuxK off."""
    k_aux: int | None = None
    """Dead latents per token in AuxK; None = d_in // 2."""

    def check(self) -> None:
        if self.auxk_coef < 0:
            raise OptionsError(f"auxk_coef must be >= 0, got {self.auxk_coef}")


def auxk_of(sae: SAE, options: TopKOptions) -> AuxK:
    """The AuxK settings of a TopK-style SAE: k_aux defaults to d_in // 2."""
    return AuxK(options.auxk_coef, options.k_aux if options.k_aux is not None else sae.cfg.d_in // 2)


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """Dense codes: ReLU of the k largest entries per row, zeros elsewhere."""
    v, i = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


@register
class TopKSAE(SAE):
    """codes = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc)); decoder rows kept at unit norm."""

    architecture = "topk"
    Options = TopKOptions
    uses_k = True
    data_parallel = "exact with auxk_coef=0 (AuxK's normaliser is per slice once latents die)"
    dictionary_learning_classes = ("AutoEncoderTopK",)
    dictionary_learning_keys = ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k")

    def encode_flat(self, x: Tensor) -> Tensor:
        return topk_codes(self.centered(x) @ self.W_enc + self.b_enc, self.cfg.k)

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(values, indices) [n, k] for x [..., d_in] flattened to n tokens: the codes of `encode`
        without the d_sae - k zeros (a value is 0 where ReLU cut it); the same set as `encode` up to
        ties. Streaming analyses use it to skip the dense [n, d_sae] codes."""
        v, i = row_topk(self.centered(self.check_input(x)) @ self.W_enc + self.b_enc, self.cfg.k)
        return v.relu_(), i.long()

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """x_hat [n, d_in] from `encode_sparse`'s (values, indices): an embedding bag over the k
        decoder rows of each token, instead of a GEMM over all d_sae."""
        bag = F.embedding_bag(indices, self.W_dec, per_sample_weights=values.to(self.W_dec.dtype), mode="sum")
        return bag + self.b_dec

    def loss(self, x: Tensor, state: StepState) -> TrainOutput:
        k = self.cfg.k
        return dense_step(self, x, lambda pre: topk_codes(pre, k), state, auxk_of(self, state.options))[0]

    def fast_loss(self, x: Tensor, state: StepState) -> TrainOutput:
        k = self.cfg.k
        aux = auxk_of(self, state.options)
        return sparse_step(self, x, lambda pre: topk_selection(pre, k), state, aux, k_main=k)[0]

    @classmethod
    def from_dictionary_learning(cls, state: dict[str, Tensor], metadata: dict[str, Any]) -> SAE:
        sae, t = linear_layout(cls, state, metadata)
        for name, value in t.items():
            sae.load_tensor(name, value)
        return sae

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
        if cfg.get("rescale_acts_by_decoder_norm"):  # SAELens _fold_norm_topk: codes scaled by ||W_dec_j||
            n = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
            t = t | {"b_enc": t["b_enc"] * n, "W_enc": t["W_enc"] * n, "W_dec": t["W_dec"] / n[:, None]}
        return t
