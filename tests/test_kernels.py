"""The C kernels of the sparse step (helpers/sae/fast/kernels.c) against torch, and their fallbacks."""

import shutil

import pytest
import torch

from helpers.sae.fast import kernels
from helpers.sae.fast.ops import row_topk, sddmm
from helpers.sae.fast.step import decoder_in, normalize_decoder_for_step
from helpers.sae.step_types import StepState

needs_cc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler: the torch fallbacks run")


def _hard_rows(dtype: torch.dtype, m: int = 1000) -> torch.Tensor:
    """Random rows plus the cases a threshold selection gets wrong: ties, infinities, all-equal rows,
    winners packed into one strided group (j % 128), negative-only rows, -0 beside +0."""
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(40, m, generator=g) * 3
    pre[1] = 0.5
    pre[2] = float("-inf")
    pre[3, ::2] = float("-inf")
    pre[4] = torch.randint(0, 3, (m,), generator=g).float()
    pre[5, ::128] = 7.0  # every winner in group 0
    pre[6] = -torch.rand(m, generator=g) - 1.0
    pre[7, :500] = -0.0
    pre[7, 500:] = 0.0
    pre[8, 3] = float("inf")
    pre[9] = torch.randn(m, generator=g) * 1e-30  # denormal-range values
    return pre.to(dtype)


def _assert_topk(pre, k, v, i):
    ref = torch.topk(pre, k, dim=1).values
    assert v.dtype == pre.dtype and i.dtype == torch.int64 and v.shape == i.shape == (pre.shape[0], k)
    assert torch.equal(pre.gather(1, i), v), "values are not the entries at the indices"
    assert torch.equal(v.sort(1, descending=True).values, ref), "not the k largest"
    assert all(len(set(r)) == k for r in i.tolist()), "an index was taken twice"


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,k", [(1000, 1), (1000, 32), (1000, 128), (4608, 32), (40, 8), (40, 40)])
def test_topk_kernel__the_k_largest_of_every_row(dtype, m, k):
    assert kernels.library() is not None, "gcc is here, so the kernels must build"
    pre = _hard_rows(dtype, m)
    out = kernels.topk(pre, k)
    assert out is not None
    _assert_topk(pre, k, *out)
    v, _ = kernels.topk(pre, k, sorted=True)
    assert torch.equal(v, torch.topk(pre, k, dim=1).values)


@needs_cc
def test_topk_kernel__nan_ranks_first_as_in_torch():
    pre = torch.randn(4, 300)
    pre[0, 17] = float("nan")
    v, i = kernels.topk(pre, 5, sorted=True)
    assert int(i[0, 0]) == 17 and torch.isnan(v[0, 0])
    assert torch.equal(v[1:], torch.topk(pre[1:], 5, dim=1).values)


@needs_cc
def test_topk_kernel__ties_take_the_lower_index():
    v, i = kernels.topk(torch.zeros(2, 500), 3, sorted=True)
    assert i.tolist() == [[0, 1, 2], [0, 1, 2]]


@needs_cc
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_sddmm_kernel__equals_the_dense_product_at_the_pattern(w_dtype):
    g = torch.Generator().manual_seed(1)
    A, W = torch.randn(50, 96, generator=g), torch.randn(300, 96, generator=g).to(w_dtype)
    counts = torch.randint(0, 9, (50,), generator=g)
    counts[[0, 7]] = 0  # empty rows
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    cols = torch.randint(0, 300, (int(crow[-1]),), generator=g)
    rows = torch.repeat_interleave(torch.arange(50), counts)
    ref = (A.double() @ W.double().T)[rows, cols]
    out = kernels.sddmm(crow, cols, A, W)
    assert out is not None and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sddmm(crow, cols, A, W).double(), ref, rtol=1e-5, atol=1e-4)


