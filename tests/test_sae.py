"""SAE architectures: interface, hand-computed activations, sparse-vs-dense training step,
norm-scale folding, and SAELens-format save/load (ours, SAELens v6 files, the pre-v6 layout)."""

import copy
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from helpers.sae import (
    REGISTRY,
    SAEConfig,
    SAEError,
    geometric_median,
    load_sae,
    make_options,
    make_sae,
    save_sae,
)
from helpers.sae.batchtopk import batch_topk_codes, batch_topk_selection
from helpers.sae.fast import kernels
from helpers.sae.fast.ops import _grouped_topk, row_topk
from helpers.sae.jumprelu import _JumpReLUFn, _StepFn
from helpers.sae.step_types import StepState
from helpers.sae.topk import topk_codes

ARCHS = sorted(a for a in REGISTRY if not REGISTRY[a].__name__.endswith("CrosscoderSAE"))  # one-layer
# SAEs; the crosscoders (several layers per input) have tests/test_crosscoder.py


pytestmark = pytest.mark.usefixtures("one_thread")


def build(arch: str, d_in: int = 12, d_sae: int = 40, k: int = 4, seed: int = 0):
    sae = make_sae(SAEConfig(arch, d_in, d_sae, k=k if REGISTRY[arch].uses_k else None), seed=seed)
    with torch.no_grad():  # non-trivial biases and extras so folding / saving is really tested
        g = torch.Generator().manual_seed(seed + 100)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1 if arch != "gated" else torch.zeros(d_sae))
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
        if arch == "jumprelu":
            sae.set_threshold(torch.rand(d_sae, generator=g) * 0.3 + 0.05)
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            sae.topk_threshold.fill_(0.2)
        if arch == "gated":
            for n in ("b_gate", "r_mag", "b_mag"):
                getattr(sae, n).copy_(torch.randn(d_sae, generator=g) * 0.1)
    return sae


# ---------------------------------------------------------------------------- interface
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_decode__accept_leading_dims_and_match_forward(arch):
    sae = build(arch)
    x = torch.randn(3, 5, 12)
    codes = sae.encode(x)
    assert codes.shape == (3, 5, 40) and sae.decode(codes).shape == (3, 5, 12)
    x_hat, c2 = sae(x, return_codes=True)
    assert torch.equal(c2, codes) and torch.allclose(x_hat, codes @ sae.W_dec + sae.b_dec)
    assert (codes >= 0).all(), "codes must be non-negative for every architecture"
    assert sae.W_enc.shape == (12, 40) and sae.W_dec.shape == (40, 12)


def test_encode__width_mismatch_error_names_both_widths():
    sae = build("topk", d_in=576)
    with pytest.raises(
        SAEError, match=r"width 768 but the SAE expects d_in=576; did you collect another model"
    ):
        sae.encode(torch.randn(2, 768))


def test_config__rejects_k_above_d_sae_and_unknown_architecture():
    with pytest.raises(SAEError, match="k must be in"):
        SAEConfig("topk", 8, 16, k=17)
    with pytest.raises(
        SAEError,
        match="valid: batchtopk, batchtopk_crosscoder, crosscoder, gated, jumprelu, "
        "matryoshka_batchtopk, relu, topk",
    ):
        SAEConfig("relu2", 8, 16)


def test_init__decoder_rows_unit_norm_and_encoder_is_transpose():
    sae = make_sae(SAEConfig("topk", 12, 40, k=3), seed=3)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(40), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    relu = make_sae(SAEConfig("relu", 12, 40), seed=3)
    assert torch.allclose(relu.W_dec.norm(dim=1), torch.full((40,), 0.1), atol=1e-6), (
        "April update init norm 0.1"
    )


# ---------------------------------------------------------------------------- hand-computed activations
def test_topk_codes__keep_k_largest_then_relu():
    pre = torch.tensor([[1.0, 3.0, 2.0, -1.0], [-3.0, -1.0, -2.0, 0.5]])
    assert topk_codes(pre, 2).tolist() == [[0.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.5]]


