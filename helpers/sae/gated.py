"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs", arXiv 2404.16014).

What: a gate decides which latents fire, a magnitude path (sharing W_enc, rescaled per latent by
exp(r_mag)) decides how much:
    pi_gate = xc @ W_enc + b_gate            f_gate = H(pi_gate)
    pi_mag  = (xc @ W_enc) * exp(r_mag) + b_mag
    codes   = f_gate * ReLU(pi_mag)          x_hat = codes @ W_dec + b_dec
    loss    = ||x - x_hat||^2 + l1 * ||ReLU(pi_gate)||_1 + ||x - (ReLU(pi_gate) @ sg(W_dec) + sg(b_dec))||^2
(sg = stop-gradient; the last term is the paper's L_aux, Eq. 8). Decoder rows unit norm.
Tensors as SAELens names them: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec (no b_enc on disk;
`b_enc` exists here only to keep the shared interface and stays 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from helpers.sae.base import SAE, register
from helpers.sae.step_types import ArchOptions, StepState, TrainOutput, mse_per_token


@dataclass
class GatedOptions(ArchOptions):
    """Gated SAE training options."""

    l1: float = 5.0
    """Sparsity coefficient of ||ReLU(pi_gate)||_1."""

    def check(self) -> None:
        self._positive("l1")


@register
class GatedSAE(SAE):
    architecture = "gated"
    Options = GatedOptions
    extra_tensors = ("b_gate", "r_mag", "b_mag")

    def _init_extra(self, dtype: torch.dtype, device: torch.device) -> None:
        m = self.cfg.d_sae
        self.b_enc.requires_grad_(False)  # unused by the gated encoder
        self.b_gate = nn.Parameter(torch.zeros(m, dtype=dtype, device=device))
        self.r_mag = nn.Parameter(torch.zeros(m, dtype=dtype, device=device))
        self.b_mag = nn.Parameter(torch.zeros(m, dtype=dtype, device=device))

    def _scale_extra_(self, s: float) -> None:
        with torch.no_grad():
            self.b_gate.div_(s)
            self.b_mag.div_(s)

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.centered(x) @ self.W_enc
        return h + self.b_gate, h * self.r_mag.exp() + self.b_mag

    def encode_flat(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()

    def disk_tensors(self) -> dict[str, Tensor]:
        t = super().disk_tensors()
        del t["b_enc"]  # not part of the gated encoder (SAELens saves none)
        return t

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
        return {k: v for k, v in t.items() if k != "b_enc"}

    def loss(self, x: Tensor, state: StepState) -> TrainOutput:
        pi_gate, pi_mag = self._paths(x)
        codes = (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()
        x_hat = codes @ self.W_dec + self.b_dec
        mse = mse_per_token(x, x_hat)
        gate_act = pi_gate.relu()
        sparsity = state.options.l1 * gate_act.sum(-1).mean()
        aux = mse_per_token(x, gate_act @ self.W_dec.detach() + self.b_dec.detach())
        fired = (codes.detach() > 0).sum(0)
        return TrainOutput(mse + sparsity + aux, mse.detach(), sparsity.detach(), aux.detach(), fired)
