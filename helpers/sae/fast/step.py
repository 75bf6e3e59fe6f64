"""The fast training step: a typed step state, the shared encoder GEMM and the sparse fused step.

What: `StepState` (what one step reads besides the batch, and the scratch it keeps between steps),
`TrainOutput` (what it returns), `encoder_preacts` (the one dense GEMM), `sparse_step` (TopK and
BatchTopK: fused forward + analytic backward of mse + AuxK), `dense_step` (its autograd reference),
and the unit-norm decoder bookkeeping the trainer runs around the optimizer step
(`project_decoder_grad_`, `normalize_decoder_for_step`).
Why: with k=32 of 4608 latents, the decoder forward/backward and the encoder weight gradient are
~1/144 of a dense GEMM; peers run them dense.

Sparse step (a selection is CSR: crow [B+1], cols [nnz], pre-activations vals [nnz]):
  x_hat  = sum of relu(vals) * W_dec[cols] per token + b_dec                    (gather of rows)
  gv     = <gx[row], W_dec[col]> * 1[vals > 0]                      (sampled dense-dense product)
  gW_dec = latent-major embedding_bag of gx rows weighted by relu(vals)   (no dense [B, d_sae])
  gW_enc^T = latent-major embedding_bag of xc rows weighted by gv ;  gb_enc = scatter-sum of gv
  gb_dec = sum_b gx_b - gb_enc @ W_enc^T
The top-k selection, x_hat with gv (one pass per token) and the latent-major order run as C
kernels (helpers/sae/fast/kernels.py) where a compiler is found, else as torch ops (grouped topk,
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

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.graph import increment_version

from helpers.sae.fast import kernels
from helpers.sae.fast.ops import (
    Selection,
    attach_grads,
    aux_selection,
    bag_sum,
    decode_and_grad,
    entry_rows,
    generic,
    latent_major,
    normalized_mse,
    param_grad,
    sddmm,
    serial,
    sparse_decode,
)
from helpers.sae.step_types import AuxK, StepState, TrainOutput, mse_per_token

if TYPE_CHECKING:
    from helpers.sae.base import SAE

SPARSE_BELOW = 0.08  # relu: code density under which its step runs on the nonzero pairs (trained SAEs: ~1%)


@torch.no_grad()
def project_decoder_grad_(W_dec: Tensor) -> None:
    """Remove from W_dec.grad the component parallel to each (unit-norm) row, before the optimizer
    step: one C pass, else torch's three."""
    g = W_dec.grad
    if not kernels.project_out_rows_(g, W_dec):
        g.addcmul_(W_dec, torch.linalg.vecdot(g, W_dec)[:, None], value=-1.0)  # einsum ran a slow bmm


@torch.no_grad()
def normalize_decoder_for_step(sae: SAE, state: StepState) -> None:
    """Unit-norm decoder rows after an optimizer step (`sae.normalize_decoder_`), in one C pass where
    the kernel applies; under a bf16 `matmul_dtype` the same pass writes the next step's bf16 decoder,
    recorded for `decoder_in`."""
    lp = state.matmul_dtype
    buf = (
        None if lp == sae.W_dec.dtype else state.buffer("W_dec_lp_buf", tuple(sae.W_dec.shape), sae.W_dec, lp)
    )
    if kernels.normalize_rows_(sae.W_dec.data, buf):
        increment_version(sae.W_dec)  # written through a raw pointer: say so, as an in-place op would
    else:
        sae.normalize_decoder_(copy_to=buf)
    if buf is not None:
        state.W_dec_lp = (sae.W_dec._version, buf)


def decoder_in(state: StepState, W_dec: Tensor, dtype: torch.dtype) -> Tensor:
    """W_dec in `dtype` for the step's products: W_dec itself in its own dtype, else the copy the
    trainer wrote while normalising the rows (state.W_dec_lp, valid while W_dec's version counter
    has not moved since), else a fresh cast."""
    if dtype == W_dec.dtype:
        return W_dec
    cached = state.W_dec_lp
    if (
        cached is not None
        and cached[0] == W_dec._version
        and cached[1].dtype == dtype
        and cached[1].shape == W_dec.shape
    ):
        return cached[1]
    return W_dec.to(dtype)