def test_kernels_decline_what_they_cannot_read_and_torch_takes_over(monkeypatch):
    pre = _hard_rows(torch.float32)
    assert kernels.topk(pre.T.contiguous().T, 8) is None  # not row-major
    assert kernels.topk(pre.double(), 8) is None
    assert (
        kernels.sddmm(
            torch.tensor([0, 1]), torch.tensor([0], dtype=torch.int32), torch.ones(1, 4), torch.ones(2, 4)
        )
        is None
    )  # int32 cols
    _assert_topk(pre.T.contiguous().T, 8, *row_topk(pre.T.contiguous().T, 8))
    monkeypatch.setenv("SAE_LAB_KERNELS", "0")
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None and kernels.topk(pre, 8) is None
        _assert_topk(pre, 8, *row_topk(pre, 8))  # the grouped torch path
        crow, cols = torch.tensor([0, 2]), torch.tensor([0, 1])
        W = torch.eye(4)[:2].bfloat16()
        assert sddmm(crow, cols, torch.tensor([[1.0, 2.0, 3.0, 4.0]]), W).tolist() == [1.0, 2.0]
    finally:
        kernels.library.cache_clear()


@needs_cc
def test_project_out_rows__removes_each_rows_component_along_its_decoder_row():
    g0, W = torch.randn(70, 33), torch.nn.functional.normalize(torch.randn(70, 33), dim=1)
    g = g0.clone()
    assert kernels.project_out_rows_(g, W)
    torch.testing.assert_close(g, g0 - (g0 * W).sum(1, keepdim=True) * W)
    assert float((g * W).sum(1).abs().max()) < 1e-5
    assert not kernels.project_out_rows_(g.T, W.T)  # not row-major: the caller's torch line runs


@needs_cc
def test_latent_order__a_stable_sort_by_latent_with_offsets():
    cols = torch.tensor([3, 0, 3, 1, 0, 3, 5])
    order, offsets = kernels.latent_order(cols, 6)
    assert order.tolist() == [1, 4, 3, 0, 2, 5, 6]  # latent 0: entries 1, 4; 1: 3; 3: 0, 2, 5; 5: 6
    assert offsets.tolist() == [0, 2, 3, 3, 6, 6, 7] and offsets.dtype == torch.int32
    big = torch.randint(0, 4608, (50_000,))
    order, offsets = kernels.latent_order(big, 4608)
    assert torch.equal(order, torch.sort(big, stable=True).indices)
    assert torch.equal(offsets.long(), torch.searchsorted(big.sort().values, torch.arange(4609)))
    with pytest.raises(ValueError, match="outside"):
        kernels.latent_order(torch.tensor([0, 6]), 6)


