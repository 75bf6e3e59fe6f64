"""ReLU + L1 SAE in the form of Anthropic's April 2024 update ("standard" in SAELens).

What: codes = ReLU((x - b_dec) @ W_enc + b_enc); loss = ||x - x_hat||^2 + l1 * sum_j f_j ||W_dec_j||
(a crosscoder's ||W_dec_j|| is the sum of its per-layer block norms: `decoder_norms`),
decoder rows free (not projected to unit norm), initialised at norm 0.1 with W_enc = W_dec^T.
Why: the L1 weighted by decoder norms keeps the penalty meaningful without a norm constraint
(https://transformer-circuits.pub/2024/april-update/index.html#training-saes).

Fused step (manual backward, 5 GEMMs + 1 GEMV instead of autograd's 6 GEMMs): with B tokens,
n_j = ||W_dec_j||, gx = 2 (x_hat - x) / B,
  gpre   = ([gx | 1] @ [W_dec^T ; (l1/B) n]) * 1[pre > 0]     (the L1 term rides in the GEMM)
  gW_enc = xc^T @ gpre        gb_enc = sum_b gpre_b  (as an extra row of the same GEMM)
  gW_dec = f^T @ gx + (l1/B) (sum_b f_b)_j W_dec_j / n_j    (sum_b f_b as an extra column)
  gb_dec = sum_b gx_b - W_enc @ gb_enc                        (a GEMV, not the 6th GEMM)
With a bf16 `matmul_dtype` the three [B, d_sae] GEMMs run in bf16 (fp32 accumulation); the
reconstruction error, the gradients handed to Adam and all sums are fp32.
Large [B, d_sae] buffers are reused across steps (StepState.buffer); b_enc rides in the encoder GEMM.
When fewer than SPARSE_BELOW of the codes are nonzero (a trained ReLU SAE sits near 1%), the step
after the encoder GEMM runs on the nonzero pairs only (`_relu_l1_sparse`), like TopK's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from helpers.sae.base import SAE, register
from helpers.sae.fast.ops import (
    Selection,
    attach_grads,
    latent_major,
    latent_major_sum,
    sddmm,
    serial,
    sparse_decode,
)
from helpers.sae.fast.step import SPARSE_BELOW, encoder_preacts
from helpers.sae.peer_formats import linear_layout
from helpers.sae.step_types import ArchOptions, StepState, TrainOutput, mse_per_token


@dataclass
class ReluOptions(ArchOptions):
    """ReLU + L1 training options."""

    l1: float = 5.0
    """Sparsity coefficient of sum_j f_j ||W_dec_j|| (Anthropic's April 2024 update uses 5 at
    E||x|| = sqrt(d_in))."""
    sparse_below: float = SPARSE_BELOW
    """Code density under which the fused step runs on the nonzero pairs only."""

    def check(self) -> None:
        self._positive("l1")


def decoder_norms(W_dec: Tensor, n_blocks: int = 1) -> tuple[Tensor, Tensor]:
    """(n [m], per-block norms [m, n_blocks]): n_j = sum_l ||W_dec_j^l|| over the decoder's layer blocks
    (one block: the row norm; a crosscoder's: the sum of its per-layer norms)."""
    bn = W_dec.view(W_dec.shape[0], n_blocks, -1).norm(dim=2).clamp_min(1e-12)
    return (bn[:, 0] if n_blocks == 1 else bn.sum(1)), bn


def add_norm_grad_(g: Tensor, W_dec: Tensor, coef: Tensor, bn: Tensor) -> Tensor:
    """g += coef_j * dn_j/dW_dec_j, i.e. coef_j * W_dec_j^l / ||W_dec_j^l|| in every block l."""
    m, L = bn.shape
    g.view(m, L, -1).addcmul_(W_dec.view(m, L, -1), (coef[:, None] / bn)[:, :, None])
    return g


@torch.no_grad()
def relu_l1_fused(sae: SAE, x: Tensor, l1: float, state: StepState) -> TrainOutput:
    """The fused step of `ReluSAE.loss` (manual backward, see the module docstring)."""
    B, d = x.shape
    m = sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    xc1, xc, pre = encoder_preacts(sae, x, state)  # xc1 = [xc | 1]; bf16 with a bf16 matmul_dtype
    lp = pre.dtype
    f = pre.clamp_(min=0)
    # float counts: 7x count_nonzero (summed in fp32: bf16 holds integers exactly only up to 256)
    fired = torch.sign(f, out=state.buffer("mask", (B, m), x, lp)).sum(0, dtype=x.dtype)
    if float(fired.sum()) < state.options.sparse_below * B * m:
        return _relu_l1_sparse(sae, x, l1, xc, f, fired)
    if lp == x.dtype:
        e = torch.addmm(b_dec, f, W_dec).sub_(x)  # x_hat - x
    else:
        e = torch.mm(f, W_dec.to(lp)).to(x.dtype).add_(b_dec).sub_(x)
    mse = torch.dot(e.view(-1), e.view(-1)) / B
    gx1 = state.buffer("gx1", (B, d + 1), x, lp)  # [gx | 1]
    torch.mul(e, 2.0 / B, out=gx1[:, :d])
    gx1[:, d] = 1.0
    n, bn = decoder_norms(W_dec, sae.cfg.n_layers)
    W_decT1 = torch.cat([W_dec.t(), (n * (l1 / B))[None]]).to(lp)  # [d+1, m]: the L1 term rides in the GEMM
    gf = torch.mm(gx1, W_decT1, out=state.buffer("gf", (B, m), x, lp))
    torch.ops.aten.threshold_backward.grad_input(gf, f, 0.0, grad_input=gf)  # gf *= 1[f > 0]
    gW_enc1 = (xc1.t() @ gf).to(x.dtype)  # [d+1, m]: rows :d = gW_enc, row d = gb_enc
    G = (f.t() @ gx1).to(x.dtype)  # [m, d+1]: cols :d = f^T gx, col d = sum_b f_b
    fsum = G[:, d]
    gW_dec = add_norm_grad_(G[:, :d].contiguous(), W_dec, fsum * (l1 / B), bn)
    gb_enc = gW_enc1[d]
    gb_dec = e.sum(0).mul_(2.0 / B)
    if sae.cfg.apply_b_dec_to_input:
        gb_dec = gb_dec - W_enc @ gb_enc
    sparsity = l1 * (fsum @ n) / B
    loss = attach_grads(mse + sparsity, [W_enc, b_enc, W_dec, b_dec], [gW_enc1[:d], gb_enc, gW_dec, gb_dec])
    return TrainOutput(loss, mse, sparsity, x.new_zeros(()), fired)


@torch.no_grad()
def _relu_l1_sparse(sae: SAE, x: Tensor, l1: float, xc: Tensor, f: Tensor, fired: Tensor) -> TrainOutput:
    """The same step when few codes are nonzero: after the encoder GEMM only the nonzero (token,
    latent) pairs are touched, as in helpers.sae.fast.step.sparse_step; the L1 term adds (l1/B) n_j to
    each entry's gradient and (l1/B) (sum_b f_b)_j W_dec_j / n_j to the decoder's."""
    B, m = x.shape[0], sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    idx = (f > 0).nonzero()  # [nnz, 2], row-major
    rows, cols = idx[:, 0], idx[:, 1]
    vals = f[rows, cols].to(x.dtype)  # f may be bf16 (matmul_dtype); everything after is fp32
    with serial():
        crow = torch.zeros(B + 1, dtype=torch.int64, device=x.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=B), 0)
    e = sparse_decode(Selection(crow, cols, vals), vals, W_dec).add_(b_dec).sub_(x)  # x_hat - x
    mse = torch.dot(e.view(-1), e.view(-1)) / B
    gx = e.mul_(2.0 / B)
    n, bn = decoder_norms(W_dec, sae.cfg.n_layers)
    gv = sddmm(crow, cols, gx, W_dec).add_(n[cols], alpha=l1 / B)
    with serial():
        rows32 = rows.to(torch.int32)
        order, offsets = latent_major(cols, m)
        fsum = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, cols, vals)
        gb_enc = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, cols, gv)
    gW_dec = add_norm_grad_(latent_major_sum(order, offsets, rows32, vals, gx), W_dec, fsum * (l1 / B), bn)
    gW_encT = latent_major_sum(order, offsets, rows32, gv, xc)
    gb_dec = gx.sum(0)
    if sae.cfg.apply_b_dec_to_input:
        gb_dec = gb_dec - W_enc @ gb_enc
    sparsity = l1 * (fsum @ n) / B
    loss = attach_grads(mse + sparsity, [W_enc, b_enc, W_dec, b_dec], [gW_encT.t(), gb_enc, gW_dec, gb_dec])
    return TrainOutput(loss, mse, sparsity, x.new_zeros(()), fired)