def _assert_same_topk(pre, k, v, i):
    """v, i [B, k] is a top-k of pre's rows: distinct indices, values pre[i], the same values as
    torch.topk (a tie may take another of the tied entries) and, on rows without ties at the k-th
    value, the same indices."""
    ref_v, ref_i = torch.topk(pre, k, dim=1)
    assert torch.equal(pre.gather(1, i), v)
    assert all(len(set(r)) == k for r in i.tolist())
    assert torch.equal(v.sort(1, descending=True).values, ref_v)
    kth = ref_v[:, -1:]
    untied = (pre == kth).sum(1) == 1
    assert torch.equal(i.sort(1).values[untied], ref_i.sort(1).values[untied])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk__the_same_set_as_torch_topk_with_ties_inf_and_equal_rows(dtype):
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 1152, generator=g)
    pre[1] = 0.5  # all equal
    pre[2] = float("-inf")  # all -inf
    pre[3, ::2] = float("-inf")  # half -inf
    pre[4] = torch.randint(0, 3, (1152,), generator=g).float()  # three values, ties everywhere
    pre[5, :40] = 9.0  # the winners inside few groups (strided groups: columns j % G)
    pre[6, ::36] = 7.0  # ... and all in one strided group
    pre = pre.to(dtype)
    for k in (1, 8, 32):
        _assert_same_topk(pre, k, *row_topk(pre, k))
        _assert_same_topk(pre, k, *_grouped_topk(pre, k, 1152 // k, False))  # G == k: every group a candidate
    for k in (1000, 1152):  # k close to d_sae: plain torch.topk
        _assert_same_topk(pre, k, *row_topk(pre, k))
    v, _ = row_topk(pre, 8, sorted=True)
    assert torch.equal(v, torch.topk(pre, 8, dim=1).values)


def test_batch_topk__selects_b_times_k_over_the_whole_batch():
    pre = torch.tensor([[5.0, 4.0, 3.0], [0.1, 0.2, 2.5]])  # B=2, k=1 -> the 2 largest overall: 5, 4
    assert batch_topk_codes(pre, 1).tolist() == [[5.0, 4.0, 0.0], [0.0, 0.0, 0.0]]


def test_batch_topk_selection__equals_flat_topk_even_with_a_huge_row():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 200, generator=g)
    pre[7] *= 50  # a BOS-like row that wins far more than 2k of the batch's slots
    pre[9] += 3
    sel = batch_topk_selection(pre, 4)
    dense = torch.zeros_like(pre)
    rows = torch.repeat_interleave(torch.arange(64), sel.crow[1:] - sel.crow[:-1])
    dense[rows, sel.cols] = sel.vals.relu()
    assert torch.equal(dense, batch_topk_codes(pre, 4)), "widening of rows with many winners is wrong"
    assert int(sel.crow[8] - sel.crow[7]) > 8


def test_jumprelu_pseudo_derivatives__hand_computed():
    z = torch.tensor([[0.52, 0.49, 1.0]])
    theta = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    out = _JumpReLUFn.apply(z, theta, 0.1)
    assert out[0].tolist() == pytest.approx([0.52, 0.0, 1.0])
    out.sum().backward()
    # d/dtheta = -(theta/eps) K((z-theta)/eps): |0.2| and |-0.1| < 1/2 -> -5 each; (1-0.5)/0.1 = 5 -> 0
    assert theta.grad.tolist() == pytest.approx([-5.0, -5.0, 0.0])
    theta.grad = None
    _StepFn.apply(z, theta, 0.1).sum().backward()
    assert theta.grad.tolist() == pytest.approx([-10.0, -10.0, 0.0])


def test_gated_encode__gate_decides_and_magnitude_path_scales():
    sae = make_sae(SAEConfig("gated", 2, 2), seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_dec.zero_()
        sae.b_gate.copy_(torch.tensor([0.0, -5.0]))  # latent 1 gated off
        sae.r_mag.copy_(torch.tensor([math.log(2.0), 0.0]))
        sae.b_mag.copy_(torch.tensor([1.0, 0.0]))
    assert sae.encode(torch.tensor([[3.0, 4.0]])).tolist() == [[7.0, 0.0]]  # 2*3 + 1; gate(4-5) < 0


# ---------------------------------------------------------------------------- training step
@pytest.fixture(params=["C kernels", "torch ops"])
def step_ops(request, monkeypatch):
    """The sparse step with its C kernels (helpers/sae/fast/kernels.py) and with the torch fallbacks."""
    if request.param == "torch ops":
        monkeypatch.setenv("SAE_LAB_KERNELS", "0")
    kernels.library.cache_clear()
    yield request.param
    kernels.library.cache_clear()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk", "relu", "relu_sparse"])
# few: n_dead <= k_aux; some: k_aux < n_dead <= 4 k_aux (both AuxK's GEMM form, the latter masked to each
# token's top-k_aux); many: n_dead > 4 k_aux (the sparse AuxK); all: the main top-k read off AuxK's
@pytest.mark.parametrize("aux", ["none", "some", "few", "many", "all"])
def test_fast_step__matches_dense_autograd_loss_and_gradients(arch, aux, step_ops):
    assert (kernels.library() is not None) == (step_ops == "C kernels" and shutil.which("gcc") is not None)
    sparse_relu = arch == "relu_sparse"  # force the nonzero-pairs form of the ReLU step
    arch = arch.removesuffix("_sparse")
    sae = build(arch, d_in=24, d_sae=96, k=5)
    x = torch.randn(64, 24) * 2
    dead = torch.zeros(96, dtype=torch.bool)
    dead[:: {"none": 1, "some": 3, "few": 10, "many": 1, "all": 1}[aux]] = aux != "none"
    if aux == "many":
        dead[60:] = False  # 60 dead > 4 x k_aux = 48
    res = []
    for sparse in (True, False):
        state = StepState(
            sparse=sparse,
            options=make_options(
                arch,
                l1=0.7,
                auxk_coef=0.0 if aux == "none" else 0.5,
                k_aux=12,
                sparse_below=1.01 if sparse_relu else 0.0,
            ),
            dead=dead,
        )
        s = copy.deepcopy(sae)
        out = s.train_forward(x, state)
        out.loss.backward()
        res.append((out, {n: p.grad for n, p in s.named_parameters() if p.grad is not None}))
    (o1, g1), (o2, g2) = res
    assert float(o1.loss.detach()) == pytest.approx(float(o2.loss.detach()), rel=1e-5)
    assert float(o1.aux) == pytest.approx(float(o2.aux), rel=1e-5)
    assert (float(o1.aux) > 0) == (aux != "none" and arch != "relu"), (
        "AuxK must fire exactly when latents are dead"
    )
    assert torch.equal(o1.fired.long(), o2.fired.long())
    assert g1.keys() == g2.keys() == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for n in g2:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-5 * float(g2[n].abs().max())), (
            f"{n} gradient differs"
        )


# ---------------------------------------------------------------------------- folding / init
@pytest.mark.parametrize("arch", ARCHS)
def test_fold_norm_scale__raw_inputs_give_scaled_results_divided_by_s(arch):
    sae, s = build(arch), 3.7
    x = torch.randn(50, 12) * 5
    folded = sae.fold_norm_scale(s)
    assert torch.allclose(folded.encode(x), sae.encode(x * s) / s, atol=1e-5)
    assert torch.allclose(folded(x), sae(x * s) / s, atol=1e-5)
    assert torch.equal(folded.W_dec, sae.W_dec), "folding must keep decoder rows (directions and norms)"


def test_geometric_median__is_robust_to_an_outlier_unlike_the_mean():
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0], [100.0, 100.0]])
    med = geometric_median(pts, max_iter=500, tol=1e-9)
    assert med.norm() < 0.5 < pts.mean(0).norm(), "Weiszfeld should stay near the 5 clustered points"
    sym = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]) + torch.tensor([2.0, 3.0])
    assert torch.allclose(geometric_median(sym), torch.tensor([2.0, 3.0]), atol=1e-5)


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load__round_trip_gives_identical_outputs_and_saelens_names(arch, tmp_path):
    sae = build(arch)
    sae.cfg.metadata.update(seed=3, corpus="fineweb", layer=5, hook_name="blocks.5.hook_resid_pre")
    save_sae(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "matryoshka_batchtopk": "jumprelu"}.get(arch, arch)
    assert cfg["metadata"]["hook_name"] == "blocks.5.hook_resid_pre" and cfg["metadata"]["seed"] == 3
    back = load_sae(tmp_path / "s")
    x = torch.randn(20, 12)
    assert type(back) is type(sae) and back.cfg.metadata["corpus"] == "fineweb"
    assert torch.allclose(back(x), sae(x), atol=1e-6) and torch.equal(back.encode(x) > 0, sae.encode(x) > 0)


