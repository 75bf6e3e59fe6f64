"""Toy data with planted features in superposition, and resumable batch sources for training.

What: `make_superposition_data` (n_features > d random unit directions, each active independently
with probability p_active with a non-negative magnitude), `feature_recovery` (how well a decoder
recovers them), `ToyStream` (an endless seeded stream of such batches, batch i reproducible on
its own), `TensorBatches` (batches of a fixed tensor, reshuffled per epoch) and
`make_hierarchy_data` (planted parent -> child features, a `Hierarchy`, for feature absorption).
Why: an SAE that works must find planted features; the trainer's tests need deterministic
sources it can resume from (both classes implement `skip_tokens(n)`, see helpers.training.train);
helpers.analysis.absorption measures on the hierarchy how often a child's latent swallows its parent.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------- planted hierarchy
KINDS = ("parent", "child", "independent")


@dataclass
class Hierarchy:
    """Samples of a planted-hierarchy toy (`make_hierarchy_data`) with their ground truth.

    Feature order: the n_parents parents, then their children (child i of parent p at
    n_parents + p * children_per_parent + i), then the independent features.
    """

    X: Tensor
    """[n, d] float32: x = sum over active features f of m_f u_f."""
    directions: Tensor
    """[n_features, d] float32 unit rows u_f."""
    active: Tensor
    """[n, n_features] bool: which features are present in each sample."""
    parent_of: Tensor
    """[n_features] int64: the parent's index for a child, -1 for parents and independent features."""
    kind: tuple[str, ...]
    """Per feature: "parent", "child" or "independent"."""

    @property
    def parents(self) -> Tensor:
        """[n_parents] int64 indices of the parent features."""
        return torch.tensor([i for i, k in enumerate(self.kind) if k == "parent"], dtype=torch.int64)

    @property
    def children(self) -> Tensor:
        """[n_children] int64 indices of the child features."""
        return torch.tensor([i for i, k in enumerate(self.kind) if k == "child"], dtype=torch.int64)

    def rows(self, sl: slice) -> Hierarchy:
        """The same features, samples X[sl] only (e.g. a train / held-out split)."""
        return dataclasses.replace(self, X=self.X[sl], active=self.active[sl])


def _child_directions(u_parents: Tensor, per_parent: int, cos: float, gen: torch.Generator) -> Tensor:
    """[n_parents * per_parent, d]: cos * u_p + sqrt(1 - cos^2) * w, w a random unit vector orthogonal
    to u_p, so cos(child, parent) = cos exactly."""
    u = u_parents.repeat_interleave(per_parent, dim=0)
    w = torch.randn(u.shape, generator=gen)
    w = w - (w * u).sum(1, keepdim=True) * u
    w = w / w.norm(dim=1, keepdim=True)
    return cos * u + math.sqrt(1 - cos**2) * w


def make_hierarchy_data(
    d: int = 48,
    n_parents: int = 16,
    children_per_parent: int = 3,
    n_independent: int = 64,
    n_samples: int = 50_000,
    seed: int = 0,
    p_parent: float = 0.1,
    p_child: float = 0.9,
    p_independent: float = 0.02,
    child_parent_cos: float = 0.5,
) -> Hierarchy:
    """Planted parent -> child features in superposition (Chanin et al. 2024, arXiv 2409.14507).

    Each parent fires independently with p_parent; where it fires, with probability p_child exactly
    one of its children (uniformly chosen) fires too, so a child never fires without its parent and
    its parent's direction is then also in x. Independent features fire with p_independent.
    Child directions have cosine child_parent_cos with their parent's; parents and independent
    features are random unit vectors. Magnitudes ~ Uniform(0.5, 1.5) per active feature. The
    defaults (128 features in 48 dims, ~4.3 active per sample; a parent fires without a child only
    10% of the time, the regime where sparsity pays for absorption) keep a CPU benchmark fast.
    Everything from one torch.Generator(seed).
    """
    n_children = n_parents * children_per_parent
    n_features = n_parents + n_children + n_independent
    if min(d, n_parents, children_per_parent, n_samples) <= 0 or n_independent < 0:
        raise ValueError("d, n_parents, children_per_parent and n_samples must be positive")
    for name, p in (("p_parent", p_parent), ("p_child", p_child), ("p_independent", p_independent)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if not -1 < child_parent_cos < 1:
        raise ValueError(f"child_parent_cos must be in (-1, 1), got {child_parent_cos}")
    gen = torch.Generator().manual_seed(seed)
    u_par = _directions(n_parents, d, gen)
    u_ind = _directions(n_independent, d, gen) if n_independent else torch.empty(0, d)
    directions = torch.cat(
        [u_par, _child_directions(u_par, children_per_parent, child_parent_cos, gen), u_ind]
    )
    par_on = torch.rand(n_samples, n_parents, generator=gen) < p_parent
    has_child = par_on & (torch.rand(n_samples, n_parents, generator=gen) < p_child)
    which = torch.randint(children_per_parent, (n_samples, n_parents), generator=gen)
    child_on = has_child[:, :, None] & (which[:, :, None] == torch.arange(children_per_parent))
    ind_on = torch.rand(n_samples, n_independent, generator=gen) < p_independent
    active = torch.cat([par_on, child_on.reshape(n_samples, n_children), ind_on], dim=1)
    mags = 0.5 + torch.rand(n_samples, n_features, generator=gen)
    parent_of = torch.full((n_features,), -1, dtype=torch.int64)
    parent_of[n_parents : n_parents + n_children] = torch.arange(n_parents).repeat_interleave(
        children_per_parent
    )
    kind = ("parent",) * n_parents + ("child",) * n_children + ("independent",) * n_independent
    return Hierarchy((active * mags) @ directions, directions, active, parent_of, kind)