@register
class ReluSAE(SAE):
    """ReLU SAE; the L1 coefficient is a training option (ReluOptions.l1)."""

    architecture = "relu"
    Options = ReluOptions
    saelens_name = "standard"
    dictionary_learning_classes = ("AutoEncoder",)
    dictionary_learning_keys = ("encoder.weight", "encoder.bias", "decoder.weight", "bias")
    unit_norm_decoder = False
    decoder_init_norm = 0.1

    @classmethod
    @torch.no_grad()
    def from_dictionary_learning(cls, state: dict[str, Tensor], metadata: dict[str, Any]) -> SAE:
        """As dictionary_learning's AutoEncoder.from_pretrained(normalize_decoder=True): rows scaled
        to unit norm, the encoder scaled back, so codes * ||W_dec_j|| are kept."""
        sae, t = linear_layout(cls, state, metadata, b_dec_key="bias")
        norms = t["W_dec"].norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms)):
            n = norms
            t |= {"W_dec": t["W_dec"] / n[:, None], "W_enc": t["W_enc"] * n[None, :], "b_enc": t["b_enc"] * n}
        for name, value in t.items():
            sae.load_tensor(name, value)
        return sae

    def encode_flat(self, x: Tensor) -> Tensor:
        return torch.relu(self.centered(x) @ self.W_enc + self.b_enc)

    def loss(self, x: Tensor, state: StepState) -> TrainOutput:
        l1 = state.options.l1
        codes = self.encode_flat(x)
        x_hat = self.decode(codes)
        mse = mse_per_token(x, x_hat)
        sparsity = l1 * (codes * decoder_norms(self.W_dec, self.cfg.n_layers)[0]).sum(-1).mean()
        fired = (codes.detach() > 0).sum(0)
        return TrainOutput(mse + sparsity, mse.detach(), sparsity.detach(), x.new_zeros(()), fired)

    def fast_loss(self, x: Tensor, state: StepState) -> TrainOutput:
        return relu_l1_fused(self, x, state.options.l1, state)