def test_load__into_another_architecture_names_both(tmp_path):
    save_sae(build("topk"), tmp_path / "s")
    with pytest.raises(SAEError, match=r"holds a 'topk' SAE, not 'relu'"):
        load_sae(tmp_path / "s", architecture="relu")


def _write_saelens(path, cfg: dict, tensors: dict) -> None:
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))


def _v6_cfg(arch: str, d_in: int, d_sae: int, **extra) -> dict:
    # Layout of SAEConfig.to_dict() in decoderesearch/SAELens sae_lens/saes/sae.py (v6): base fields,
    # "metadata" (SAEMetadata.to_dict) and "architecture"; topk adds k and rescale_acts_by_decoder_norm
    # (sae_lens/saes/topk_sae.py TopKSAEConfig).
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.18.0",
            "sae_lens_training_version": "6.18.0",
            "model_name": "gpt2",
            "hook_name": "blocks.8.hook_resid_pre",
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": 128,
            "dataset_path": "Skylion007/openwebtext",
        },
        "architecture": arch,
        **extra,
    }


def test_load_saelens_v6_topk__folds_rescale_acts_by_decoder_norm(tmp_path):
    g = torch.Generator().manual_seed(1)
    W_enc, W_dec = torch.randn(6, 10, generator=g), torch.randn(10, 6, generator=g) * 3
    b_enc, b_dec = torch.randn(10, generator=g), torch.randn(6, generator=g)
    _write_saelens(
        tmp_path / "t",
        _v6_cfg("topk", 6, 10, k=3, rescale_acts_by_decoder_norm=True),
        {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec},
    )
    sae = load_sae(tmp_path / "t")
    x = torch.randn(7, 6, generator=g)
    # SAELens TopKSAE with rescale: hidden_pre * ||W_dec_j||, topk, decode with acts / ||W_dec_j||
    n = W_dec.norm(dim=1)
    codes = topk_codes(((x - b_dec) @ W_enc + b_enc) * n, 3)
    assert torch.allclose(sae(x), (codes / n) @ W_dec + b_dec, atol=1e-5)
    assert sae.cfg.k == 3 and sae.cfg.metadata["hook_name"] == "blocks.8.hook_resid_pre"


