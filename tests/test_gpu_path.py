"""The device-generic branch of the sparse step (what helpers.sae.fast.ops runs on CUDA), tested on CPU.

The branch is forced on CPU tensors with `ops.GENERIC` and the C kernels are turned off
(SAE_LAB_KERNELS=0), so these CPU tests run exactly the torch ops a GPU runs; `ops.DENSE_ABOVE`
is pinned to 1 (row gathers and embedding bags) or 0 (dense GEMMs) so both sides of the density
switch are checked. The same step tests run on CUDA where a device is present.
"""

import copy

import pytest
import torch

from helpers.sae import SAEConfig, make_sae
from helpers.sae.fast import kernels, ops
from helpers.sae.step_types import StepState
from helpers.sae.topk import TopKOptions

pytestmark = pytest.mark.usefixtures("one_thread")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(params=["cpu path", "gathers", "dense"])
def gpu_path(request, monkeypatch):
    """The device-generic ops on every tensor, no C kernel, one side of DENSE_ABOVE; or ("cpu path")
    the CPU path as it runs by default (C kernels where gcc builds them), which must be unchanged."""
    kernels.library.cache_clear()
    if request.param != "cpu path":
        monkeypatch.setenv("SAE_LAB_KERNELS", "0")
        monkeypatch.setattr(ops, "GENERIC", True)
        monkeypatch.setattr(ops, "DENSE_ABOVE", 1.0 if request.param == "gathers" else 0.0)
    yield request.param
    kernels.library.cache_clear()


def _sae(arch: str, d_in: int, d_sae: int, k: int, device: str, seed: int = 0):
    sae = make_sae(SAEConfig(arch, d_in, d_sae, k=k), seed=seed)
    with torch.no_grad():  # non-trivial biases, so b_dec's and b_enc's gradients are really compared
        g = torch.Generator().manual_seed(seed + 100)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    return sae.to(device)


def _run(sae, x, state):
    out = sae.train_forward(x, state)
    out.loss.backward()
    return out, {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}


def _sparse_and_dense(arch, aux, device, matmul_dtype=torch.float32, B=64, d=24, m=96, k=5):
    """(sparse generic step, dense autograd reference) on one batch: outputs and gradients."""
    sae = _sae(arch, d, m, k, device)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(B, d, generator=g) * 2).to(device)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[:: {"none": 1, "some": 3, "all": 1}[aux]] = aux != "none"  # "all": main top-k read off AuxK's
    res = []
    for sparse in (True, False):
        state = StepState(
            sparse=sparse,
            matmul_dtype=matmul_dtype if sparse else torch.float32,
            options=TopKOptions(auxk_coef=0.0 if aux == "none" else 0.5, k_aux=12),
            dead=dead.to(device),
        )
        res.append(_run(copy.deepcopy(sae), x, state))
    return res


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("aux", ["none", "some", "all"])
def test_generic_step__matches_dense_autograd_loss_and_gradients(arch, aux, device, gpu_path):
    if gpu_path != "cpu path":
        assert kernels.library() is None and ops.generic(torch.zeros(1))
    elif device == "cuda":
        pytest.skip("the CPU path runs on CPU tensors only")
    (o1, g1), (o2, g2) = _sparse_and_dense(arch, aux, device)
    assert float(o1.loss.detach()) == pytest.approx(float(o2.loss.detach()), rel=1e-5)
    assert float(o1.aux) == pytest.approx(float(o2.aux), rel=1e-5)
    assert (float(o1.aux) > 0) == (aux != "none"), "AuxK must fire exactly when latents are dead"
    assert torch.equal(o1.fired.long().cpu(), o2.fired.long().cpu())
    assert g1.keys() == g2.keys() == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for n in g2:
        assert g1[n].dtype == g2[n].dtype == torch.float32 and g1[n].stride() == g2[n].stride()
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-5 * float(g2[n].abs().max())), (
            f"{n} gradient differs"
        )


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_generic_step__bf16_matches_the_cpu_path_on_the_same_selection(arch, dense, monkeypatch):
    """bf16 products: against the CPU path (C kernels where gcc builds them) in bf16. Both select with
    torch.topk on the same bf16 pre-activations (a dense fp32 reference would pick other latents at
    near-ties); what differs is only how the products round."""
    monkeypatch.setattr(kernels, "topk", lambda *a, **kw: None)
    monkeypatch.setattr(ops, "_group_size", lambda m, k: None)
    sae = _sae(arch, 24, 96, 5, "cpu")
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(7)) * 2
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::3] = True
    res = []
    for generic in (False, True):
        if generic:
            monkeypatch.setenv("SAE_LAB_KERNELS", "0")
            kernels.library.cache_clear()
            monkeypatch.setattr(ops, "GENERIC", True)
            monkeypatch.setattr(ops, "DENSE_ABOVE", 0.0 if dense else 1.0)
        state = StepState(
            matmul_dtype=torch.bfloat16, options=TopKOptions(auxk_coef=0.5, k_aux=12), dead=dead
        )
        res.append(_run(copy.deepcopy(sae), x, state))
    kernels.library.cache_clear()
    (o1, g1), (o2, g2) = res
    assert torch.equal(o1.fired, o2.fired), "the same selection on both sides"
    assert float(o1.loss.detach()) == pytest.approx(float(o2.loss.detach()), rel=1e-2)
    assert float(o1.aux) == pytest.approx(float(o2.aux), rel=1e-2)
    for n in g2:
        err = float((g1[n] - g2[n]).abs().max())
        assert err <= 2e-2 * float(g2[n].abs().max()), f"{n}: bf16 gradient off by {err:.3g}"


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_generic_training_run__three_steps_track_the_dense_reference(arch, gpu_path, tmp_path):
    """The whole trainer step (AuxK, clipping, decoder projection, Adam, renorm) on the generic ops."""
    from helpers.training.config import TrainConfig
    from helpers.training.train import TrainingRun

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 24, generator=g) * 2 for _ in range(3)]
    final = []
    for sparse in (True, False):
        cfg = TrainConfig(
            d_in=24, d_sae=96, k=5, architecture=arch, batch_size=64, total_tokens=64 * 50, warmup_steps=1,
            sparse=sparse, precision="float32", device="cpu", dead_window_tokens=64,
        )  # fmt: skip
        run = TrainingRun(cfg, tmp_path / f"{arch}_{sparse}", torch.device("cpu"))
        run.open_log(None)
        losses = []
        for i, x in enumerate(xs):
            run.since_fired[::2] = 10**6  # half the latents dead: AuxK runs every step
            run.step(x, 1.0, i + 1, 64 * (i + 1))
            losses.append(run.last["loss"])
        run.log_f.close()
        final.append((losses, {n: p.detach().clone() for n, p in run.sae.named_parameters()}))
    (l1, p1), (l2, p2) = final
    assert l1 == pytest.approx(l2, rel=1e-4)
    for n in p2:
        torch.testing.assert_close(p1[n], p2[n], rtol=1e-4, atol=1e-4, msg=f"{n} drifted from the reference")


