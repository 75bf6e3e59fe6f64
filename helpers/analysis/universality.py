"""Features across models: matching the SAE latents of two models by their activations (issue #29 item 3).

What: `activation_correlation` (Pearson correlation of every latent of model A with every latent of
model B over the same N aligned rows: row i of A and row i of B are the same word of the same document),
`best_correlation`, `shared_fraction_corr` (one-to-one Hungarian matching of the correlations ->
`CrossModelMatch`), three baselines (`shuffled_alignment`, `own_neurons`, `random_directions`),
`compare_models` (the match and its baselines in one call), `top_pairs` and `match_table` for notebooks.
Why: two models' residual streams have unrelated bases (and widths), so decoder cosines
(`helpers.analysis.similarity`) cannot compare their SAEs; what the latents *do* on the same text can.
Towards Monosemanticity (Bricken et al. 2023) reports that SAE features of different models correlate
with each other more than with their own model's neurons; the baselines say how much of a match is
chance, neuron-level structure, or any linear read-out of the other model.

Numbers: correlations are float32 GEMMs of standardised columns, accumulated over row chunks (memory:
the [M, K] result plus one chunk of each side, ~64 MB). A latent that never varies (never fires) has
correlation 0 with everything, not NaN. The Hungarian step is scipy's dense `linear_sum_assignment`
on the [M_alive, K] matrix: fine up to ~10k x 10k; beyond that restrict the latents first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from helpers.analysis.similarity import CHUNK_BYTES, NULL_SEED, shared_fraction, unit_rows
from helpers.checks import as_tensor

# A latent is "shared" when its one-to-one partner correlates above this. r = 0.5: the partner linearly
# explains a quarter of the latent's variance; chance correlations over N aligned rows are ~1/sqrt(N)
# (< 0.02 at N = 10k), and the shuffled / random-direction baselines here sit well below it.
SHARED_CORR = 0.5
# Latents of A that fire (code > 0) on fewer rows are left out of every fraction and median: with under
# ~10 nonzero values one coincidental co-firing can give a large correlation, so their match is noise.
MIN_FIRES = 10


# ----------------------------------------------------------------------------- chunked columns
class _Columns:
    """Columns to correlate, read as float32 row chunks: x [N, C], optionally with its rows permuted
    (`rows_N`) or read out along directions (`proj_DC`: chunk @ proj), without copying all of x."""

    def __init__(self, x: Any, name: str, rows_N=None, proj_DC=None, device=None):
        self.x = as_tensor(x)
        if self.x.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n_rows, n_columns], got shape {tuple(self.x.shape)}")
        self.name, self.rows_N, self.proj_DC = name, rows_N, proj_DC
        self.device = self.x.device if device is None else device
        self.n_rows = int(self.x.shape[0])
        self.n_cols = int(self.x.shape[1] if proj_DC is None else proj_DC.shape[1])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop as float32 [stop - start, C] on the compute device."""
        x = self.x[start:stop] if self.rows_N is None else self.x[self.rows_N[start:stop]]
        x = x.to(self.device, torch.float32)
        return x if self.proj_DC is None else x @ self.proj_DC.to(self.device)


