"""Sparse primitives of the training step: CSR selections of (token, latent) pairs and the products
that touch only them.

A selection is CSR: crow [B+1], cols [nnz], pre-activations vals [nnz] (and k when every row holds
k entries). `row_topk` / `topk_selection` pick them; `sparse_decode` (an embedding bag) and
`decode_and_grad` decode them; `sddmm` samples a dense product at them; `latent_major` orders them
by latent so `bag_sum` / `latent_major_sum` give the [d_sae, d] gradient sums without a dense
[B, d_sae]; `attach_grads` hands gradients computed in the forward to autograd. Each runs the C
kernel of `helpers.sae.fast.kernels` where it applies, else torch ops.

Device-generic branch (`generic(t)`: any tensor off the CPU, e.g. CUDA; or every tensor when
`GENERIC` is set, so the tests run on CPU the code a GPU runs): no C kernel and no CPU-only op.
torch.topk for the selection (as eai-sparsify); an embedding bag for the decode (sparsify's eager
decoder); a gathered batched dot for the sampled product (torch's sampled_addmm is CSR-only and
fp32-only, and the per-sample-weights backward of embedding_bag has no bf16 CUDA kernel); a stable
int32 sort for the latent-major order; embedding bags over that order for the gradient sums (the
latent-major idea of sparsify's Triton backward); no host sync inside the ops (`aux_selection` needs
one: the number of dead latents sets shapes). A selection denser than `DENSE_ABOVE` (AuxK's d_in/2
dead latents per token) is decoded, sampled and summed through dense GEMMs instead, estimated faster
than gathers of rows at that density on a GPU (benchmarks/bench_gpu.py --ops measures both). With a
bf16 decoder the products take bf16 inputs with fp32 accumulation, as a bf16 GEMM would.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.sae.fast import kernels

GENERIC = os.environ.get("SAE_LAB_GENERIC_OPS", "0") == "1"
"""Run the device-generic branch on CPU tensors too (tests; SAE_LAB_GENERIC_OPS=1). The C kernels called
outside this module (step.py's gather_sorted and decoder-gradient projection, the decoder renorm)
decline only non-CPU tensors: set SAE_LAB_KERNELS=0 as well to run on CPU exactly what a GPU runs."""
DENSE_ABOVE = 1 / 200
"""Device-generic branch: a selection with more than this share of its [rows, d_sae] pairs goes
through dense GEMMs. Break-even estimated for an H200 (~4 TB/s row gathers, ~700 TFLOP/s bf16
GEMMs: about 0.6%); TopK's 32 of 24,576 latents is 0.13%, AuxK's 384 dead ones 1.6%.
benchmarks/bench_gpu.py --ops times both sides at the benchmark's shapes."""
SDDMM_CHUNK = 1 << 18
"""Entries per gathered block of the ragged sampled product (bounds its [chunk, d] gathers)."""


def generic(t: Tensor) -> bool:
    """True where the device-generic torch ops run: a tensor off the CPU, or everywhere under GENERIC."""
    return GENERIC or t.device.type != "cpu"


def _dense(nnz: int, rows: int, m: int) -> bool:
    return nnz > DENSE_ABOVE * rows * m


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
    if generic(pre):  # on a GPU torch.topk is one radix-select kernel per row block (sparsify runs it)
        return torch.topk(pre, k, dim=1, sorted=sorted)
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
    return torch.repeat_interleave(  # output_size: no host sync on a GPU to size the result
        torch.arange(len(counts), device=sel.crow.device, dtype=torch.int32),
        counts,
        output_size=len(sel.cols),
    )


def _dense_codes(sel: Selection, vals: Tensor, m: int) -> Tensor:
    """The selection as a dense [B, m] tensor of `vals` (entries of one pair add up)."""
    B = len(sel.crow) - 1
    flat = entry_rows(sel).long().mul_(m).add_(sel.cols)
    return torch.zeros(B * m, dtype=vals.dtype, device=vals.device).index_add_(0, flat, vals).view(B, m)


def sparse_decode(sel: Selection, acts: Tensor, W_dec: Tensor) -> Tensor:
    """sum over the row's entries of acts * W_dec[col]: [B, d_in] (no bias). An embedding bag; in the
    device-generic branch a dense GEMM above DENSE_ABOVE (acts in W_dec's dtype)."""
    if generic(W_dec) and _dense(len(sel.cols), len(sel.crow) - 1, W_dec.shape[0]):
        return _dense_codes(sel, acts.to(W_dec.dtype), W_dec.shape[0]) @ W_dec
    return F.embedding_bag(
        sel.cols, W_dec, sel.crow, mode="sum", per_sample_weights=acts, include_last_offset=True
    )


def sddmm(crow: Tensor, cols: Tensor, A: Tensor, W: Tensor, k: int | None = None) -> Tensor:
    """[nnz] values <A[row], W[col]> at the stored positions (A [B, d], W [d_sae, d]; W may be a
    bf16 copy: products then accumulate in A's dtype). The C kernel where it applies, else
    torch's sampled_addmm (same dtype on both sides); the device-generic branch: `_sddmm_generic`.
    k: entries per row when every row holds k (lets that branch skip gathering A's rows)."""
    if generic(A):
        return _sddmm_generic(crow, cols, A, W, k)
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


def _sddmm_generic(crow: Tensor, cols: Tensor, A: Tensor, W: Tensor, k: int | None) -> Tensor:
    """`sddmm` from torch ops that run on any device, in A's dtype. With a bf16 W, A enters the
    products in bf16 (fp32 accumulation), as in a bf16 GEMM and in kernels.decode_sddmm.
    Dense (A @ W^T, then the entries) above DENSE_ABOVE; else batched dots of gathered rows: W's
    rows against A's row views when every row holds k entries, else against gathered A rows."""
    B, d = A.shape
    nnz, m = len(cols), W.shape[0]
    lp = W.dtype if W.dtype.itemsize < A.dtype.itemsize else A.dtype
    A_, W_ = A.to(lp), W.to(lp)
    if _dense(nnz, B, m):
        flat = entry_rows(Selection(crow, cols, cols, k)).long().mul_(m).add_(cols)
        return (A_ @ W_.t()).view(-1)[flat].to(A.dtype)
    if k is not None and nnz == B * k:
        return torch.bmm(W_[cols].view(B, k, d), A_.view(B, d, 1)).view(-1).to(A.dtype)
    rows = entry_rows(Selection(crow, cols, cols, k))
    out = torch.empty(nnz, dtype=A.dtype, device=A.device)
    for s in range(0, nnz, SDDMM_CHUNK):
        c, r = cols[s : s + SDDMM_CHUNK], rows[s : s + SDDMM_CHUNK]
        out[s : s + len(c)] = torch.bmm(W_[c].unsqueeze(1), A_[r].unsqueeze(2)).view(-1)
    return out


def decode_and_grad(
    sel: Selection, acts: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor, scale: float, g_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decoder forward and the gradients of L = (scale/2) sum_b ||x_hat_b - x_b||^2:
    (gx = scale (x_hat - x) [B, d] written into g_out, gv [nnz] = <gx[row], W_dec[col]> where acts > 0,
    sum ||x_hat - x||^2 (a scalar tensor), gb_dec = sum_b gx_b [d]). One C pass that reads each row's
    decoder rows once for both products, else an embedding bag, a sampled product and three passes
    (the device-generic branch: those torch ops, none of which syncs with the host)."""
    if not generic(x):
        out = kernels.decode_sddmm(sel.crow, sel.cols, acts, W_dec, b_dec.detach(), x, scale, g_out)
        if out is not None:
            gv, sq, gsum = out
            return g_out, gv, x.new_tensor(sq), gsum
    e = sparse_decode(sel, acts.to(W_dec.dtype), W_dec).to(x.dtype).add_(b_dec).sub_(x)
    gx = torch.mul(e, scale, out=g_out)
    gv = sddmm(sel.crow, sel.cols, gx, W_dec, sel.k) * (acts > 0)
    return gx, gv, torch.dot(e.view(-1), e.view(-1)), gx.sum(0)


def latent_major(cols: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """(order, offsets [d_sae+1]) grouping entries by latent: latent j's entries are
    order[offsets[j]:offsets[j+1]]. The device-generic branch: the radix sort below (on a GPU one
    CUB sort, and searchsorted needs no host sync where bincount would)."""
    out = None if generic(cols) else kernels.latent_order(cols, d_sae)  # C counting sort: ~8x the radix sort
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
    """`latent_major_sum` with rows and weights already in latent-major order (weights in table's
    dtype). An embedding bag per latent; in the device-generic branch above DENSE_ABOVE the dense
    [d_sae, rows] weights times the table (one GEMM)."""
    n, m, R = len(rows_sorted), len(offsets) - 1, table.shape[0]
    if generic(table) and _dense(n, R, m):
        latent = torch.repeat_interleave(
            torch.arange(m, device=table.device), offsets.diff().long(), output_size=n
        )
        flat = latent.mul_(R).add_(rows_sorted)
        w = torch.zeros(m * R, dtype=table.dtype, device=table.device)
        return w.index_add_(0, flat, weights_sorted.to(table.dtype)).view(m, R) @ table
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
    """Top-min(k_aux, n_dead) dead latents per token; None when no latent is dead. One host sync
    (nonzero's length: the number of dead latents sets the shapes)."""
    if k_aux <= 0:
        return None
    dead_idx = torch.nonzero(dead).reshape(-1)
    n_dead = len(dead_idx)
    if n_dead == 0:
        return None
    k_a = min(k_aux, n_dead)
    if n_dead == pre.shape[1]:
        return topk_selection(pre, k_a)
    sel = topk_selection(pre.index_select(1, dead_idx), k_a)
    return Selection(sel.crow, dead_idx[sel.cols], sel.vals, k_a)


def normalized_mse(e_hat: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """(sum||e_hat - r||^2 / sum||r - mean(r)||^2, the denominator / B)."""
    denom = (r - r.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - r).pow(2).sum(-1).mean() / denom, denom
