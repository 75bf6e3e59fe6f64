"""What a training step reads and returns, shared by every architecture and by the fast step.

What: `ArchOptions` (the base of each architecture's own options dataclass: its loss coefficients
and training knobs, defined in the architecture's module), `StepState` (what one step reads besides
the batch, and the scratch it keeps across steps), `TrainOutput` (what a step returns),
`mse_per_token` and `AuxK` (the auxiliary loss settings a sparse step takes).
Why: `helpers.sae.base` and every architecture import these without reaching into `helpers.sae.fast`
(which imports the base, not the other way round).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor


class OptionsError(ValueError):
    """A bad architecture option; the message names the option and the fix."""


@dataclass
class ArchOptions:
    """Training options of one architecture (a subclass per architecture, one docstring per field).

    Subclasses check their own fields in `check()`; `from_dict` ignores keys the subclass does not
    have, so one set of overrides (e.g. a profile's l1) can be offered to every architecture."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise OptionsError on a bad field (override per architecture)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ArchOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def _positive(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name) > 0:
                raise OptionsError(
                    f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)}"
                )


class TrainOutput(NamedTuple):
    """One training forward: `loss` to backprop plus detached statistics for logging."""

    loss: Tensor  # scalar, differentiable
    mse: Tensor  # scalar: mean over tokens of ||x - x_hat||^2 (in the scaled space)
    sparsity: Tensor  # scalar: the sparsity penalty added to loss (0 for topk)
    aux: Tensor  # scalar: auxiliary loss added to loss (AuxK, gated aux; 0 when off)
    fired: Tensor  # [d_sae]: tokens of this batch on which each latent was nonzero (int or float counts)


class AuxK(NamedTuple):
    """AuxK (Gao et al. 2024, App. A.2): the k dead latents of largest pre-activation per token
    reconstruct the residual x - x_hat; loss coef * ||e_hat - r||^2 / ||r - mean r||^2."""

    coef: float
    k: int


def mse_per_token(x: Tensor, x_hat: Tensor) -> Tensor:
    """Scalar (1/B) sum_b ||x_b - x_hat_b||^2."""
    return (x_hat - x).pow(2).sum(-1).mean()


@dataclass
class StepState:
    """What one training step reads besides the batch, and the scratch it keeps across steps. The
    trainer builds one per SAE from its TrainConfig (helpers.training.train) and sets `dead` before
    every step; tests build one by hand."""

    matmul_dtype: torch.dtype = torch.float32
    """dtype of the step's big GEMMs and gathers: bf16 where measured faster (helpers.precision).
    Parameters, Adam state, losses and every sum stay fp32."""
    sparse: bool = True
    """the fast path (the architecture's fused step); False = its plain reference loss."""
    options: ArchOptions = field(default_factory=ArchOptions)
    """the architecture's own options (its module's `Options` dataclass)."""
    dead: Tensor | None = None
    """[d_sae] bool: latents that have not fired within the dead window (set by the trainer)."""
    buffers: dict[str, Tensor] = field(default_factory=dict, repr=False)
    """scratch tensors reused across steps (`buffer`)."""
    W_dec_lp: tuple[int, Tensor] | None = field(default=None, repr=False)
    """(W_dec._version, the decoder in matmul_dtype) written by the fast step's decoder normalisation."""

    def buffer(
        self, name: str, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None
    ) -> Tensor:
        """A scratch tensor kept across steps (never handed out as a result): reusing the large
        [B, d_sae] buffers avoids page-faulting fresh memory every step."""
        dtype = dtype or like.dtype
        t = self.buffers.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != like.device:
            t = self.buffers[name] = torch.empty(shape, dtype=dtype, device=like.device)
        return t