# ---------------------------------------------------------------------------- the primitives
def _ragged(B=30, m=200, d=40, max_per_row=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_per_row, (B,), generator=g)
    counts[[0, 5]] = 0  # empty rows
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    cols = torch.cat([torch.randperm(m, generator=g)[:c] for c in counts.tolist()])
    rows = torch.repeat_interleave(torch.arange(B), counts)
    return crow, cols, rows, torch.randn(B, d, generator=g), torch.randn(m, d, generator=g)


@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("branch", ["dense", "uniform", "ragged"])
def test_sddmm_generic__equals_the_dense_product_at_the_pattern(branch, w_dtype, monkeypatch):
    monkeypatch.setattr(ops, "DENSE_ABOVE", 0.0 if branch == "dense" else 1.0)
    monkeypatch.setattr(ops, "SDDMM_CHUNK", 7)  # several chunks in the ragged branch
    crow, cols, rows, A, W = _ragged()
    k = None
    if branch == "uniform":
        k, B = 6, A.shape[0]
        cols = torch.stack([torch.randperm(W.shape[0])[:k] for _ in range(B)]).reshape(-1)
        crow, rows = torch.arange(0, B * k + 1, k), torch.arange(B).repeat_interleave(k)
    W = W.to(w_dtype)
    out = ops._sddmm_generic(crow, cols, A, W, k)
    assert out.dtype == torch.float32 and out.shape == cols.shape
    Ar = A.to(w_dtype).double()  # bf16 W: A enters the products in bf16, accumulation in fp32
    ref = (Ar @ W.double().T)[rows, cols]
    tol = 1e-5 if w_dtype == torch.float32 else 2**-7  # bf16: the result itself is rounded to bf16
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dense", [True, False])
def test_decode_and_bag_sum_generic__equal_scatter_references(dense, dtype, monkeypatch):
    monkeypatch.setattr(ops, "GENERIC", True)
    monkeypatch.setattr(ops, "DENSE_ABOVE", 0.0 if dense else 1.0)
    crow, cols, rows, A, W = _ragged()
    B, m = A.shape[0], W.shape[0]
    acts = torch.rand(len(cols)).to(dtype)
    sel = ops.Selection(crow, cols, acts)
    x_hat = ops.sparse_decode(sel, acts, W.to(dtype))
    codes = torch.zeros(B, m, dtype=torch.float64).index_put_((rows, cols), acts.double())
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    ref = codes @ W.to(dtype).double()
    torch.testing.assert_close(x_hat.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
    order, offsets = ops.latent_major(cols, m)
    assert offsets.dtype == torch.int32 and torch.equal(order, torch.sort(cols, stable=True).indices)
    rows32 = ops.entry_rows(sel)
    assert rows32.dtype == torch.int32 and torch.equal(rows32.long(), rows)
    gW = ops.latent_major_sum(order, offsets, rows32, acts, A.to(dtype))
    ref = codes.T @ A.to(dtype).double()
    assert gW.shape == (m, A.shape[1])
    torch.testing.assert_close(gW.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_generic_topk_and_aux_selection__torch_topk_and_one_nonzero(monkeypatch):
    assert not ops.GENERIC and not ops.generic(torch.zeros(1)), "CPU tensors keep the C path by default"
    assert ops.generic(torch.zeros(1, device="meta"))
    monkeypatch.setattr(ops, "GENERIC", True)
    pre = torch.randn(16, 300)
    v, i = ops.row_topk(pre, 7, sorted=True)
    assert torch.equal(v, torch.topk(pre, 7, dim=1).values) and torch.equal(pre.gather(1, i), v)
    dead = torch.zeros(300, dtype=torch.bool)
    assert ops.aux_selection(pre, dead, 5) is None and ops.aux_selection(pre, ~dead, 0) is None
    dead[::4] = True
    sel = ops.aux_selection(pre, dead, 5)
    assert sel.k == 5 and bool(dead[sel.cols].all())
    ref = torch.topk(torch.where(dead, pre, float("-inf")), 5, dim=1).values
    assert torch.equal(sel.vals.view(16, 5).sort(1, descending=True).values, ref)
    assert ops.aux_selection(pre, dead, 500).k == 75  # min(k_aux, n_dead)


@needs_cuda
def test_cuda_step_at_the_benchmark_width__matches_dense_and_both_branches_agree(monkeypatch):
    """d 768, m 24,576, k 32 as benchmarks/bench_gpu.py runs it (a smaller batch), AuxK on a third of
    the latents. fp32: against the dense autograd reference. bf16: the gathers and the dense GEMMs on
    the same selection agree, and the loss stays near fp32's."""
    shape = dict(B=512, d=768, m=24_576, k=32)
    (o1, g1), (o2, g2) = _sparse_and_dense("topk", "some", "cuda", **shape)
    assert float(o1.loss.detach()) == pytest.approx(float(o2.loss.detach()), rel=1e-4)
    for n in g2:
        assert torch.allclose(g1[n], g2[n], rtol=1e-3, atol=1e-4 * float(g2[n].abs().max())), n
    bf = []
    for dense_above in (1.0, 0.0):
        monkeypatch.setattr(ops, "DENSE_ABOVE", dense_above)
        bf.append(_sparse_and_dense("topk", "some", "cuda", matmul_dtype=torch.bfloat16, **shape)[0])
    (b1, h1), (b2, h2) = bf
    assert torch.equal(b1.fired, b2.fired)
    assert float(b1.loss.detach()) == pytest.approx(float(o2.loss.detach()), rel=2e-2)
    for n in h2:
        err = float((h1[n] - h2[n]).abs().max())
        assert err <= 2e-2 * float(h2[n].abs().max()), f"{n}: the two bf16 branches differ by {err:.3g}"


@needs_cuda
def test_cuda_collection__model_runs_on_the_gpu_and_the_store_matches_the_cpu_one(tmp_path, monkeypatch):
    """On a lent GPU the collection moves the model there (collect.on_collection_device) and writes
    the same activations as a CPU collection, to fp32 rounding of the two devices' kernels."""
    import numpy as np

    from helpers.data import collect as C

    req = C.make_request("tiny-llama", "synthetic-a", [0, 2], n_tokens=8 * 16, seq_len=16, dtype="float32")
    gpu = C.collect(req, tmp_path / "gpu", progress=False)
    monkeypatch.setattr(C, "collection_device", lambda: "cpu")
    cpu = C.collect(req, tmp_path / "cpu", progress=False)
    for layer in (0, 2):
        np.testing.assert_allclose(gpu.shard_acts(0, layer), cpu.shard_acts(0, layer), rtol=1e-4, atol=1e-4)
