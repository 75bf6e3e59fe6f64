"""Matryoshka BatchTopK SAE: the nested-prefix loss against a loop written by hand, the fast step
against autograd, the group sizes, SAELens's inference layout, and what nesting buys on toy data."""

import copy
import json

import pytest
import torch

from helpers.data.toy import TensorBatches, make_superposition_data
from helpers.sae import SAEConfig, SAEError, load_sae, make_options, make_sae, save_sae
from helpers.sae.batchtopk import batch_topk_codes
from helpers.sae.matryoshka import prefix_widths
from helpers.sae.step_types import StepState
from helpers.training.config import TrainConfig
from helpers.training.train import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def build(d_in=10, d_sae=48, k=4, dtype="float64", seed=0, fractions=(0.25, 0.25, 0.5)):
    sae = make_sae(SAEConfig("matryoshka_batchtopk", d_in, d_sae, k=k, dtype=dtype), seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.5)
    sae.init_training(make_options("matryoshka_batchtopk", group_fractions=fractions))
    return sae


def hand_loss(sae, x, weights):
    """The Matryoshka reconstruction term, one prefix at a time, written out."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    codes = batch_topk_codes(pre, sae.cfg.k)
    total = 0.0
    for w, end in zip(weights, sae.widths):
        x_hat = sae.b_dec + sum(codes[:, j, None] * sae.W_dec[j] for j in range(end))
        total = total + w * ((x - x_hat) ** 2).sum(1).mean()
    return total.detach()


@pytest.mark.parametrize("sparse", [False, True])
def test_loss__equals_the_per_prefix_loop_by_hand_in_float64(sparse):
    sae = build()
    assert sae.widths == (12, 24, 48)
    x = torch.randn(32, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    state = StepState(sparse=sparse, options=make_options("matryoshka_batchtopk", auxk_coef=0.0))
    out = sae.train_forward(x, state)
    expected = hand_loss(sae, x, (1 / 3, 1 / 3, 1 / 3))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    full = hand_loss(sae, x, (0.0, 0.0, 1.0))  # the logged mse: the whole dictionary's
    assert float(out.mse) == pytest.approx(float(full), rel=1e-5)
    assert abs(float(expected) - float(full)) > 0.1 * float(full), "the inner prefixes must count"


@pytest.mark.parametrize("aux", [False, True])
def test_fast_step__gradients_equal_autograd_with_uneven_weights(aux):
    sae = build(dtype="float32", d_in=16, d_sae=64, k=5)
    opts = make_options(
        "matryoshka_batchtopk", group_fractions=(0.25, 0.25, 0.5), auxk_coef=0.5 if aux else 0.0, k_aux=8
    )
    sae.init_training(opts)
    sae._weights = (0.5, 0.2, 0.3)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = aux
    x = torch.randn(96, 16, generator=torch.Generator().manual_seed(2)) * 2
    res = []
    for sparse in (True, False):
        s = copy.deepcopy(sae)
        out = s.train_forward(x, StepState(sparse=sparse, options=opts, dead=dead))
        out.loss.backward()
        res.append((out, {n: p.grad for n, p in s.named_parameters()}))
    (o1, g1), (o2, g2) = res
    assert float(o1.loss.detach()) == pytest.approx(float(o2.loss.detach()), rel=1e-5)
    assert (float(o1.aux) > 0) == aux and float(o1.aux) == pytest.approx(float(o2.aux), rel=1e-5)
    for n in g2:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-5 * float(g2[n].abs().max())), n


def test_one_group__is_exactly_the_batchtopk_loss():
    m = build(dtype="float32", fractions=(1.0,))
    b = make_sae(SAEConfig("batchtopk", 10, 48, k=4), seed=0)
    b.load_state_dict(m.state_dict())
    x = torch.randn(40, 10)
    for sparse in (True, False):
        lm = m.train_forward(x, StepState(sparse=sparse, options=make_options("matryoshka_batchtopk")))
        lb = b.train_forward(x, StepState(sparse=sparse, options=make_options("batchtopk")))
        assert float(lm.loss.detach()) == pytest.approx(float(lb.loss.detach()), rel=1e-6)


def test_prefix_widths__dictionary_learning_group_sizes_and_bad_fractions():
    # dictionary_learning: int(f * d_sae) for all but the last fraction, the remainder last
    assert prefix_widths(2304) == (72, 216, 504, 1080, 2304)
    assert prefix_widths(100, (0.3, 0.3, 0.4)) == (30, 60, 100)
    with pytest.raises(SAEError, match="empty group"):
        prefix_widths(16, (0.01, 0.99))
    with pytest.raises(SAEError, match="sum to 1"):
        make_options("matryoshka_batchtopk", group_fractions=(0.5, 0.4))


def test_save__saelens_jumprelu_export_with_widths_and_back(tmp_path):
    sae = build(dtype="float32")
    sae.topk_threshold.fill_(0.25)
    save_sae(sae, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg
    meta = cfg["metadata"]
    assert meta["training_architecture"] == "matryoshka_batchtopk"
    assert meta["training_architecture_details"] == {"matryoshka_widths": [12, 24, 48], "k": 4}
    back = load_sae(tmp_path / "m")
    x = torch.randn(30, 10) * 2
    assert back.architecture == "matryoshka_batchtopk" and back.widths == (12, 24, 48) and back.cfg.k == 4
    assert torch.equal(back.encode(x), sae.encode(x)) and (sae.encode(x) > 0).any()
    as_jumprelu = load_sae(tmp_path / "m", architecture="matryoshka_batchtopk")
    assert torch.equal(as_jumprelu.encode(x), sae.encode(x))


def test_load__differing_thresholds_name_the_fix(tmp_path):
    sae = build(dtype="float32")
    save_sae(sae, tmp_path / "m")
    from safetensors.torch import load_file, save_file

    t = load_file(tmp_path / "m" / "sae_weights.safetensors")
    t["threshold"] = torch.linspace(0, 1, 48)
    save_file(t, tmp_path / "m" / "sae_weights.safetensors")
    with pytest.raises(SAEError, match="architecture='jumprelu'"):
        load_sae(tmp_path / "m")


@torch.no_grad()
def _fvu_of_first(sae, X, width):
    codes = sae.encode(X)
    codes[:, width:] = 0
    x_hat = codes @ sae.W_dec + sae.b_dec
    return float(((X - x_hat) ** 2).sum() / ((X - X.mean(0)) ** 2).sum())


def test_training__the_first_prefix_reconstructs_where_batchtopks_first_latents_do_not(tmp_path):
    # features with frequencies spread over a decade: a nested dictionary puts the frequent ones first
    freq = torch.logspace(0, -1, 64)
    _, dirs = make_superposition_data(64, 24, 16, 1.0, seed=1)
    active = torch.rand(8192, 64, generator=torch.Generator().manual_seed(3)) < 0.12 * freq
    X = (active * torch.rand(8192, 64, generator=torch.Generator().manual_seed(4))) @ dirs
    fvus = {}
    for arch in ("batchtopk", "matryoshka_batchtopk"):
        cfg = TrainConfig(
            d_in=24,
            architecture=arch,
            d_sae=64,
            k=4,
            batch_size=256,
            total_tokens=256 * 400,
            lr=3e-3,
            warmup_steps=10,
            options={"group_fractions": (0.25, 0.25, 0.5)},
        )
        sae = train_sae(cfg, TensorBatches(X, 256, seed=0), tmp_path / arch, progress=False)
        fvus[arch] = (_fvu_of_first(sae, X, 16), _fvu_of_first(sae, X, 64))
    (b16, b64), (m16, m64) = fvus["batchtopk"], fvus["matryoshka_batchtopk"]
    assert m16 < 0.75 * b16, fvus  # its first quarter is a dictionary on its own
    assert m64 < b64 + 0.08, fvus  # at a modest cost for the whole
