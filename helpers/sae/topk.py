"""TopK SAE (Gao et al. 2024) and the sparse training step shared with BatchTopK.

What: `TopKSAE` (codes = ReLU of the k largest pre-activations per token), AuxK (k_aux dead latents
reconstruct the residual, normalised MSE as in Gao et al. App. A.2, coefficient 1/32), and the
sparse fused step: after the dense encoder GEMM and the top-k selection everything touches only
the selected (token, latent) pairs.
Why: with k=32 of 4608 latents, the decoder forward/backward and the encoder weight gradient are
~1/144 of a dense GEMM; peers run them dense.

Sparse step (a selection is CSR: crow [B+1], cols [nnz], pre-activations vals [nnz]):
  x_hat  = sum of relu(vals) * W_dec[cols] per token + b_dec                    (gather of rows)
  gv     = <gx[row], W_dec[col]> * 1[vals > 0]                      (sampled dense-dense product)
  gW_dec = latent-major embedding_bag of gx rows weighted by relu(vals)   (no dense [B, d_sae])
  gW_enc^T = latent-major embedding_bag of xc rows weighted by gv ;  gb_enc = scatter-sum of gv
  gb_dec = sum_b gx_b - gb_enc @ W_enc^T
The top-k selection, x_hat with gv (one pass per token) and the latent-major order run as C
kernels (helpers/sae/kernels.py) where a compiler is found, else as torch ops (grouped topk,
embedding_bag + sampled_addmm, radix sort).
With a bf16 `matmul_dtype` the encoder GEMM, the top-k selection, the decoder rows read by x_hat
and gv, and the two gradient sums (bf16 tables and weights, fp32 accumulation in fbgemm, ~2.7x
faster than fp32) see bf16, as autocast would run `codes @ W_dec`; gv's products take gx in bf16
as a bf16 GEMM would; the selected values, x_hat - x, the losses and the gradients handed to the
optimizer are fp32.
The gradients are computed in the forward and attached with `attach_grads`, so `loss.backward()`
works as usual; `TrainConfig(sparse=False)` runs the plain autograd reference instead.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.sae import kernels
from helpers.sae.base import SAE, TrainOutput, decoder_in, encoder_preacts, mse_per_token, register, workspace


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
    cand = groups.gather(2, gi[:, None, :].expand(B, s, k)).view(B, s * k)  # cand[b, i*k + c] = group gi[b, c], slot i
    v, p = torch.topk(cand, k, dim=1, sorted=sorted)
    return v, gi.gather(1, p % k).add_((p // k) * G)


def topk_selection(pre: Tensor, k: int) -> Selection:
    """Per-token top-k of pre [B, d_sae] as a CSR selection."""
    v, i = row_topk(pre, k)
    crow = torch.arange(0, pre.shape[0] * k + 1, k, device=pre.device)
    return Selection(crow, i.reshape(-1), v.reshape(-1), k)


def _rows(sel: Selection) -> Tensor:
    """Row id of every stored entry: [nnz] int32 (half the bytes to gather; embedding_bag takes int32)."""
    if sel.k is not None:
        return torch.arange(len(sel.cols), device=sel.cols.device, dtype=torch.int32).div_(sel.k, rounding_mode="floor")
    counts = sel.crow[1:] - sel.crow[:-1]
    return torch.repeat_interleave(torch.arange(len(counts), device=sel.crow.device, dtype=torch.int32), counts)


def sparse_decode(sel: Selection, acts: Tensor, W_dec: Tensor) -> Tensor:
    """sum over the row's entries of acts * W_dec[col]: [B, d_in] (no bias)."""
    return F.embedding_bag(sel.cols, W_dec, sel.crow, mode="sum", per_sample_weights=acts,
                           include_last_offset=True)


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
        mask = torch.sparse_csr_tensor(crow, cols, torch.ones_like(cols, dtype=A.dtype),
                                       (A.shape[0], W.shape[0]), check_invariants=False)
    return torch.sparse.sampled_addmm(mask, A, W.t(), beta=0.0).values()