@torch.no_grad()
def encoder_preacts(
    sae: SAE, x: Tensor, state: StepState, need_xc: bool = True
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(xc1 = [xc | 1] [B, d_in+1], xc [B, d_in] fp32, pre = xc @ W_enc + b_enc [B, d_sae]).

    The bias rides in the GEMM as an extra row of the weight, saving the pass over [B, d_sae] that
    addmm spends broadcasting b_enc into its output. Both big tensors are workspace buffers.
    In bf16 (`matmul_dtype`) xc1, the weight copy and pre are bf16 (the GEMM accumulates in fp32);
    xc stays fp32 for the gradients, or is None when not `need_xc` (x - b_dec is then written
    straight into xc1, one pass fewer).
    """
    B, d = x.shape
    lp = state.matmul_dtype
    xc1 = state.buffer("xc1", (B, d + 1), x, lp)
    if lp == x.dtype:
        xc = xc1[:, :d]
    elif need_xc:
        xc = state.buffer("xc", (B, d), x)
    else:
        xc = None
    dst = xc if xc is not None else xc1[:, :d]  # fp32 -> bf16 in the op's own write when xc is not kept
    if sae.cfg.apply_b_dec_to_input:
        torch.sub(x, sae.b_dec, out=dst)
    else:
        dst.copy_(x)
    if xc is not None and lp != x.dtype:
        xc1[:, :d].copy_(xc)
    xc1[:, d] = 1.0
    W1 = state.buffer("W1", (d + 1, sae.cfg.d_sae), x, lp)  # [W_enc ; b_enc], cast in the same pass
    W1[:d].copy_(sae.W_enc)
    W1[d].copy_(sae.b_enc)
    pre = torch.mm(xc1, W1, out=state.buffer("pre", (B, sae.cfg.d_sae), x, lp))
    return xc1, xc, pre


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
    return Selection(
        torch.arange(0, v.numel() + 1, k, device=v.device), cols.reshape(-1), v.reshape(-1), k
    ), flat


class Prefixes(NamedTuple):
    """Matryoshka prefixes: the reconstruction term is  sum_g weights[g] * (1/B) sum_b ||x_hat_g - x||^2,
    x_hat_g decoded from the latents [0, ends[g]) alone (helpers.sae.matryoshka)."""

    ends: Tensor  # [G] int64, strictly increasing, the last = d_sae
    weights: tuple[float, ...]  # [G]


@torch.no_grad()
def prefix_decode_and_grad(
    sel: Selection,
    acts: Tensor,
    rows: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    x: Tensor,
    prefixes: Prefixes,
    g_out: Tensor,
    state: StepState,
) -> tuple[Selection, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`decode_and_grad` for the Matryoshka loss L = sum_g w_g (1/B) sum_b ||e_g,b||^2, e_g = x_hat_g - x.

    A latent of group h (ends[h-1] <= j < ends[h]) is in every prefix g >= h, so its gradients read
    G_h = (2/B) sum_{g >= h} w_g e_g instead of the plain step's (2/B) e. The entries are regrouped by
    (group, token): one embedding bag gives every group's partial decode P_h [G, B, d] (x_hat_g =
    b_dec + P_0 + ... + P_g), and the G_h, written into g_out [G*B, d], are the rows of one sampled
    product (gv) and of the decoder-gradient sum (entry rows h*B + b). gb_dec = sum_b G_0[b] (every
    prefix holds b_dec). Returns (the regrouped selection, its acts, token rows, table rows, gv, L,
    the whole dictionary's mse, gb_dec, e of the whole dictionary [B, d]).
    """
    B, d = x.shape
    G = len(prefixes.weights)
    with serial():
        group = torch.bucketize(sel.cols, prefixes.ends, right=True)
        bag = group.mul_(B).add_(rows)  # the row of each entry in the [G*B] table
        order = torch.argsort(bag, stable=True)
        crow = torch.zeros(G * B + 1, dtype=torch.int64, device=x.device)
        crow[1:] = torch.cumsum(torch.bincount(bag, minlength=G * B), 0)
        cols, acts, bag = sel.cols[order], acts[order], bag[order]
    P = state.buffer("prefix_P", (G, B, d), x)
    P.view(G * B, d).copy_(
        F.embedding_bag(
            cols, W_dec, crow, mode="sum", per_sample_weights=acts.to(W_dec.dtype), include_last_offset=True
        )
    )
    P[0].add_(b_dec).sub_(x)
    for g in range(1, G):  # e_g = e_{g-1} + P_g
        P[g].add_(P[g - 1])
    sq = torch.stack([torch.dot(P[g].view(-1), P[g].view(-1)) for g in range(G)])
    w = prefixes.weights
    gt = g_out.view(G, B, d)
    torch.mul(P[G - 1], 2.0 * w[G - 1] / B, out=gt[G - 1])
    for g in range(G - 2, -1, -1):
        torch.add(gt[g + 1], P[g], alpha=2.0 * w[g] / B, out=gt[g])
    on = acts > 0
    gv = sddmm(crow, cols, g_out, W_dec) * on
    main = (sq * torch.tensor(w, dtype=sq.dtype, device=sq.device)).sum() / B
    regrouped = Selection(crow, cols, sel.vals[order])
    tok_rows, table_rows = (bag % B).to(torch.int32), bag.to(torch.int32)  # int32 as `entry_rows`
    return regrouped, acts, tok_rows, table_rows, gv, main, sq[G - 1] / B, gt[0].sum(0), P[G - 1]


DENSE_AUXK_MAX = 4.0  # AuxK runs as GEMMs on the dead block while n_dead <= this x k_aux (measured below)


def _dense_auxk_latents(pre: Tensor, dead: Tensor, k_aux: int, m: int) -> Tensor | None:
    """The dead latents [n_dead] when AuxK runs as GEMMs on their [B, n_dead] block (`_dense_auxk`):
    0 < n_dead <= DENSE_AUXK_MAX * k_aux and not all of [0, m). While n_dead <= k_aux the top-k_aux is
    the whole block; above it a per-row top-k_aux mask picks the same entries the sparse AuxK would. The
    GEMMs beat ~B * min(k_aux, n_dead) gathered rows up to a few times k_aux: a TopK step at d 640,
    m 2,560, k_aux 320, B 2,048 took 212 / 217 / 218 ms sparse vs 111 / 137 / 184 ms dense with 400 / 800 /
    1,200 dead (2-core Zen 3 EPYC, fp32). None: the sparse AuxK (always in the device-generic branch,
    which has its own dense form)."""
    if k_aux <= 0 or generic(pre):
        return None
    idx = torch.nonzero(dead).reshape(-1)
    return idx if 0 < len(idx) <= DENSE_AUXK_MAX * k_aux and len(idx) < m else None


def _dense_auxk(
    pre: Tensor, dead: Tensor, e: Tensor, W_dec: Tensor, coef: float, k_aux: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """AuxK over the block of dead latents `dead` [n], each token keeping its top-k_aux of them (all n when
    n <= k_aux): (aux loss, their codes a [B, n] = relu(pre), zero off each token's top-k_aux, g_ae [B, d] =
    its gradient at e_hat, g_a [B, n] = its gradient at a where a > 0); the same loss and gradients as the
    sparse AuxK of `sparse_step` (e = x_hat - x, the residual r = -e held fixed)."""
    B = e.shape[0]
    a = pre.index_select(1, dead).to(e.dtype)
    if k_aux < a.shape[1]:  # keep each row's top-k_aux (by pre-activation, as topk_selection ranks)
        keep = torch.zeros_like(a, dtype=torch.bool).scatter_(1, torch.topk(a, k_aux, dim=1).indices, True)
        a = a.clamp_min_(0).mul_(keep)
    else:
        a = a.clamp_min_(0)
    Wd = W_dec.index_select(0, dead)  # [n, d]
    d_ae = torch.addmm(e, a, Wd)  # e_hat - r
    denom = e.var(0, correction=0).sum().clamp_min(1e-12)
    aux = coef * torch.dot(d_ae.view(-1), d_ae.view(-1)) / (B * denom)
    g_ae = d_ae.mul_(2.0 * coef / (B * denom))
    g_a = (g_ae @ Wd.t()).mul_(a > 0)
    return aux, a, g_ae, g_a


@torch.no_grad()
def sparse_step(
    sae: SAE,
    x: Tensor,
    sel_fn: Callable[[Tensor], Selection],
    state: StepState,
    auxk: AuxK | None = None,
    k_main: int | None = None,
    prefixes: Prefixes | None = None,
) -> tuple[TrainOutput, Selection]:
    """Fused forward + analytic backward of  mse + auxk.coef * AuxK  for a sparse activation.

    k_main: the per-token k of a TopK `sel_fn`; when every latent is dead and k_aux >= k_main, the
    main selection is read off the AuxK selection instead of a second topk over [B, d_sae].
    prefixes: Matryoshka prefixes (`Prefixes`): the reconstruction term is then the weighted sum of
    the prefixes' MSEs (`prefix_decode_and_grad`); the logged mse stays the whole dictionary's.
    """
    B, m = x.shape[0], sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    xc1, _, pre = encoder_preacts(sae, x, state, need_xc=False)  # [B, d_sae], the one dense GEMM
    lp = pre.dtype  # bf16 under a bf16 matmul_dtype: the embedding bags then read bf16 tables
    W_dec_lp = decoder_in(state, W_dec, lp)  # the bf16 copy written by the last normalisation, if current
    use_aux = auxk is not None and auxk.coef > 0 and state.dead is not None  # no dead mask: no AuxK
    dead_all = _dense_auxk_latents(pre, state.dead, auxk.k, m) if use_aux else None
    asel = aux_selection(pre, state.dead, auxk.k) if use_aux and dead_all is None else None
    k_a = 0 if asel is None else len(asel.cols) // B
    inside = None  # flat positions of the main entries inside asel, when main is a subset of AuxK's
    if k_main is not None and asel is not None and bool(state.dead.all()) and k_a >= k_main:
        sel, inside = _topk_within(asel, k_a, k_main)
    else:
        sel = sel_fn(pre)
    sel, asel = _fp32(sel, x.dtype), _fp32(asel, x.dtype)  # selection may run on bf16 pre; the rest is fp32
    acts = sel.vals.clamp_min(0)
    # gradient rows of the decoder sum, stacked: [gx ; g_ae] (AuxK) so one embedding_bag does both
    n_main = B if prefixes is None else len(prefixes.weights) * B  # gradient rows of the main term
    table = state.buffer("table", (n_main + (B if asel is not None else 0), x.shape[1]), x)
    with serial():
        rows = entry_rows(sel)
    sel_out = sel
    if prefixes is None:
        gx, gv, sq, gb_dec = decode_and_grad(sel, acts, W_dec_lp, b_dec, x, 2.0 / B, table[:B])
        mse = main = sq / B
        dec_main = rows
    else:  # entries regrouped by (prefix group, token): the returned selection keeps the caller's order
        sel, acts, rows, dec_main, gv, main, mse, gb_dec, e_full = prefix_decode_and_grad(
            sel, acts, rows, W_dec_lp, b_dec, x, prefixes, table[:n_main], state
        )
    on = acts > 0
    aux = x.new_zeros(())
    cols, g_enc, w_dec, dec_rows, enc_rows = [sel.cols], [gv], [acts], [dec_main], [rows]
    if asel is not None:
        a_acts = asel.vals.clamp_min(0)
        e = gx * (B / 2.0) if prefixes is None else e_full  # x_hat - x
        d_ae = (
            sparse_decode(asel, a_acts.to(lp), W_dec_lp).to(x.dtype).add_(e)
        )  # e_hat - r, r = x - x_hat = -e
        denom = e.var(0, correction=0).sum().clamp_min(1e-12)  # ||r - mean(r)||^2 per token
        aux = auxk.coef * torch.dot(d_ae.view(-1), d_ae.view(-1)) / (B * denom)
        g_ae = torch.mul(d_ae, 2.0 * auxk.coef / (B * denom), out=table[n_main:])
        g_a = sddmm(asel.crow, asel.cols, g_ae, W_dec_lp) * (a_acts > 0)
        with serial():
            a_rows = entry_rows(asel)
            if inside is None:  # two entry lists: main entries read table rows [0, B), AuxK's [B, 2B)
                cols.append(asel.cols)
                g_enc.append(g_a)
                w_dec.append(a_acts)
                enc_rows.append(a_rows)
                dec_rows.append(a_rows + n_main)
            else:  # main entries sit inside AuxK's (same token, latent, activation): merge them there
                dec_a = a_rows + n_main
                dec_a[inside] -= (
                    n_main  # v gx_b + v g_ae_b = v (gx + g_ae)_b: table row b after the add below
                )
                cols, g_enc, w_dec = [asel.cols], [g_a.index_add_(0, inside, gv)], [a_acts]
                enc_rows, dec_rows = [a_rows], [dec_a]
        if inside is not None:
            table[:B].add_(g_ae)
    if dead_all is not None:  # AuxK on the dead block as GEMMs, added to the sums below
        e = gx * (B / 2.0) if prefixes is None else e_full  # x_hat - x
        aux, a_dense, g_ae, g_a = _dense_auxk(pre, dead_all, e, W_dec, auxk.coef, auxk.k)
    with serial():
        cols_all, g_all, w_all = _cat(cols), _cat(g_enc), _cat(w_dec)
        order, offsets = latent_major(cols_all, m)
        enc_rows_all = _cat(enc_rows)
        dec_rows_all = enc_rows_all if asel is None and prefixes is None else _cat(dec_rows)
        fired = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, sel.cols, on.to(x.dtype))
        out = kernels.gather_sorted(order, offsets, dec_rows_all, enc_rows_all, w_all, g_all, lp)
        if out is not None:
            rows_d, rows_e, w_d, w_e, gb_enc = out
        else:
            rows_d, rows_e, w_d, w_e = (
                dec_rows_all[order],
                enc_rows_all[order],
                w_all.to(lp)[order],
                g_all.to(lp)[order],
            )
            gb_enc = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, cols_all, g_all)
    table = table if asel is not None else table[:n_main]  # AuxK's rows only when it ran (the cast reads all)
    gW_dec = bag_sum(rows_d, w_d, offsets, table.to(lp))
    # xc1 = [xc | 1] holds xc in the GEMM's dtype; a contiguous table makes a contiguous sum, whose
    # cast-and-transpose into W_enc's layout runs ~3x faster than from a [:, :-1] slice
    gW_encT = bag_sum(rows_e, w_e, offsets, xc1[:, :-1].contiguous())
    if dead_all is not None:
        gW_dec = gW_dec.to(x.dtype).index_add_(0, dead_all, a_dense.t() @ g_ae)
        gW_encT = gW_encT.to(x.dtype).index_add_(0, dead_all, g_a.t() @ xc1[:, :-1].to(x.dtype))
        gb_enc = gb_enc.to(x.dtype).index_add_(0, dead_all, g_a.sum(0))
    if sae.cfg.apply_b_dec_to_input:
        gb_dec = gb_dec - W_enc @ gb_enc
    grads = [param_grad(gW_encT.t(), W_enc), gb_enc, param_grad(gW_dec, W_dec), gb_dec]
    loss = attach_grads(main + aux, [W_enc, b_enc, W_dec, b_dec], grads)
    return TrainOutput(loss, mse, x.new_zeros(()), aux, fired), sel_out