def _chunk_rows(n_cols: int, chunk: int | None) -> int:
    """Rows per chunk: `chunk`, or so that one chunk of all columns is ~CHUNK_BYTES of float32."""
    if chunk is None:
        return max(1, CHUNK_BYTES // (4 * max(n_cols, 1)))
    if int(chunk) < 1:
        raise ValueError(f"chunk={chunk} rows; pass an int >= 1 (or None for ~64 MB chunks)")
    return int(chunk)


def _check_aligned(a: _Columns, b: _Columns) -> None:
    """Both sides must hold the same (>= 2) aligned rows."""
    if a.n_rows != b.n_rows:
        raise ValueError(
            f"{a.name} has {a.n_rows} rows but {b.name} has {b.n_rows}; pass both on the same aligned rows"
        )
    if a.n_rows < 2:
        raise ValueError(f"{a.name} has {a.n_rows} rows; a correlation needs at least 2 aligned rows")


def _column_stats(src: _Columns, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(mean [C], 1/std [C] (0 for constant columns), fires [C] = rows with value > 0), one float64 pass."""
    c = _chunk_rows(src.n_cols, chunk)
    sums = torch.zeros(src.n_cols, dtype=torch.float64, device=src.device)
    squares, fires = torch.zeros_like(sums), torch.zeros(src.n_cols, dtype=torch.long, device=src.device)
    for s in range(0, src.n_rows, c):
        x = src.read(s, s + c)
        sums += x.sum(0, dtype=torch.float64)
        squares += (x.double() ** 2).sum(0)
        fires += (x > 0).sum(0)
    mean = sums / src.n_rows
    var = (squares / src.n_rows - mean**2).clamp_min(0.0)
    constant = var <= 1e-12 * mean**2  # exactly 0 for a never-firing latent; rounding for other constants
    inv_sd = torch.where(constant, torch.zeros_like(var), var.clamp_min(1e-300).rsqrt())
    return mean.float(), inv_sd.float(), fires.cpu().numpy()


def _correlate(a: _Columns, stats_a, b: _Columns, stats_b, chunk: int | None) -> np.ndarray:
    """[M, K] float32 Pearson correlations: sum over row chunks of z_a^T z_b (standardised), / N."""
    (mean_a, inv_a, _), (mean_b, inv_b, _) = stats_a, stats_b
    c = _chunk_rows(a.n_cols + b.n_cols, chunk)
    corr_MK = torch.zeros(a.n_cols, b.n_cols, device=a.device)
    for s in range(0, a.n_rows, c):
        z_a = (a.read(s, s + c) - mean_a) * inv_a
        z_b = (b.read(s, s + c) - mean_b.to(a.device)) * inv_b.to(a.device)
        corr_MK.addmm_(z_a.T, z_b)
    return (corr_MK / a.n_rows).clamp_(-1.0, 1.0).cpu().numpy()


def _pair(a: _Columns, b: _Columns, chunk: int | None) -> np.ndarray:
    """Correlation of two column sources after checking that their rows align."""
    _check_aligned(a, b)
    return _correlate(a, _column_stats(a, chunk), b, _column_stats(b, chunk), chunk)


# ----------------------------------------------------------------------------- correlation
def activation_correlation(a_NM: Any, b_NK: Any, chunk: int | None = None) -> np.ndarray:
    """Pearson correlation of every column of a_NM with every column of b_NK over the N aligned rows.

    Returns numpy float32 [M, K]. Inputs numpy or torch, any real dtype (SAE codes are treated as dense);
    computed on a_NM's device in float32 on standardised columns (means/variances in float64), `chunk`
    rows at a time (default ~64 MB per chunk). A zero-variance column (a latent that never fires) gets
    correlation 0 with everything, not NaN.
    """
    a = _Columns(a_NM, "a_NM")
    return _pair(a, _Columns(b_NK, "b_NK", device=a.device), chunk)


def fire_counts(codes_NM: Any, chunk: int | None = None) -> np.ndarray:
    """[M] int: on how many rows each latent fires (code > 0); feeds `shared_fraction_corr`'s min_count."""
    src = _Columns(codes_NM, "codes_NM")
    return _column_stats(src, chunk)[2]


def best_correlation(corr_MK: Any) -> np.ndarray:
    """[M]: each A latent's highest correlation with any B column (its best partner, many-to-one)."""
    corr_MK = _as_corr(corr_MK)
    return corr_MK.max(axis=1)


def _as_corr(corr_MK: Any) -> np.ndarray:
    """A correlation matrix as float64 numpy [M, K], K >= 1."""
    corr_MK = np.asarray(as_tensor(corr_MK).cpu(), dtype=np.float64)
    if corr_MK.ndim != 2 or 0 in corr_MK.shape:
        raise ValueError(
            f"corr_MK must be a non-empty [M, K] matrix, got {corr_MK.shape}; pass a correlation"
        )
    return corr_MK


# ----------------------------------------------------------------------------- matching
@dataclass
class CrossModelMatch:
    """A's latents matched one-to-one to B's columns (latents, neurons or read-outs) by correlation.

    Fractions and medians are over `alive` A latents (firing on >= min_count rows). `pairs` [P, 2] (A latent,
    B column) with `pair_corr` [P] is the Hungarian matching (P = min(n_alive, K)), sorted by A latent."""

    name: str
    threshold: float
    shared_fraction: float  # alive A latents whose one-to-one partner has corr > threshold
    best_shared_fraction: float  # alive A latents whose best partner (many-to-one) has corr > threshold
    median_best_corr: float  # median over alive A latents of best_corr
    best_corr: np.ndarray  # [M] each A latent's best correlation (all latents; read with `alive`)
    pairs: np.ndarray  # [P, 2] int64 matched (A latent, B column)
    pair_corr: np.ndarray  # [P] their correlations
    alive: np.ndarray  # [M] bool
    min_count: int

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())


def shared_fraction_corr(
    corr_MK: Any,
    threshold: float = SHARED_CORR,
    fires_M: Any = None,
    min_count: int = MIN_FIRES,
    name: str = "models",
) -> CrossModelMatch:
    """One-to-one (Hungarian) matching of A's latents to B's columns maximising total correlation, and
    the share of A's latents whose partner has corr > threshold, with the median best correlation.

    Only A latents with fires_M >= min_count take part (fires_M from `fire_counts`; None = all). When
    there are more such latents than B columns, the unmatched ones count as not shared, so a baseline
    with few columns (e.g. 576 neurons) is capped at K / n_alive: compare it by `best_shared_fraction`
    and `median_best_corr` instead.
    """
    corr_MK = _as_corr(corr_MK)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} is not a correlation; pass a value in [-1, 1], e.g. 0.5")
    alive = np.ones(corr_MK.shape[0], bool) if fires_M is None else np.asarray(fires_M) >= min_count
    if alive.shape != (corr_MK.shape[0],):
        raise ValueError(
            f"fires_M has shape {alive.shape}, corr_MK {corr_MK.shape}; pass one count per A latent"
        )
    idx = np.flatnonzero(alive)
    if not len(idx):
        raise ValueError(f"no A latent fires on >= {min_count} rows; lower min_count or pass more rows")
    rows, cols = linear_sum_assignment(corr_MK[idx], maximize=True)
    pair_corr = corr_MK[idx[rows], cols]
    best = corr_MK.max(axis=1)
    return CrossModelMatch(
        name=name,
        threshold=float(threshold),
        shared_fraction=shared_fraction(pair_corr, threshold) * len(rows) / len(idx),
        best_shared_fraction=shared_fraction(best[idx], threshold),
        median_best_corr=float(np.median(best[idx])),
        best_corr=best,
        pairs=np.stack([idx[rows], cols], axis=1).astype(np.int64),
        pair_corr=pair_corr,
        alive=alive,
        min_count=int(min_count),
    )


