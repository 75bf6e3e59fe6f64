"""Contrastive activation addition (CAA): the steering baseline an SAE feature has to beat.

What: `mean_difference(x_pos, x_neg)` (Panickssery et al. 2024: the mean residual of a positive
contrast set minus that of a negative one, at one layer), `best_matching_latent` (the SAE decoder
rows closest to that vector, and the one to steer the same targets with), `lift_at_kl(curve, name, kl)` (a
steering curve's target lift at a given KL price, interpolated between measured alphas) and
`cheaper(...)`, which of two steering directions buys more lift at the same KL.
Why: a mean difference needs no training and no dictionary. If an SAE latent cannot promote the
same tokens at the same KL cost, "steering with SAE features" says little about the SAE.
Steering curves themselves are helpers.analysis.interventions.steering_curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from helpers.analysis.similarity import topk_cosine
from helpers.checks import as_matrix


def mean_difference(x_pos, x_neg) -> Tensor:
    """mean(x_pos) - mean(x_neg): [d] float64 -> float32, for x_pos [n, d] and x_neg [m, d]."""
    a, b = as_matrix(x_pos, "x_pos", dtype=torch.float64), as_matrix(x_neg, "x_neg", dtype=torch.float64)
    if a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(
            f"contrast sets must be non-empty rows of one width, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return (a.mean(0) - b.mean(0)).float()


def best_matching_latent(W_dec, v, typical, n: int = 5) -> tuple[np.ndarray, np.ndarray, int]:
    """The n SAE decoder rows most cosine-similar to the steering vector v, and the latent to steer with.

    W_dec [m, d] decoder rows, v [d], typical [m] each latent's typical activation (NaN: it never fired,
    so it has no steering unit). Returns (cos [n] descending, their latents [n], the steered latent: the
    closest one with a finite typical activation, else the closest)."""
    cos, idx = (t[0] for t in topk_cosine(W_dec, torch.as_tensor(v)[None], n))
    typical = np.asarray(typical)
    latent = next((int(f) for f in idx if np.isfinite(typical[int(f)])), int(idx[0]))
    return cos.numpy(), idx.numpy(), latent


def lift_at_kl(curve, name: str, kl: float) -> float:
    """curve.lift(name) at KL `kl` (nats/token), linear in KL between the measured alphas; NaN when
    the curve never reaches that KL (no extrapolation)."""
    kls, lift = np.asarray(curve.kl, dtype=float), np.asarray(curve.lift(name), dtype=float)
    order = np.argsort(kls, kind="stable")
    kls, lift = kls[order], lift[order]
    if not kls[0] <= kl <= kls[-1]:
        return float("nan")
    return float(np.interp(kl, kls, lift))


@dataclass(frozen=True)
class Cheaper:
    """Lift of two directions' target tokens at the same KL."""

    kl: float
    lift_a: float
    lift_b: float
    name_a: str
    name_b: str

    @property
    def winner(self) -> str | None:
        if not (np.isfinite(self.lift_a) and np.isfinite(self.lift_b)):
            return None
        return self.name_a if self.lift_a >= self.lift_b else self.name_b

    def sentence(self) -> str:
        if self.winner is None:
            return (
                f"At KL {self.kl:.2f} nats/token only one of {self.name_a} and {self.name_b} was measured "
                "(the other's curve stops below it): no comparison."
            )
        return (
            f"At KL {self.kl:.2f} nats/token {self.name_a} makes its targets {self.lift_a:.1f}x as probable, "
            f"{self.name_b} {self.lift_b:.1f}x: {self.winner} steers more cheaply."
        )


def cheaper(curve_a, curve_b, name: str, name_a: str, name_b: str, kl: float | None = None) -> Cheaper:
    """Compare two steering curves on the same target set `name` at KL `kl` (default: the largest
    KL both curves reach)."""
    if kl is None:
        kl = float(min(np.max(curve_a.kl), np.max(curve_b.kl)))
    return Cheaper(kl, lift_at_kl(curve_a, name, kl), lift_at_kl(curve_b, name, kl), name_a, name_b)
