"""Toy superposition data, and SAEs recovering its planted features."""

import time

import pytest
import torch

from helpers.data.toy import TensorBatches, ToyStream, feature_recovery, make_superposition_data
from helpers.training.config import TrainConfig
from helpers.training.train import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_superposition_data__shapes_seeding_and_activation_rate():
    X, dirs = make_superposition_data(64, 32, 5000, 0.05, seed=1)
    X2, dirs2 = make_superposition_data(64, 32, 5000, 0.05, seed=1)
    assert X.shape == (5000, 32) and dirs.shape == (64, 32) and X.dtype == dirs.dtype == torch.float32
    assert torch.equal(X, X2) and torch.equal(dirs, dirs2)
    assert not torch.equal(X, make_superposition_data(64, 32, 5000, 0.05, seed=2)[0])
    assert torch.allclose(dirs.norm(dim=1), torch.ones(64), atol=1e-6)
    # features independent with rate p: a row is all-zero with probability (1 - p)^64 ~ 0.0375
    assert float((X.abs().sum(1) == 0).float().mean()) == pytest.approx(0.95**64, abs=0.012)
    # E||x||^2 = n * p * E[m^2] * 1 + cross terms ~ 64 * 0.05 / 3 (uniform magnitudes)
    assert float(X.pow(2).sum(1).mean()) == pytest.approx(64 * 0.05 / 3, rel=0.15)
    with pytest.raises(ValueError, match="p_active"):
        make_superposition_data(4, 2, 10, 0.0, seed=0)


def test_feature_recovery__is_one_for_the_true_directions_and_permutation_invariant():
    _, dirs = make_superposition_data(16, 8, 10, 0.1, seed=0)
    perm = dirs[torch.randperm(16)] * 3.0
    assert torch.allclose(feature_recovery(dirs, perm), torch.ones(16), atol=1e-6)


def test_toy_stream__skip_tokens_resumes_mid_stream():
    s = ToyStream(16, 8, batch_size=10, p_active=0.2, seed=3, n_batches=4)
    full = torch.cat(list(s))
    s.skip_tokens(25)
    assert torch.equal(torch.cat(list(s)), full[25:]), "skip_tokens must jump to row 25 exactly"
    tb = TensorBatches(full, batch_size=7, seed=1, epochs=2)
    rows = torch.cat(list(tb))
    tb.skip_tokens(47)
    assert rows.shape == (80, 8) and torch.equal(torch.cat(list(tb)), rows[47:])


@pytest.mark.parametrize("arch,extra", [("topk", {"k": 4}), ("relu", {"options": {"l1": 2.0}})])
def test_sae_training__recovers_planted_features(arch, extra, tmp_path):
    # 64 features in 32 dims, ~2.6 active per sample; checked on seeds 0-2 (mean max-cos >= 0.996)
    X, dirs = make_superposition_data(64, 32, 20_000, 0.04, seed=0)
    cfg = TrainConfig(
        d_in=32,
        architecture=arch,
        d_sae=128,
        lr=3e-3,
        batch_size=256,
        total_tokens=100_000,
        warmup_steps=20,
        seed=0,
        log_every=10,
        **extra,
    )
    t0 = time.perf_counter()
    sae = train_sae(cfg, TensorBatches(X, 256, seed=0), tmp_path / arch, progress=False)
    rec = feature_recovery(dirs, sae.W_dec)
    assert float(rec.mean()) >= 0.95, (
        f"{arch}: mean max-cosine {float(rec.mean()):.3f}; features not recovered"
    )
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize(
    "arch,extra", [("topk", {"k": 4}), ("batchtopk", {"k": 4}), ("relu", {"options": {"l1": 2.0}})]
)
def test_bf16_and_fp32_steps__recover_the_toy_features_equally(arch, extra, tmp_path):
    # bf16 GEMMs (fp32 master weights, optimizer and sums) must not cost feature recovery
    X, dirs = make_superposition_data(64, 32, 20_000, 0.04, seed=0)
    rec = {}
    for precision in ("float32", "bfloat16"):
        cfg = TrainConfig(
            d_in=32,
            architecture=arch,
            d_sae=128,
            lr=3e-3,
            batch_size=256,
            total_tokens=100_000,
            warmup_steps=20,
            seed=0,
            log_every=10,
            precision=precision,
            **extra,
        )
        sae = train_sae(cfg, TensorBatches(X, 256, seed=0), tmp_path / f"{arch}-{precision}", progress=False)
        rec[precision] = float(feature_recovery(dirs, sae.W_dec).mean())
    assert rec["float32"] >= 0.95, f"fp32 reference did not recover the features: {rec}"
    assert abs(rec["bfloat16"] - rec["float32"]) <= 0.01, (
        f"{arch}: bf16 MMCS differs from fp32 by more than 0.01: {rec}"
    )


def test_batchtopk__inference_l0_is_within_ten_percent_of_k_after_training(tmp_path):
    # the running threshold of a short run remembers the untrained first batches; the trainer
    # recalibrates it on the final weights, so per-token inference fires ~k latents on average
    X, _ = make_superposition_data(64, 32, 20_000, 0.04, seed=0)
    cfg = TrainConfig(
        d_in=32,
        architecture="batchtopk",
        d_sae=128,
        k=4,
        lr=3e-3,
        batch_size=256,
        total_tokens=60_000,
        warmup_steps=20,
        seed=0,
        log_every=10,
    )
    sae = train_sae(cfg, TensorBatches(X, 256, seed=0), tmp_path / "btk", progress=False)
    l0 = float((sae.encode(X[-4096:]) > 0).sum(1).float().mean())
    assert abs(l0 - 4) <= 0.4, f"BatchTopK inference L0 {l0:.2f} is not within 10% of k=4"