def decode_and_grad(sel: Selection, acts: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor, scale: float,
                    g_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
    """(order, offsets [d_sae+1]) grouping entries by latent: latent j's are order[offsets[j]:offsets[j+1]]."""
    out = kernels.latent_order(cols, d_sae)  # a counting sort in C, ~8x faster than the radix sort below
    if out is not None:
        return out
    keys, order = torch.sort(cols.to(torch.int32), stable=True)  # int32 keys take the fast radix sort
    offsets = torch.searchsorted(keys, torch.arange(d_sae + 1, dtype=torch.int32, device=cols.device),
                                 out_int32=True)
    return order, offsets


def latent_major_sum(order: Tensor, offsets: Tensor, rows: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """out[j] = sum over entries with latent j of weights * table[rows]: [d_sae, d], no dense [B, d_sae]."""
    return bag_sum(rows[order], weights[order], offsets, table)


def bag_sum(rows_sorted: Tensor, weights_sorted: Tensor, offsets: Tensor, table: Tensor) -> Tensor:
    """`latent_major_sum` with rows and weights already in latent-major order."""
    return F.embedding_bag(rows_sorted, table, offsets, mode="sum", per_sample_weights=weights_sorted,
                           include_last_offset=True)


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


def _fp32(sel: Selection | None, dtype: torch.dtype) -> Selection | None:
    """The selection with its values in the step's dtype (fp32) when pre was bf16."""
    return sel if sel is None or sel.vals.dtype == dtype else sel._replace(vals=sel.vals.to(dtype))


def _cat(ts: list[Tensor]) -> Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts)


def _topk_within(sel: Selection, k_per_row: int, k: int) -> tuple[Selection, Tensor]:
    """The per-row top-k of a selection with k_per_row entries in every row, and the flat
    positions [B*k] of the chosen entries inside `sel`."""
    v, pos = torch.topk(sel.vals.reshape(-1, k_per_row), k, dim=1, sorted=False)
    cols = sel.cols.reshape(-1, k_per_row).gather(1, pos)
    flat = (pos + torch.arange(0, sel.vals.numel(), k_per_row, device=v.device)[:, None]).reshape(-1)
    return Selection(torch.arange(0, v.numel() + 1, k, device=v.device), cols.reshape(-1), v.reshape(-1), k), flat


@torch.no_grad()
def sparse_step(sae: SAE, x: Tensor, sel_fn, state: dict[str, Any],
                k_main: int | None = None) -> tuple[TrainOutput, Selection]:
    """Fused forward + analytic backward of  mse + auxk_coef * AuxK  for a sparse activation.

    k_main: the per-token k of a TopK `sel_fn`; when every latent is dead and k_aux >= k_main, the
    main selection is read off the AuxK selection instead of a second topk over [B, d_sae].
    """
    B, m = x.shape[0], sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    xc1, _, pre = encoder_preacts(sae, x, state, need_xc=False)  # [B, d_sae], the one dense GEMM
    lp = pre.dtype  # bf16 under a bf16 matmul_dtype: the embedding bags then read bf16 tables
    W_dec_lp = decoder_in(state, W_dec, lp)  # the bf16 copy written by the last normalisation, if current
    asel = aux_selection(pre, state["dead"], state["k_aux"]) if state.get("auxk_coef", 0) > 0 else None
    k_a = 0 if asel is None else len(asel.cols) // B
    inside = None  # flat positions of the main entries inside asel, when main is a subset of AuxK's
    if k_main is not None and asel is not None and bool(state["dead"].all()) and k_a >= k_main:
        sel, inside = _topk_within(asel, k_a, k_main)
    else:
        sel = sel_fn(pre)
    sel, asel = _fp32(sel, x.dtype), _fp32(asel, x.dtype)  # selection may run on bf16 pre; the rest is fp32
    acts = sel.vals.clamp_min(0)
    on = acts > 0
    # gradient rows of the decoder sum, stacked: [gx ; g_ae] (AuxK) so one embedding_bag does both
    table = workspace(state, "table", ((2 if state.get("auxk_coef", 0) > 0 else 1) * B, x.shape[1]), x)
    gx, gv, sq, gb_dec = decode_and_grad(sel, acts, W_dec_lp, b_dec, x, 2.0 / B, table[:B])
    mse = sq / B
    aux = x.new_zeros(())
    with serial():
        rows = _rows(sel)
    cols, g_enc, w_dec, dec_rows, enc_rows = [sel.cols], [gv], [acts], [rows], [rows]
    if asel is not None:
        a_acts = asel.vals.clamp_min(0)
        e = gx * (B / 2.0)  # x_hat - x
        d_ae = sparse_decode(asel, a_acts.to(lp), W_dec_lp).to(x.dtype).add_(e)  # e_hat - r, r = x - x_hat = -e
        denom = e.var(0, correction=0).sum().clamp_min(1e-12)  # ||r - mean(r)||^2 per token
        aux = state["auxk_coef"] * torch.dot(d_ae.view(-1), d_ae.view(-1)) / (B * denom)
        g_ae = torch.mul(d_ae, 2.0 * state["auxk_coef"] / (B * denom), out=table[B:])
        g_a = sddmm(asel.crow, asel.cols, g_ae, W_dec_lp) * (a_acts > 0)
        with serial():
            a_rows = _rows(asel)
            if inside is None:  # two entry lists: main entries read table rows [0, B), AuxK's [B, 2B)
                cols.append(asel.cols)
                g_enc.append(g_a)
                w_dec.append(a_acts)
                enc_rows.append(a_rows)
                dec_rows.append(a_rows + B)
            else:  # main entries sit inside AuxK's (same token, latent, activation): merge them there
                dec_a = a_rows + B
                dec_a[inside] -= B  # v gx_b + v g_ae_b = v (gx + g_ae)_b: table row b after the add below
                cols, g_enc, w_dec = [asel.cols], [g_a.index_add_(0, inside, gv)], [a_acts]
                enc_rows, dec_rows = [a_rows], [dec_a]
        if inside is not None:
            table[:B].add_(g_ae)
    with serial():
        cols_all, g_all, w_all = _cat(cols), _cat(g_enc), _cat(w_dec)
        order, offsets = latent_major(cols_all, m)
        enc_rows_all = _cat(enc_rows)
        dec_rows_all = enc_rows_all if asel is None else _cat(dec_rows)
        fired = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, sel.cols, on.to(x.dtype))
        out = kernels.gather_sorted(order, offsets, dec_rows_all, enc_rows_all, w_all, g_all, lp)
        if out is not None:
            rows_d, rows_e, w_d, w_e, gb_enc = out
        else:
            rows_d, rows_e, w_d, w_e = dec_rows_all[order], enc_rows_all[order], w_all.to(lp)[order], g_all.to(lp)[order]
            gb_enc = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, cols_all, g_all)
    table = table if asel is not None else table[:B]  # the AuxK half only when AuxK ran (the cast reads it all)
    gW_dec = bag_sum(rows_d, w_d, offsets, table.to(lp))
    # xc1 = [xc | 1] holds xc in the GEMM's dtype; a contiguous table makes a contiguous sum, whose
    # cast-and-transpose into W_enc's layout runs ~3x faster than from a [:, :-1] slice
    gW_encT = bag_sum(rows_e, w_e, offsets, xc1[:, :-1].contiguous())
    if sae.cfg.apply_b_dec_to_input:
        gb_dec = gb_dec - W_enc @ gb_enc
    grads = [param_grad(gW_encT.t(), W_enc), gb_enc, param_grad(gW_dec, W_dec), gb_dec]
    loss = attach_grads(mse + aux, [W_enc, b_enc, W_dec, b_dec], grads)
    return TrainOutput(loss, mse, x.new_zeros(()), aux, fired), sel