def test_load_saelens_v6_jumprelu_and_gated__use_their_tensor_names(tmp_path):
    g = torch.Generator().manual_seed(2)
    t = {
        "W_enc": torch.randn(6, 10, generator=g),
        "W_dec": torch.randn(10, 6, generator=g),
        "b_enc": torch.randn(10, generator=g),
        "b_dec": torch.randn(6, generator=g),
        "threshold": torch.rand(10, generator=g),
    }  # sae_lens/saes/jumprelu_sae.py JumpReLUSAE
    _write_saelens(tmp_path / "j", _v6_cfg("jumprelu", 6, 10), t)
    x = torch.randn(9, 6, generator=g)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    assert torch.allclose(load_sae(tmp_path / "j").encode(x), pre.relu() * (pre > t["threshold"]), atol=1e-6)
    gt = {
        "W_enc": t["W_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
        "b_gate": torch.randn(10, generator=g),
        "r_mag": torch.randn(10, generator=g) * 0.1,
        "b_mag": torch.randn(10, generator=g),
    }  # gated_sae.py
    _write_saelens(tmp_path / "g", _v6_cfg("gated", 6, 10), gt)
    h = (x - gt["b_dec"]) @ gt["W_enc"]
    expect = (h + gt["b_gate"] > 0) * (h * gt["r_mag"].exp() + gt["b_mag"]).relu()
    assert torch.allclose(load_sae(tmp_path / "g", architecture="gated").encode(x), expect, atol=1e-6)


def test_load_saelens_batchtopk__training_save_and_jumprelu_export(tmp_path):
    g = torch.Generator().manual_seed(3)
    t = {
        "W_enc": torch.randn(6, 10, generator=g),
        "W_dec": torch.randn(10, 6, generator=g),
        "b_enc": torch.randn(10, generator=g),
        "b_dec": torch.randn(6, generator=g),
    }
    # BatchTopKTrainingSAE keeps a float64 scalar buffer topk_threshold (sae_lens/saes/batchtopk_sae.py)
    _write_saelens(
        tmp_path / "b",
        _v6_cfg("batchtopk", 6, 10, k=2.0, topk_threshold_lr=0.01),
        t | {"topk_threshold": torch.tensor(0.3, dtype=torch.float64)},
    )
    # ... and save_inference_model writes it as a JumpReLU with threshold = ones * topk_threshold
    _write_saelens(tmp_path / "j", _v6_cfg("jumprelu", 6, 10), t | {"threshold": torch.full((10,), 0.3)})
    x = torch.randn(9, 6, generator=g)
    a, b = load_sae(tmp_path / "b"), load_sae(tmp_path / "j")
    assert a.architecture == "batchtopk" and b.architecture == "jumprelu"
    assert torch.allclose(a.encode(x), b.encode(x), atol=1e-6) and (a.encode(x) > 0).any()


def test_load_pre_v6_jbloom_layout__standard_relu_with_hook_metadata(tmp_path):
    # Flat cfg.json of the old releases (jbloom/GPT2-Small-SAEs-Reformatted, gpt2-small-res-jb): no
    # "architecture", hook_point / hook_point_layer, dtype "torch.float32"; renames as in SAELens's
    # sae_lens/loading/pretrained_sae_loaders.py handle_pre_6_0_config.
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "d_in": 6,
        "d_sae": 10,
        "dtype": "torch.float32",
        "device": "mps",
        "seed": 42,
        "b_dec_init_method": "geometric_median",
        "expansion_factor": 32,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "train_batch_size": 4096,
        "apply_b_dec_to_input": True,
    }
    g = torch.Generator().manual_seed(4)
    t = {
        "W_enc": torch.randn(6, 10, generator=g),
        "W_dec": torch.randn(10, 6, generator=g),
        "b_enc": torch.randn(10, generator=g),
        "b_dec": torch.randn(6, generator=g),
    }
    _write_saelens(tmp_path / "old", cfg, t)
    sae = load_sae(tmp_path / "old")
    assert sae.architecture == "relu"
    assert sae.cfg.metadata["hook_name"] == "blocks.8.hook_resid_pre" and sae.cfg.metadata["hook_layer"] == 8
    x = torch.randn(5, 6, generator=g)
    assert torch.allclose(sae.encode(x), ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu(), atol=1e-6)


