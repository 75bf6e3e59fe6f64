"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead", arXiv 2407.14435).

What: codes = pre * H(pre - theta), theta = exp(log_threshold) per latent; loss = ||x - x_hat||^2 +
l0 * sum_j H(pre_j - theta_j). The step function has zero gradient almost everywhere, so theta is
trained with straight-through pseudo-derivatives using a rectangle kernel K(u) = 1[|u| < 1/2] of
bandwidth eps (paper Eq. 11-12):
    d/dtheta JumpReLU(z) := -(theta / eps) K((z - theta) / eps)
    d/dtheta H(z - theta) := -(1 / eps) K((z - theta) / eps)
and d/dz JumpReLU(z) = H(z - theta) (no pseudo-derivative through z). Decoder rows unit norm.
Saved with SAELens's tensor name `threshold` (= exp(log_threshold)); SAELens's own training keeps
theta itself as the parameter because Adam moves log(theta) by only ~lr per step (SAELens #494),
so a small initial threshold rises slowly: `JumpReLUOptions.init_threshold` matters.
dictionary_learning's `JumpReluAutoEncoder` (ae.pt with W_enc, b_enc, W_dec, b_dec, threshold; no b_dec
subtracted from the input) loads through `from_dictionary_learning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from helpers.sae.base import SAE, SAEConfig, SAEError, register
from helpers.sae.step_types import ArchOptions, StepState, TrainOutput, mse_per_token


@dataclass
class JumpReLUOptions(ArchOptions):
    """JumpReLU training options."""

    l0: float = 1.0
    """Coefficient of the L0 penalty."""
    bandwidth: float = 0.05
    """Bandwidth eps of the straight-through estimator's rectangle kernel."""
    init_threshold: float = 0.1
    """Initial threshold theta of every latent."""

    def check(self) -> None:
        self._positive("l0", "bandwidth", "init_threshold")


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        g_z = g * (z > theta)
        g_theta = (-(theta / eps) * _rect((z - theta) / eps) * g).sum(0)
        return g_z, g_theta, None


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        return None, (-(1.0 / eps) * _rect((z - theta) / eps) * g).sum(0), None


@register
class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    Options = JumpReLUOptions
    extra_tensors = ("threshold",)
    dictionary_learning_classes = ("JumpReluAutoEncoder",)
    dictionary_learning_keys = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")

    def _init_extra(self, dtype: torch.dtype, device: torch.device) -> None:
        self.log_threshold = nn.Parameter(
            torch.full((self.cfg.d_sae,), math.log(0.1), dtype=dtype, device=device)
        )

    @property
    def threshold(self) -> Tensor:
        """theta [d_sae] = exp(log_threshold)."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def set_threshold(self, theta: Tensor | float) -> None:
        """Set theta (values <= 0 become 1e-12, which gates like SAELens's relu(threshold) = 0)."""
        t = torch.as_tensor(theta, dtype=self.log_threshold.dtype, device=self.log_threshold.device)
        self.log_threshold.copy_(t.clamp_min(1e-12).log().expand_as(self.log_threshold))

    def init_training(self, options: JumpReLUOptions) -> None:
        self.set_threshold(options.init_threshold)

    @torch.no_grad()
    def load_tensor(self, name: str, value: Tensor) -> None:
        if name != "threshold":
            return super().load_tensor(name, value)
        if tuple(value.shape) not in ((self.cfg.d_sae,), ()):
            raise SAEError(f"threshold has shape {tuple(value.shape)}, expected ({self.cfg.d_sae},)")
        self.set_threshold(value.float())

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
        if "log_threshold" in t:
            t = {k: v for k, v in t.items() if k != "log_threshold"} | {"threshold": t["log_threshold"].exp()}
        return t

    @classmethod
    def from_dictionary_learning(cls, state: dict[str, Tensor], metadata: dict[str, Any]) -> JumpReLUSAE:
        """dictionary_learning's JumpReluAutoEncoder state dict (W_enc [d_in, d_sae], ..., threshold)."""
        d_in, d_sae = state["W_enc"].shape
        sae = cls(SAEConfig(cls.architecture, d_in, d_sae, apply_b_dec_to_input=False, metadata=metadata))
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            sae.load_tensor(name, state[name])
        return sae

    def _scale_extra_(self, s: float) -> None:
        with torch.no_grad():
            self.log_threshold.sub_(math.log(s))

    def encode_flat(self, x: Tensor) -> Tensor:
        pre = self.centered(x) @ self.W_enc + self.b_enc
        return pre.relu() * (pre > self.threshold)

    def loss(self, x: Tensor, state: StepState) -> TrainOutput:
        eps = state.options.bandwidth
        theta = self.threshold
        pre = self.centered(x) @ self.W_enc + self.b_enc
        codes = _JumpReLUFn.apply(pre, theta, eps)
        x_hat = codes @ self.W_dec + self.b_dec
        mse = mse_per_token(x, x_hat)
        sparsity = state.options.l0 * _StepFn.apply(pre, theta, eps).sum(-1).mean()
        fired = (codes.detach() > 0).sum(0)
        return TrainOutput(mse + sparsity, mse.detach(), sparsity.detach(), x.new_zeros(()), fired)
