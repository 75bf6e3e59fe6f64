"""A new architecture defined here, in the test file only, trains, saves in SAELens format, loads and
is matched against a TopK SAE, with no edit under helpers/ (an architecture is one module).

The variant: TopK over pre-activations shifted by a learned per-latent threshold,
codes = ReLU(TopK_k(pre - theta)), theta = ReLU(threshold) >= 0. It has its own options dataclass
(the threshold's initial value and an L2 pull on it), its own tensor on disk (`threshold`), its own
SAELens name, and only a plain autograd loss (no fast step: `train_forward` falls back to `loss`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from helpers.analysis.similarity import hungarian_match, null_shared_fraction, shared_fraction
from helpers.data.toy import TensorBatches, feature_recovery, make_superposition_data
from helpers.sae import REGISTRY, SAE, load_sae, register, save_sae
from helpers.sae.step_types import ArchOptions, StepState, TrainOutput, mse_per_token
from helpers.sae.topk import topk_codes
from helpers.training.config import TrainConfig
from helpers.training.train import train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class ThresholdTopKOptions(ArchOptions):
    """Options of the test's threshold TopK."""

    init_threshold: float = 0.05
    """Initial theta of every latent."""
    threshold_l2: float = 1e-3
    """Coefficient of mean_j theta_j^2 in the loss (keeps theta from running off)."""

    def check(self) -> None:
        self._positive("threshold_l2")


class ThresholdTopKSAE(SAE):
    """codes = ReLU(TopK_k(pre - ReLU(threshold))); decoder rows at unit norm."""

    architecture = "threshold_topk_test"
    Options = ThresholdTopKOptions
    uses_k = True
    saelens_name = "threshold_topk_test"
    extra_tensors = ("threshold",)

    def _init_extra(self, dtype: torch.dtype, device: torch.device) -> None:
        self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=dtype, device=device))

    def _scale_extra_(self, s: float) -> None:
        with torch.no_grad():
            self.threshold.div_(s)  # an activation-space quantity, like b_enc

    def init_training(self, options: ThresholdTopKOptions) -> None:
        with torch.no_grad():
            self.threshold.fill_(options.init_threshold)

    def _shifted(self, x: Tensor) -> Tensor:
        return self.centered(x) @ self.W_enc + self.b_enc - self.threshold.relu()

    def encode_flat(self, x: Tensor) -> Tensor:
        return topk_codes(self._shifted(x), self.cfg.k)

    def loss(self, x: Tensor, state: StepState) -> TrainOutput:
        codes = topk_codes(self._shifted(x), self.cfg.k)
        mse = mse_per_token(x, codes @ self.W_dec + self.b_dec)
        reg = state.options.threshold_l2 * self.threshold.relu().pow(2).mean()
        fired = (codes.detach() > 0).sum(0)
        return TrainOutput(mse + reg, mse.detach(), reg.detach(), x.new_zeros(()), fired)


@pytest.fixture
def threshold_topk():
    register(ThresholdTopKSAE)
    yield ThresholdTopKSAE
    REGISTRY.pop(ThresholdTopKSAE.architecture)


def _train(arch: str, X: Tensor, out, seed: int, **kw):
    cfg = TrainConfig(
        d_in=32,
        architecture=arch,
        d_sae=128,
        k=4,
        lr=3e-3,
        batch_size=256,
        total_tokens=100_000,
        warmup_steps=20,
        seed=seed,
        log_every=10,
        **kw,
    )
    return cfg, train_sae(cfg, TensorBatches(X, 256, seed=0), out, progress=False)


def test_an_architecture_from_a_test_file__trains_saves_loads_and_matches_topk(threshold_topk, tmp_path):
    X, dirs = make_superposition_data(64, 32, 20_000, 0.04, seed=0)
    cfg, sae = _train(
        threshold_topk.architecture, X, tmp_path / "thr", seed=0, options={"threshold_l2": 2e-3}
    )
    assert isinstance(cfg.options, ThresholdTopKOptions) and cfg.options.threshold_l2 == 2e-3
    assert isinstance(sae, ThresholdTopKSAE)
    assert float(feature_recovery(dirs, sae.W_dec).mean()) >= 0.95, "the new architecture did not train"
    assert not torch.allclose(sae.threshold, torch.full_like(sae.threshold, 0.05)), "theta never moved"

    # the trainer saved it in SAELens's layout, under its own name and with its own tensor
    raw = json.loads((tmp_path / "thr" / "cfg.json").read_text())
    assert raw["architecture"] == "threshold_topk_test" and raw["k"] == 4
    loaded = load_sae(tmp_path / "thr")
    assert type(loaded) is ThresholdTopKSAE and torch.equal(loaded.threshold, sae.threshold)
    torch.testing.assert_close(loaded.encode(X[:512]), sae.encode(X[:512]))
    save_sae(loaded, tmp_path / "again")
    assert torch.equal(load_sae(tmp_path / "again").W_dec, sae.W_dec)

    # matched one-to-one against a TopK SAE on the same data: both found the planted features
    _, topk = _train("topk", X, tmp_path / "topk", seed=1)
    shared = shared_fraction(hungarian_match(sae.W_dec, topk.W_dec).similarities)
    null = null_shared_fraction(sae.W_dec, topk.W_dec)
    assert shared >= 0.4 and null <= 0.02, f"shared {shared:.2f} vs null {null:.2f}"


def test_an_unregistered_architecture_is_named_in_the_error(tmp_path):
    from helpers.sae import SAEError

    with pytest.raises(SAEError, match="unknown SAE architecture 'threshold_topk_test'"):
        TrainConfig(d_in=8, architecture="threshold_topk_test")
