"""Tied SAEs keep W_enc = W_dec^T and follow the gradient of the tied loss; the width-stitching
classifier labels planted identical, split and novel latents."""

import numpy as np
import pytest
import torch

from helpers.analysis.stitching import stitching_split
from helpers.analysis.tied import encoder_decoder_cosine
from helpers.sae import SAEConfig, load_sae, make_sae
from helpers.sae.step_types import StepState
from helpers.sae.topk import topk_codes
from helpers.training.config import TrainConfig
from helpers.training.train import train_saes

pytestmark = pytest.mark.usefixtures("one_thread")


def batches(d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.nn.functional.normalize(torch.randn(48, d, generator=g), dim=1)
    while True:
        yield ((torch.rand(512, 48, generator=g) < 0.06) * torch.rand(512, 48, generator=g)) @ F


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_tied__encoder_is_exactly_the_decoder_transpose_after_training_steps(arch, tmp_path):
    cfg = TrainConfig(
        d_in=24,
        architecture=arch,
        d_sae=64,
        k=4,
        tied=True,
        batch_size=512,
        total_tokens=512 * 40,
        warmup_steps=2,
        options={"l1": 0.5},
        snapshot_tokens=(512 * 20,),
    )
    sae = train_saes([cfg], batches(), [tmp_path / "t"], progress=False)[0]
    init = make_sae(cfg.sae_config(), seed=0)
    assert not torch.allclose(sae.W_dec, init.W_dec, atol=1e-3), "training must have moved the decoder"
    assert torch.equal(sae.W_enc, sae.W_dec.t()), "tied: W_enc must equal W_dec^T exactly"
    back = load_sae(tmp_path / "t")
    assert back.cfg.tied and torch.equal(back.W_enc, back.W_dec.t())
    np.testing.assert_allclose(encoder_decoder_cosine(back), 1, atol=1e-6)


def test_tied__step_follows_the_gradient_of_the_tied_loss():
    """Our sparse step + tie_grads_ gives the decoder the gradient autograd finds for
    loss(W) with W_enc := W^T (no AuxK), and no step to the encoder."""
    torch.manual_seed(0)
    sae = make_sae(SAEConfig("topk", 10, 30, k=3, tied=True), seed=2)
    x = torch.randn(64, 10)
    out = sae.train_forward(x, StepState(sparse=True))
    out.loss.backward()
    sae.tie_grads_()
    assert sae.W_enc.grad is None
    W = sae.W_dec.detach().clone().requires_grad_(True)
    b_enc, b_dec = sae.b_enc.detach(), sae.b_dec.detach()
    codes = topk_codes((x - b_dec) @ W.t() + b_enc, 3)
    loss = ((codes @ W + b_dec - x) ** 2).sum(1).mean()
    loss.backward()
    assert float(out.loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(sae.W_dec.grad, W.grad, rtol=1e-4, atol=1e-6)


def test_stitching__labels_planted_identical_split_and_novel_latents():
    g = torch.Generator().manual_seed(0)
    d = 64
    narrow = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1)
    noise = lambda s: s * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)  # noqa: E731
    wide = torch.stack(
        [
            narrow[0],  # identical
            narrow[1] + noise(0.4),  # split: two children of narrow 1
            narrow[1] + noise(0.4),
            torch.randn(d, generator=g),  # novel
            narrow[2] + noise(0.2),  # identical (a slightly moved copy)
            0.5 * narrow[3] + noise(1.0),  # novel: too far from narrow 3 (cos ~0.45)
        ]
    )
    s = stitching_split(narrow, wide)
    assert s.kind.tolist() == ["identical", "split", "split", "novel", "identical", "novel"]
    assert s.parent.tolist()[:3] == [0, 1, 1] and s.parent[3] == -1
    assert s.fractions() == pytest.approx({"identical": 2 / 6, "split": 2 / 6, "novel": 2 / 6})
    assert s.examples("novel", 1) == [int(np.argmin(np.where(s.kind == "novel", s.best_cos, 9)))]
