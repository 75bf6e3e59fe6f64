"""Convergence certificate: drift from init, seed-pair curves from decoder snapshots, the verdict."""

import pytest
import torch

from helpers.analysis import convergence as C
from helpers.data.toy import TensorBatches, make_superposition_data
from helpers.training.config import TrainConfig
from helpers.training.train import train_saes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_drift_from_init__one_for_unmoved_rows_and_hand_value_for_rotated_ones():
    W = torch.eye(4)
    assert C.drift_from_init(W * 3, W) == pytest.approx(1.0)
    rot = torch.tensor([[0.6, 0.8, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0, 0, 1.0, 0]])
    # row cosines to the identity: 0.6, 1, 0, 0 -> median 0.3
    assert C.drift_from_init(rot, W) == pytest.approx(0.3)


@pytest.fixture(scope="module")
def seed_pair(tmp_path_factory):
    """Two seeds trained together on toy data with 16 planted features, snapshots along the way."""
    X, dirs = make_superposition_data(
        16, 16, 20_000, 0.08, seed=5
    )  # not seed 0: the SAE seed 0 init would BE the features
    root = tmp_path_factory.mktemp("pair")
    cfgs = [
        TrainConfig(
            d_in=16,
            architecture="topk",
            d_sae=16,
            k=2,
            lr=5e-3,
            batch_size=256,
            total_tokens=80_000,
            warmup_steps=10,
            seed=s,
            log_every=20,
            snapshot_tokens=(2_560, 80_000 - 80_000 % 256),
        )
        for s in (0, 1)
    ]
    dirs_out = [root / "s0", root / "s1"]
    train_saes(cfgs, TensorBatches(X, 256, seed=0), dirs_out, progress=False)
    return dirs_out


def test_convergence_curve__starts_unshared_at_init_and_ends_shared_on_planted_features(seed_pair):
    curve = C.convergence_curve(*seed_pair)
    assert [p.tokens for p in curve] == [0, 2_560, 79_872]
    first, last = curve[0], curve[-1]
    assert first.drift_a == pytest.approx(1.0) and first.drift_b == pytest.approx(1.0)
    assert first.shared_fraction < 0.2, "two random 16-dim inits must not share latents at cos > 0.7"
    assert last.shared_fraction >= 0.7 and last.median_top1 >= 0.9, (
        f"both seeds find the planted features: {last}"
    )
    assert last.drift_a < 0.6


def test_certify__names_each_failed_criterion(seed_pair):
    curve = C.convergence_curve(*seed_pair)
    good = C.certify(curve, {"s0": curve[-1].drift_a, "s1": curve[-1].drift_b}, C.Criteria(max_drift=0.6))
    assert good.converged and good.line().startswith("Convergence verdict: CONVERGED")
    bad = C.certify(curve[:1], {"a": 0.95, "b": 0.1})
    assert not bad.converged and bad.worst_drift_sae == "a"
    text = bad.line()
    assert "NOT CONVERGED" in text and "seed-shared" in text and "1 SAE(s) still within cos 0.30" in text
    with pytest.raises(ValueError, match="non-empty"):
        C.certify([], {"a": 0.1})
    with pytest.raises(FileNotFoundError, match="snapshot_tokens"):
        C.load_snapshot(seed_pair[0], 12345)
