"""Toy data with planted features in superposition, and resumable batch sources for training.

What: `make_superposition_data` (n_features > d random unit directions, each active independently
with probability p_active with a non-negative magnitude), `feature_recovery` (how well a decoder
recovers them), `ToyStream` (an endless seeded stream of such batches, batch i reproducible on
its own) and `TensorBatches` (batches of a fixed tensor, reshuffled per epoch).
Why: an SAE that works must find planted features; the trainer's tests need deterministic
sources it can resume from (both classes implement `skip_tokens(n)`, see helpers.training.train).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor

MAGNITUDES = ("uniform", "exponential")


def _directions(n_features: int, d: int, gen: torch.Generator) -> Tensor:
    dirs = torch.randn(n_features, d, generator=gen)
    return dirs / dirs.norm(dim=1, keepdim=True)


def _sample(dirs: Tensor, n: int, p_active: float, magnitude: str, gen: torch.Generator) -> Tensor:
    active = torch.rand(n, dirs.shape[0], generator=gen) < p_active
    if magnitude == "uniform":
        mags = torch.rand(n, dirs.shape[0], generator=gen)
    else:
        mags = torch.empty(n, dirs.shape[0]).exponential_(1.0, generator=gen)
    return (active * mags) @ dirs  # [n, d]


def _check(n_features: int, d: int, p_active: float, magnitude: str) -> None:
    if n_features <= 0 or d <= 0:
        raise ValueError(f"n_features and d must be positive, got {n_features}, {d}")
    if not 0 < p_active <= 1:
        raise ValueError(f"p_active must be in (0, 1], got {p_active}")
    if magnitude not in MAGNITUDES:
        raise ValueError(f"unknown magnitude {magnitude!r}; valid: {', '.join(MAGNITUDES)}")


def make_superposition_data(
    n_features: int, d: int, n_samples: int, p_active: float, seed: int, magnitude: str = "uniform"
) -> tuple[Tensor, Tensor]:
    """(X [n_samples, d], true_directions [n_features, d]), float32.

    x = sum_f a_f m_f u_f with u_f random unit vectors, a_f ~ Bernoulli(p_active) independent,
    m_f ~ Uniform(0, 1) (or Exponential(1)); everything from one torch.Generator(seed).
    """
    _check(n_features, d, p_active, magnitude)
    gen = torch.Generator().manual_seed(seed)
    dirs = _directions(n_features, d, gen)
    return _sample(dirs, n_samples, p_active, magnitude, gen), dirs


@torch.no_grad()
def feature_recovery(true_directions: Tensor, W_dec: Tensor) -> Tensor:
    """[n_features] max over decoder rows of cos(true_f, W_dec_j); its mean is the recovery score."""
    t = true_directions / true_directions.norm(dim=1, keepdim=True)
    w = W_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (t @ w.t()).max(dim=1).values


class ToyStream:
    """Endless (or n_batches long) stream of superposition batches [batch_size, d].

    Batch i depends only on (seed, i), so `skip_tokens(n)` jumps ahead without generating the
    skipped batches. `delay` sleeps per batch (tests use it to kill a run mid-way).
    """

    def __init__(
        self,
        n_features: int,
        d: int,
        batch_size: int,
        p_active: float,
        seed: int,
        n_batches: int | None = None,
        magnitude: str = "uniform",
        delay: float = 0.0,
    ):
        _check(n_features, d, p_active, magnitude)
        self.directions = _directions(n_features, d, torch.Generator().manual_seed(seed))
        self.batch_size, self.p_active, self.seed = batch_size, p_active, seed
        self.n_batches, self.magnitude, self.delay = n_batches, magnitude, delay
        self._start = 0
        self.current_source = "toy batch 0"

    def batch(self, i: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i + 1)
        return _sample(self.directions, self.batch_size, self.p_active, self.magnitude, gen)

    def skip_tokens(self, n: int) -> None:
        """The next iteration starts n rows into the stream."""
        self._start = n

    def __iter__(self) -> Iterator[Tensor]:
        i, offset = divmod(self._start, self.batch_size)
        self._start = 0
        while self.n_batches is None or i < self.n_batches:
            self.current_source = f"toy batch {i}"
            if self.delay:
                time.sleep(self.delay)
            yield self.batch(i)[offset:]
            i, offset = i + 1, 0


class TensorBatches:
    """Batches of rows of X [N, d], a fresh seeded permutation per epoch, for `epochs` epochs."""

    def __init__(self, X: Tensor, batch_size: int, seed: int = 0, epochs: int | None = None):
        self.X, self.batch_size, self.seed, self.epochs = X, batch_size, seed, epochs
        self._start = 0
        self.current_source = "epoch 0"

    def skip_tokens(self, n: int) -> None:
        self._start = n

    def __iter__(self) -> Iterator[Tensor]:
        N = self.X.shape[0]
        epoch, pos = divmod(self._start, N)
        self._start = 0
        while self.epochs is None or epoch < self.epochs:
            perm = torch.randperm(N, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            self.current_source = f"epoch {epoch}"
            for s in range(pos, N, self.batch_size):
                yield self.X[perm[s : s + self.batch_size]]
            epoch, pos = epoch + 1, 0