def test_load__shape_mismatch_names_the_tensor(tmp_path):
    _write_saelens(
        tmp_path / "bad",
        _v6_cfg("standard", 6, 10),
        {
            "W_enc": torch.zeros(6, 11),
            "W_dec": torch.zeros(10, 6),
            "b_enc": torch.zeros(10),
            "b_dec": torch.zeros(6),
        },
    )
    with pytest.raises(SAEError, match=r"tensor W_enc has shape \(6, 11\)"):
        load_sae(tmp_path / "bad")


@pytest.mark.parametrize("seed", range(4))
def test_batch_topk_selection__equals_flat_topk_on_uneven_rows_and_ties(seed):
    """Rows of very different scale (real activations: a few high-norm tokens win most slots) and
    exact ties at the cut: still exactly B*k entries, the same values as a flat topk, row-major CSR."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(128, 96, generator=g) * torch.rand(128, 1, generator=g).pow(4).mul(20)
    pre[5, :40] = 7.0  # a run of equal values straddling the cut
    k = 6
    sel = batch_topk_selection(pre, k)
    assert len(sel.vals) == 128 * k and int(sel.crow[-1]) == 128 * k
    want = torch.topk(pre.reshape(-1), 128 * k).values
    torch.testing.assert_close(sel.vals.sort(descending=True).values, want, rtol=0, atol=0)
    rows = torch.repeat_interleave(torch.arange(128), sel.crow[1:] - sel.crow[:-1])
    assert torch.equal(pre[rows, sel.cols], sel.vals), "cols/rows must point at the selected values"
    flat = rows * 96 + sel.cols
    assert bool((flat[1:] > flat[:-1]).all()), "entries must be row-major, ascending, without repeats"


def test_batch_topk_selection__exact_when_the_sample_misjudges_the_cut(monkeypatch):
    """The strided sample sees only the large entries (every other one), so its cut leaves fewer than
    B*k entries above it: the certain lower bound takes over and the selection is still exact."""
    from helpers.sae import batchtopk

    calls = []
    row_topk_ = batchtopk.row_topk
    monkeypatch.setattr(batchtopk, "row_topk", lambda *a, **kw: calls.append(1) or row_topk_(*a, **kw))
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(512, 256, generator=g)
    pre.view(-1)[::2] += 10  # the sample (stride 2 at this size) holds exactly these
    assert pre.numel() // batchtopk.SAMPLE == 2
    sel = batch_topk_selection(pre, 8)
    assert calls == [1], "the fallback to the certain lower bound did not run"
    want = torch.topk(pre.reshape(-1), 512 * 8).values
    torch.testing.assert_close(sel.vals.sort(descending=True).values, want, rtol=0, atol=0)