@needs_cc
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [96, 300])  # 300: tails of the 128-dim chunks and the 32-wide bf16 dot products
def test_decode_sddmm__error_and_code_gradient_in_one_pass(w_dtype, d):
    g = torch.Generator().manual_seed(2)
    B, m = 40, 200
    W = torch.randn(m, d, generator=g).to(w_dtype)
    x, bias = torch.randn(B, d, generator=g), torch.randn(d, generator=g)
    counts = torch.randint(0, 7, (B,), generator=g)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    cols = torch.randint(0, m, (int(crow[-1]),), generator=g)
    acts = torch.randn(len(cols), generator=g).clamp_min(
        0
    )  # ~half zero: neither decoded nor given a gradient
    rows = torch.repeat_interleave(torch.arange(B), counts)
    Wd = W.double()
    codes = torch.zeros(B, m, dtype=torch.float64).index_put_((rows, cols), acts.double(), accumulate=True)
    e_ref = codes @ Wd + bias.double() - x.double()
    gv_ref = 0.5 * (e_ref @ Wd.T)[rows, cols] * (acts > 0)
    g_out = torch.empty(B, d)
    gv, sq, gsum = kernels.decode_sddmm(crow, cols, acts, W, bias, x, 0.5, g_out)
    torch.testing.assert_close(g_out.double(), 0.5 * e_ref, rtol=1e-5, atol=1e-4)
    assert sq == pytest.approx(float(e_ref.pow(2).sum()), rel=1e-5)
    torch.testing.assert_close(gsum.double(), 0.5 * e_ref.sum(0), rtol=1e-5, atol=1e-4)
    if w_dtype == torch.float32:
        torch.testing.assert_close(gv.double(), gv_ref, rtol=1e-5, atol=1e-4)
    else:  # g enters the products rounded to bf16 (a bf16 GEMM's inputs): |error| <= 2^-8 sum_i |g_i w_i|
        bound = 0.5 * 2**-8 * (e_ref.abs() @ Wd.abs().T)[rows, cols] + 1e-5
        assert bool(((gv.double() - gv_ref).abs() <= bound).all())
        assert float((gv.double() - gv_ref).abs().max()) > 0, "bf16 rounding expected somewhere"
    assert bool((gv[acts == 0] == 0).all())
    g2 = torch.empty(B, d)
    kernels.decode_sddmm(crow, cols, acts, W, None, x, 0.5, g2)
    torch.testing.assert_close(g2, g_out - 0.5 * bias)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_sorted__latent_major_inputs_and_per_latent_sums(dtype):
    g = torch.Generator().manual_seed(3)
    cols = torch.randint(0, 50, (400,), generator=g)
    order, offsets = kernels.latent_order(cols, 50)
    rows_d, rows_e = (
        torch.randint(0, 99, (400,), dtype=torch.int32),
        torch.randint(0, 99, (400,), dtype=torch.int32),
    )
    w_d, w_e = torch.randn(400, generator=g), torch.randn(400, generator=g)
    rd, re, wd, we, gsum = kernels.gather_sorted(order, offsets, rows_d, rows_e, w_d, w_e, dtype)
    assert torch.equal(rd, rows_d[order]) and torch.equal(re, rows_e[order])
    assert torch.equal(wd, w_d.to(dtype)[order]) and torch.equal(we, w_e.to(dtype)[order])
    serial = torch.zeros(50).index_add_(0, cols, w_e)
    torch.testing.assert_close(gsum, serial, rtol=1e-6, atol=1e-6)


@needs_cc
def test_normalize_rows__unit_rows_zero_rows_kept_and_the_bf16_copy():
    W = torch.randn(30, 70) * 5
    W[4] = 0.0
    ref = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    ref[4] = 0.0
    lp = torch.empty(30, 70, dtype=torch.bfloat16)
    assert kernels.normalize_rows_(W, lp)
    torch.testing.assert_close(W, ref)
    assert torch.equal(lp, W.bfloat16())


def test_decoder_in__the_cached_bf16_copy_only_while_w_dec_is_unchanged():
    W = torch.nn.Parameter(torch.randn(8, 4))
    stale = torch.zeros(8, 4, dtype=torch.bfloat16)
    state = StepState(W_dec_lp=(W._version, stale))
    assert decoder_in(state, W, torch.float32) is W
    assert decoder_in(state, W, torch.bfloat16) is stale  # the trainer vouched for it at this version
    with torch.no_grad():
        W.mul_(2.0)  # an optimizer step, a checkpoint load: the version moves
    fresh = decoder_in(state, W, torch.bfloat16)
    assert fresh is not stale and torch.equal(fresh, W.detach().bfloat16())


def test_normalize_decoder__moves_w_dec_version_so_no_stale_copy_survives():
    from helpers.sae import SAEConfig, make_sae

    sae = make_sae(SAEConfig("topk", 6, 10, k=2), seed=0)
    for state in (StepState(), StepState(matmul_dtype=torch.bfloat16)):  # the C pass and its bf16 copy
        v = sae.W_dec._version
        normalize_decoder_for_step(sae, state)
        assert sae.W_dec._version > v
    v = sae.W_dec._version
    with torch.no_grad():
        sae.normalize_decoder_(copy_to=torch.empty(10, 6, dtype=torch.bfloat16))
    assert sae.W_dec._version > v
