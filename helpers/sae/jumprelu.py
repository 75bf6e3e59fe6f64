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
so a small initial threshold rises slowly: `TrainConfig.jumprelu_init_threshold` matters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from helpers.sae.base import SAE, register
from helpers.sae.fast.step import StepState, TrainOutput, mse_per_token


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

    def _scale_extra_(self, s: float) -> None:
        with torch.no_grad():
            self.log_threshold.sub_(math.log(s))

    def encode_flat(self, x: Tensor) -> Tensor:
        pre = self.centered(x) @ self.W_enc + self.b_enc
        return pre.relu() * (pre > self.threshold)

    def train_forward(self, x: Tensor, state: StepState) -> TrainOutput:
        eps = state.bandwidth
        theta = self.threshold
        pre = self.centered(x) @ self.W_enc + self.b_enc
        codes = _JumpReLUFn.apply(pre, theta, eps)
        x_hat = codes @ self.W_dec + self.b_dec
        mse = mse_per_token(x, x_hat)
        sparsity = state.l0 * _StepFn.apply(pre, theta, eps).sum(-1).mean()
        fired = (codes.detach() > 0).sum(0)
        return TrainOutput(mse + sparsity, mse.detach(), sparsity.detach(), x.new_zeros(()), fired)