def top_pairs(match: CrossModelMatch, k: int = 20) -> list[tuple[int, int, float]]:
    """The k matched (A latent, B column, corr) pairs of highest correlation, best first (examples table)."""
    if k < 1:
        raise ValueError(f"k={k}; pass k >= 1 pairs")
    order = np.argsort(-match.pair_corr, kind="stable")[:k]
    return [(int(i), int(j), float(r)) for (i, j), r in zip(match.pairs[order], match.pair_corr[order])]


# ----------------------------------------------------------------------------- baselines
def _permutation(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of n rows."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def _directions(d: int, k: int, seed: int) -> torch.Tensor:
    """[d, k] float32: k seeded Gaussian directions of a d-dim space, unit length (columns)."""
    if k < 1:
        raise ValueError(f"k={k} random directions; pass k >= 1")
    g = torch.Generator().manual_seed(int(seed))
    return unit_rows(torch.randn(k, d, generator=g)).T.contiguous()


def shuffled_alignment(
    codes_a: Any, codes_b: Any, seed: int = NULL_SEED, chunk: int | None = None
) -> np.ndarray:
    """[M, K] correlations with B's rows permuted (seeded): the chance level of `activation_correlation`.

    Controls for: matches that need no word alignment at all. Each latent keeps its marginal (firing
    rate, magnitude distribution), only the row-by-row pairing is broken, so whatever still correlates
    comes from sparsity and finite N, not from the two models reading the same word the same way.
    """
    a = _Columns(codes_a, "codes_a")
    b = _Columns(codes_b, "codes_b", rows_N=_permutation(as_tensor(codes_b).shape[0], seed), device=a.device)
    return _pair(a, b, chunk)


def own_neurons(codes_a: Any, neurons_a: Any, chunk: int | None = None) -> np.ndarray:
    """[M, D] |correlation| of A's latents with A's own model's neurons (neurons_a [N, D]: the raw residual
    dimensions or MLP neurons on the same rows).

    Controls for: the claim (Towards Monosemanticity) that SAE features of different models resemble each
    other more than their own model's neurons; if a latent correlates as well with one of its own neurons,
    the cross-model match says nothing beyond "both models have that neuron-level signal". Absolute value:
    a neuron's sign is arbitrary, so an anti-correlated neuron reads the latent just as well.
    """
    return np.abs(activation_correlation(codes_a, neurons_a, chunk))


def random_directions(
    codes_a: Any, acts_b: Any, k: int, seed: int = NULL_SEED, chunk: int | None = None
) -> np.ndarray:
    """[M, k] |correlation| of A's latents with B's activations read out along k random unit directions of
    B's space (seeded): acts_b [N, E] @ R [E, k], projected chunk by chunk.

    Controls for: "any linear read-out of the other model tracks the latent". B's residual stream carries
    the same text, so random projections of it correlate with A's latents to some degree; B's SAE must
    beat that to show it isolated the same feature. Absolute value: a direction's sign is arbitrary.
    """
    a = _Columns(codes_a, "codes_a")
    e = int(as_tensor(acts_b).shape[-1])
    b = _Columns(acts_b, "acts_b", proj_DC=_directions(e, k, seed), device=a.device)
    return np.abs(_pair(a, b, chunk))


# ----------------------------------------------------------------------------- all in one
def compare_models(
    codes_a: Any,
    codes_b: Any,
    acts_a: Any,
    acts_b: Any,
    neurons_a: Any = None,
    threshold: float = SHARED_CORR,
    seed: int = NULL_SEED,
    min_count: int = MIN_FIRES,
    n_directions: int | None = None,
    chunk: int | None = None,
) -> dict[str, CrossModelMatch]:
    """Model A's SAE latents matched to model B's, and the three baselines, on the same N aligned rows.

    codes_a [N, M], codes_b [N, K]: the two SAEs' codes; acts_a [N, D], acts_b [N, E]: the activations the
    SAEs read; neurons_a [N, D']: A's neurons for the own-neurons baseline (default acts_a, the residual
    dimensions). Keys: "models" (A vs B latents), "shuffled_alignment", "own_neurons", "random_directions"
    (n_directions, default K, so the Hungarian has as many candidates as B's SAE). Every entry uses the
    same threshold and the same alive A latents (firing on >= min_count rows). A's statistics are
    computed once.
    """
    a = _Columns(codes_a, "codes_a")
    b = _Columns(codes_b, "codes_b", device=a.device)
    dirs_EK = _directions(as_tensor(acts_b).shape[-1], n_directions or b.n_cols, seed)
    neurons = _Columns(acts_a if neurons_a is None else neurons_a, "neurons_a", device=a.device)
    readouts = _Columns(acts_b, "acts_b", proj_DC=dirs_EK, device=a.device)
    for src in (b, _Columns(acts_a, "acts_a"), neurons, readouts):
        _check_aligned(a, src)
    stats_a, stats_b = _column_stats(a, chunk), _column_stats(b, chunk)
    shuffled = _Columns(codes_b, "codes_b", rows_N=_permutation(b.n_rows, seed), device=a.device)
    jobs = {  # key: (columns, their statistics (a permutation keeps B's), take |corr|)
        "models": (b, stats_b, False),
        "shuffled_alignment": (shuffled, stats_b, False),
        "own_neurons": (neurons, None, True),
        "random_directions": (readouts, None, True),
    }
    out = {}
    for key, (src, stats, absolute) in jobs.items():  # one [M, K] matrix alive at a time
        corr_MK = _correlate(a, stats_a, src, stats or _column_stats(src, chunk), chunk)
        out[key] = shared_fraction_corr(
            np.abs(corr_MK) if absolute else corr_MK, threshold, stats_a[2], min_count, key
        )
    return out


def match_table(results: dict[str, CrossModelMatch]) -> pd.DataFrame:
    """One row per comparison of `compare_models`: shared fractions, median best correlation, sizes."""
    return pd.DataFrame(
        [
            {
                "comparison": key,
                f"shared@{m.threshold:g}": m.shared_fraction,
                f"best_shared@{m.threshold:g}": m.best_shared_fraction,
                "median_best_corr": m.median_best_corr,
                "n_alive": m.n_alive,
                "n_matched": len(m.pair_corr),
            }
            for key, m in results.items()
        ]
    ).set_index("comparison")
