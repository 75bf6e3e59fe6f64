"""TopK SAE (Gao et al. 2024): codes = ReLU of the k largest pre-activations per token.

Trained with AuxK (k_aux dead latents reconstruct the residual, normalised MSE as in Gao et al.
App. A.2, coefficient 1/32) by the sparse fused step of `helpers.sae.fast.step`: after the dense
encoder GEMM and the top-k selection everything touches only the selected (token, latent) pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.sae.base import SAE, register
from helpers.sae.fast.ops import topk_selection
from helpers.sae.fast.step import StepState, TrainOutput, dense_step, sparse_step


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """Dense codes: ReLU of the k largest entries per row, zeros elsewhere."""
    v, i = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


@register
class TopKSAE(SAE):
    """codes = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc)); decoder rows kept at unit norm."""

    architecture = "topk"
    uses_k = True

    def encode_flat(self, x: Tensor) -> Tensor:
        return topk_codes(self.centered(x) @ self.W_enc + self.b_enc, self.cfg.k)

    def train_forward(self, x: Tensor, state: StepState) -> TrainOutput:
        k = self.cfg.k
        if state.sparse:
            return sparse_step(self, x, lambda pre: topk_selection(pre, k), state, k_main=k)[0]
        return dense_step(self, x, lambda pre: topk_codes(pre, k), state)[0]
