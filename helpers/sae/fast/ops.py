"""Sparse primitives of the training step: CSR selections of (token, latent) pairs and the products
that touch only them.

A selection is CSR: crow [B+1], cols [nnz], pre-activations vals [nnz] (and k when every row holds
k entries). `row_topk` / `topk_selection` pick them; `sparse_decode` (an embedding bag) and
`decode_and_grad` decode them; `sddmm` samples a dense product at them; `latent_major` orders them
by latent so `bag_sum` / `latent_major_sum` give the [d_sae, d] gradient sums without a dense
[B, d_sae]; `attach_grads` hands gradients computed in the forward to autograd. Each runs the C
kernel of `helpers.sae.fast.kernels` where it applies, else torch ops.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.sae.fast import kernels


class Selection(NamedTuple):
    crow: Tensor  # [B+1] int64 row pointers
    cols: Tensor  # [nnz] int64 latent ids, row-major
    vals: Tensor  # [nnz] pre-activations (ReLU applied where used)
    k: int | None = None  # entries per row when every row has the same number (TopK)


@contextmanager
def serial():
    """Run small bookkeeping ops on one CPU thread: on a busy machine a 2-thread parallel region
    over ~1e5 elements can stall for milliseconds waiting for a descheduled thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _group_size(m: int, k: int) -> int | None:
    """The group size s of `row_topk` for rows of m with top-k: the divisor of m nearest sqrt(m / k)
    (it balances the two topks over m/s and k*s values), or None when grouping cannot pay off."""
    best = None
    for s in range(2, m // k + 1):
        if m % s == 0 and (best is None or abs(s * s * k - m) < abs(best * best * k - m)):
            best = s
    return best if best is not None and m // best + k * best <= m // 2 else None


def row_topk(pre: Tensor, k: int, sorted: bool = False) -> tuple[Tensor, Tensor]:
    """(values, indices) [B, k] of the k largest entries of every row of pre [B, m]: the same set as
    torch.topk (which entry of a tie is taken aside), in about half its time at SAE widths.

    The m columns are split into G = m / s strided groups {j : j % G == g}. The k-th largest group
    maximum t is a lower bound of the row's k-th largest value (k groups each hold a value >= t),
    so every top-k entry lies in a group whose maximum is >= t: among the k groups with the
    largest maxima, up to entries equal to t (a tie). The top-k is taken over those k * s
    candidates. Why: torch.topk on CPU pays per value of the row; this runs it on G + k * s values
    (~770 of 4608 at k 32) after one vectorised max pass. NaN sorts above everything in both steps,
    as in torch.topk."""
    out = kernels.topk(pre, k, sorted)  # the C kernel (kernels.c) where it applies: ~4x faster again
    if out is not None:
        return out
    s = _group_size(pre.shape[1], k)
    return torch.topk(pre, k, dim=1, sorted=sorted) if s is None else _grouped_topk(pre, k, s, sorted)


def _grouped_topk(pre: Tensor, k: int, s: int, sorted: bool) -> tuple[Tensor, Tensor]:
    """`row_topk` with groups of s (s divides m, m / s >= k)."""
    B, m = pre.shape
    G = m // s
    groups = pre.reshape(B, s, G)
    _, gi = torch.topk(groups.amax(1), k, dim=1, sorted=False)  # [B, k] the groups with the largest maxima
    cand = groups.gather(2, gi[:, None, :].expand(B, s, k)).view(
        B, s * k
    )  # cand[b, i*k + c] = group gi[b, c], slot i
    v, p = torch.topk(cand, k, dim=1, sorted=sorted)
    return v, gi.gather(1, p % k).add_((p // k) * G)


def topk_selection(pre: Tensor, k: int) -> Selection:
    """Per-token top-k of pre [B, d_sae] as a CSR selection."""
    v, i = row_topk(pre, k)
    crow = torch.arange(0, pre.shape[0] * k + 1, k, device=pre.device)
    return Selection(crow, i.reshape(-1), v.reshape(-1), k)


def entry_rows(sel: Selection) -> Tensor:
    """Row id of every stored entry: [nnz] int32 (half the bytes to gather; embedding_bag takes int32)."""
    if sel.k is not None:
        return torch.arange(len(sel.cols), device=sel.cols.device, dtype=torch.int32).div_(
            sel.k, rounding_mode="floor"
        )
    counts = sel.crow[1:] - sel.crow[:-1]
    return torch.repeat_interleave(
        torch.arange(len(counts), device=sel.crow.device, dtype=torch.int32), counts
    )


def sparse_decode(sel: Selection, acts: Tensor, W_dec: Tensor) -> Tensor:
    """sum over the row's entries of acts * W_dec[col]: [B, d_in] (no bias)."""
    return F.embedding_bag(
        sel.cols, W_dec, sel.crow, mode="sum", per_sample_weights=acts, include_last_offset=True
    )


def sddmm(crow: Tensor, cols: Tensor, A: Tensor, W: Tensor) -> Tensor:
    """[nnz] values <A[row], W[col]> at the stored positions (A [B, d], W [d_sae, d]; W may be a
    bf16 copy: products then accumulate in A's dtype). The C kernel where it applies, else
    torch's sampled_addmm (same dtype on both sides)."""
    out = kernels.sddmm(crow, cols, A, W)
    if out is not None:
        return out
    W = W.to(A.dtype)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        mask = torch.sparse_csr_tensor(
            crow, cols, torch.ones_like(cols, dtype=A.dtype), (A.shape[0], W.shape[0]), check_invariants=False
        )
    return torch.sparse.sampled_addmm(mask, A, W.t(), beta=0.0).values()


def decode_and_grad(
    sel: Selection, acts: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor, scale: float, g_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decoder forward and the gradients of L = (scale/2) sum_b ||x_hat_b - x_b||^2:
    (gx = scale (x_hat - x) [B, d] written into g_out, gv [nnz] = <gx[row], W_dec[col]> where acts > 0,
    sum ||x_hat - x||^2 (a scalar tensor), gb_dec = sum_b gx_b [d]). One C pass that reads each row's
    decoder rows once for both products, else an embedding bag, a sampled product and three passes."""
    out = kernels.decode_sddmm(sel.crow, sel.cols, acts, W_dec, b_dec.detach(), x, scale, g_out)
    if out is not None:
        gv, sq, gsum = out
        return g_out, gv, x.new_tensor(sq), gsum
    e = sparse_decode(sel, acts.to(W_dec.dtype), W_dec).to(x.dtype).add_(b_dec).sub_(x)
    gx = torch.mul(e, scale, out=g_out)
    return gx, sddmm(sel.crow, sel.cols, gx, W_dec) * (acts > 0), torch.dot(e.view(-1), e.view(-1)), gx.sum(0)


def latent_major(cols: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """(order, offsets [d_sae+1]) grouping entries by latent: latent j's entries are
    order[offsets[j]:offsets[j+1]]."""
    out = kernels.latent_order(cols, d_sae)  # a counting sort in C, ~8x faster than the radix sort below
    if out is not None:
        return out
    keys, order = torch.sort(cols.to(torch.int32), stable=True)  # int32 keys take the fast radix sort
    offsets = torch.searchsorted(
        keys, torch.arange(d_sae + 1, dtype=torch.int32, device=cols.device), out_int32=True
    )
    return order, offsets


def latent_major_sum(order: Tensor, offsets: Tensor, rows: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """out[j] = sum over entries with latent j of weights * table[rows]: [d_sae, d], no dense [B, d_sae]."""
    return bag_sum(rows[order], weights[order], offsets, table)


def bag_sum(rows_sorted: Tensor, weights_sorted: Tensor, offsets: Tensor, table: Tensor) -> Tensor:
    """`latent_major_sum` with rows and weights already in latent-major order."""
    return F.embedding_bag(
        rows_sorted, table, offsets, mode="sum", per_sample_weights=weights_sorted, include_last_offset=True
    )


class _AttachGrads(torch.autograd.Function):
    """Returns `value`; its backward hands precomputed gradients to `params`."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple, *params: Tensor) -> Tensor:  # noqa: ARG004
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        grads, ctx.grads = ctx.grads, None  # the last reference: AccumulateGrad then keeps them, no copy
        if g.device.type == "cpu" and float(g) == 1.0:  # the usual loss.backward(): skip the passes
            return (None, None, *grads)
        return (None, None, *[None if gr is None else gr * g for gr in grads])


def param_grad(g: Tensor, param: Tensor) -> Tensor:
    """g in the dtype and layout of `param`, cast and (for W_enc's transposed sum) transposed in one
    pass: AccumulateGrad then keeps it as it is instead of copying it into the parameter's layout."""
    return g if g.dtype == param.dtype and g.stride() == param.stride() else torch.empty_like(param).copy_(g)


def attach_grads(value: Tensor, params: list[Tensor], grads: list[Tensor | None]) -> Tensor:
    """`value` (detached) whose backward adds grads[i] * upstream into params[i].grad."""
    with torch.enable_grad():
        return _AttachGrads.apply(value, tuple(grads), *params)


def aux_selection(pre: Tensor, dead: Tensor, k_aux: int) -> Selection | None:
    """Top-min(k_aux, n_dead) dead latents per token; None when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux <= 0:
        return None
    k_a = min(k_aux, n_dead)
    if n_dead == pre.shape[1]:
        return topk_selection(pre, k_a)
    dead_idx = torch.nonzero(dead).reshape(-1)
    sel = topk_selection(pre.index_select(1, dead_idx), k_a)
    return Selection(sel.crow, dead_idx[sel.cols], sel.vals, k_a)


def normalized_mse(e_hat: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """(sum||e_hat - r||^2 / sum||r - mean(r)||^2, the denominator / B)."""
    denom = (r - r.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - r).pow(2).sum(-1).mean() / denom, denom