def prefix_mse(x: Tensor, codes: Tensor, W_dec: Tensor, b_dec: Tensor, prefixes: Prefixes) -> Tensor:
    """sum_g weights[g] * mse of the reconstruction from latents [0, ends[g]) alone: the plain form of
    the Matryoshka term (one decode per prefix, as the papers write it)."""
    total = x.new_zeros(())
    for end, w in zip(prefixes.ends.tolist(), prefixes.weights):
        total = total + w * mse_per_token(x, codes[:, :end] @ W_dec[:end] + b_dec)
    return total


def dense_step(
    sae: SAE,
    x: Tensor,
    codes_fn: Callable[[Tensor], Tensor],
    state: StepState,
    auxk: AuxK | None = None,
    prefixes: Prefixes | None = None,
) -> tuple[TrainOutput, Tensor]:
    """Autograd reference of `sparse_step`: dense codes, dense decoder, dense AuxK (on the whole
    dictionary's residual), and with `prefixes` the Matryoshka term `prefix_mse`."""
    xc = sae.centered(x)
    pre = xc @ sae.W_enc + sae.b_enc
    codes = codes_fn(pre)
    x_hat = codes @ sae.W_dec + sae.b_dec
    mse = mse_per_token(x, x_hat)
    main = mse if prefixes is None else prefix_mse(x, codes, sae.W_dec, sae.b_dec, prefixes)
    aux = x.new_zeros(())
    use_aux = auxk is not None and auxk.coef > 0 and state.dead is not None  # no dead mask: no AuxK
    asel = aux_selection(pre.detach(), state.dead, auxk.k) if use_aux else None
    if asel is not None:
        idx = asel.cols.reshape(x.shape[0], -1)
        a_codes = torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx).relu())
        nmse, _ = normalized_mse(a_codes @ sae.W_dec, (x - x_hat).detach())
        aux = auxk.coef * nmse
    fired = (codes.detach() > 0).sum(0)
    return TrainOutput(main + aux, mse.detach(), x.new_zeros(()), aux.detach(), fired), codes