def dense_step(sae: SAE, x: Tensor, codes_fn, state: dict[str, Any]) -> tuple[TrainOutput, Tensor]:
    """Autograd reference of `sparse_step`: dense codes, dense decoder, dense AuxK."""
    xc = sae.centered(x)
    pre = xc @ sae.W_enc + sae.b_enc
    codes = codes_fn(pre)
    x_hat = codes @ sae.W_dec + sae.b_dec
    mse = mse_per_token(x, x_hat)
    aux = x.new_zeros(())
    asel = aux_selection(pre.detach(), state["dead"], state["k_aux"]) if state.get("auxk_coef", 0) > 0 else None
    if asel is not None:
        idx = asel.cols.reshape(x.shape[0], -1)
        a_codes = torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx).relu())
        nmse, _ = normalized_mse(a_codes @ sae.W_dec, (x - x_hat).detach())
        aux = state["auxk_coef"] * nmse
    fired = (codes.detach() > 0).sum(0)
    return TrainOutput(mse + aux, mse.detach(), x.new_zeros(()), aux.detach(), fired), codes


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """Dense codes: ReLU of the k largest entries per row, zeros elsewhere."""
    v, i = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


@register
class TopKSAE(SAE):
    """codes = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc)); decoder rows kept at unit norm."""

    architecture = "topk"

    def encode_flat(self, x: Tensor) -> Tensor:
        return topk_codes(self.centered(x) @ self.W_enc + self.b_enc, self.cfg.k)

    def train_forward(self, x: Tensor, state: dict[str, Any]) -> TrainOutput:
        k = self.cfg.k
        if state.get("sparse", True):
            return sparse_step(self, x, lambda pre: topk_selection(pre, k), state, k_main=k)[0]
        return dense_step(self, x, lambda pre: topk_codes(pre, k), state)[0]
