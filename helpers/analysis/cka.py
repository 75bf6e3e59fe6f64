"""How alike two models' layers are as whole representations: linear CKA and SVCCA (issue #29 item 3).

What: `linear_cka(x_ND, y_NE)` (Kornblith et al. 2019), `svcca(x_ND, y_NE, keep)` (Raghu et al. 2017),
their all-pairs forms `cka_matrix` / `svcca_matrix` for every layer of model A against every layer of
model B, and `best_layer_match` (each A layer's most similar B layer).
Why: before matching SAE latents across two models (`helpers.analysis.universality`), one needs to know
which layers correspond. Both scores compare the same N rows (row i of A and of B = the same token of
the same document) and are invariant to rotations of either space, so models of different widths D, E
can be compared. CKA is also invariant to isotropic scaling; SVCCA additionally to any invertible linear
map of the directions it keeps.

Both work in feature space on centred float64 data: CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), which
equals the HSIC form <HKH, HLH> / (||HKH|| ||HLH||) with K = XX^T, L = YY^T and no [N, N] matrix, so it is
O(N D E) per pair. SVCCA keeps, on each side, the top singular directions holding `keep` of the variance
(or `keep` directions when an int), then the canonical correlations are the singular values of U_x^T U_y
(the orthonormal bases of the kept spans, i.e. the whitened data); the score is their mean.

Timings (AMD EPYC Zen 3, 2 cores shared with other jobs, random float32 data, 30 x 18 layers, N = 8000
rows, D = 576, E = 640): cka_matrix 63 s, svcca_matrix 91 s (keep=0.99: 566 of 576 / 629 of 640
directions kept). With the cores busy elsewhere the same runs took 70-100 s and 150-300 s (LAPACK's small
eigensolvers suffer most). Both are dominated by N x D x E float64 cross products (~85 GFLOP/s here);
real residual streams keep far fewer SVCCA directions, so svcca_matrix is then cheaper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from helpers.checks import as_matrix

SVCCA_KEEP = 0.99  # fraction of variance each side keeps (Raghu et al. 2017)
RANK_TOL = 1e-10  # directions with variance below this fraction of the largest are numerically absent


# ----------------------------------------------------------------------------- inputs
def _centred(x: Any, name: str) -> np.ndarray:
    """x as a float64 [N, D] numpy array with each column's mean removed (CKA/CCA need centring)."""
    x_ND = as_matrix(x, name, "pass [n_rows, width] activations", finite=True, dtype=torch.float64)
    x_ND = x_ND.cpu().numpy()
    if x_ND.shape[0] < 2:
        raise ValueError(
            f"{name} has {x_ND.shape[0]} rows; pass at least 2 rows (the same rows on both sides)"
        )
    return x_ND - x_ND.mean(axis=0)


def _check_rows(n_x: int, n_y: int, what: str) -> None:
    """Both representations must describe the same rows."""
    if n_x != n_y:
        raise ValueError(f"{what} have {n_x} vs {n_y} rows; pass activations of the same aligned rows")


def _gram_norm(x_ND: np.ndarray, name: str) -> float:
    """||X^T X||_F of centred X; a constant representation (norm 0) has no CKA."""
    norm = float(np.linalg.norm(x_ND.T @ x_ND))
    if norm == 0.0:
        raise ValueError(f"{name} is constant over the rows (zero variance); pass a non-degenerate layer")
    return norm


# ----------------------------------------------------------------------------- CKA
def linear_cka(x_ND: Any, y_NE: Any) -> float:
    """Linear CKA of two representations of the same N rows, in [0, 1] (1 = same up to rotation and scale).

    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred float64 data (Kornblith et al. 2019,
    feature-space form: O(N D E), no [N, N] Gram). Inputs: numpy or torch [N, D] and [N, E].
    """
    x_ND, y_NE = _centred(x_ND, "x_ND"), _centred(y_NE, "y_NE")
    _check_rows(x_ND.shape[0], y_NE.shape[0], "x_ND and y_NE")
    cross = float(np.linalg.norm(y_NE.T @ x_ND)) ** 2
    return cross / (_gram_norm(x_ND, "x_ND") * _gram_norm(y_NE, "y_NE"))


def _stacked(ys: Sequence[Any], name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The centred ys side by side [N, sum E_j], the column offset where each starts, and N."""
    cols = [_centred(y, f"{name}[{j}]") for j, y in enumerate(ys)]
    if not cols:
        raise ValueError(f"{name} is empty; pass a list of at least one [N, width] layer")
    for j, y in enumerate(cols):
        _check_rows(cols[0].shape[0], y.shape[0], f"{name}[0] and {name}[{j}]")
    offsets = np.cumsum([0] + [y.shape[1] for y in cols[:-1]])
    return np.concatenate(cols, axis=1), offsets, cols[0].shape[0]


def cka_matrix(xs: Sequence[Any], ys: Sequence[Any]) -> np.ndarray:
    """CKA of every layer of xs (each [N, D_i]) with every layer of ys (each [N, E_j]), [len(xs), len(ys)].

    Each ||X^T X||_F is computed once; per x one GEMM against all ys stacked gives every cross term
    ||Y_j^T X_i||_F^2 (block sums of squares). The data are centred in float64; that cross GEMM runs in
    float32 (the one O(N D E) step; relative error ~1e-6 on CKA, tested against `linear_cka`). Memory:
    the centred ys in float64 and float32 plus one x at a time.
    """
    y_all, offsets, n = _stacked(ys, "ys")
    y_norms = np.array([_gram_norm(y, f"ys[{j}]") for j, y in enumerate(np.split(y_all, offsets[1:], 1))])
    if not len(xs):
        raise ValueError("xs is empty; pass a list of at least one [N, width] layer")
    cka_XY = np.empty((len(xs), len(ys)))
    y32 = y_all.astype(np.float32)
    for i, x in enumerate(xs):
        x_ND = _centred(x, f"xs[{i}]")
        _check_rows(x_ND.shape[0], n, f"xs[{i}] and ys")
        cross = (y32.T @ x_ND.astype(np.float32)).astype(np.float64)  # float32 GEMM: 2x float64's speed
        cross_sq = np.add.reduceat((cross**2).sum(axis=1), offsets)  # [len(ys)]
        cka_XY[i] = cross_sq / (_gram_norm(x_ND, f"xs[{i}]") * y_norms)
    return cka_XY


def best_layer_match(sim_XY: Any) -> np.ndarray:
    """[n_x] int: for each row (a layer of model A) the column (layer of model B) of highest similarity."""
    sim_XY = np.asarray(sim_XY, dtype=np.float64)
    if sim_XY.ndim != 2 or 0 in sim_XY.shape:
        raise ValueError(
            f"sim_XY must be a non-empty 2-D matrix, got shape {sim_XY.shape}; pass cka_matrix(...)"
        )
    return np.argmax(sim_XY, axis=1)


# ----------------------------------------------------------------------------- SVCCA
def _n_keep(var_K: np.ndarray, keep: float | int) -> int:
    """How many leading directions (variances var_K, descending) to keep: enough for `keep` of the variance
    (float in (0, 1]) or `keep` of them (int >= 1); never directions with variance <= 1e-10 of the largest
    (numerically rank-deficient: their Gram-based basis vectors would not be orthonormal)."""
    if isinstance(keep, bool) or not isinstance(keep, int | float | np.integer | np.floating):
        raise ValueError(f"keep={keep!r}; pass a variance fraction in (0, 1] or a number of directions >= 1")
    rank = int((var_K > var_K[0] * RANK_TOL).sum())
    if isinstance(keep, int | np.integer):
        if keep < 1:
            raise ValueError(f"keep={keep} directions; pass an int >= 1 or a variance fraction in (0, 1]")
        return int(min(keep, rank))
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} is not a variance fraction in (0, 1]; pass e.g. 0.99 or an int")
    frac_K = np.cumsum(var_K) / var_K.sum()
    return int(min(np.searchsorted(frac_K, keep - 1e-12) + 1, rank))


def svcca_basis(x: Any, keep: float | int = SVCCA_KEEP, name: str = "x") -> np.ndarray:
    """[N, k] orthonormal basis of the top-k principal directions of the centred x (the SV step of SVCCA).

    Its columns are the kept, whitened directions (U of the SVD): CCA between two such bases is just
    their SVD. Computed as X V_k / sqrt(lambda_k) from the eigendecomposition of the [D, D] Gram X^T X:
    GEMM-bound, whereas LAPACK's SVD of the tall X ran 30x slower on 2 shared cores.
    """
    x_ND = _centred(x, name)
    var_D, v_DD = np.linalg.eigh(x_ND.T @ x_ND)
    var_D, v_DD = np.clip(var_D[::-1], 0.0, None), v_DD[:, ::-1]  # descending
    if var_D[0] == 0.0:
        raise ValueError(f"{name} is constant over the rows (zero variance); pass a non-degenerate layer")
    k = _n_keep(var_D, keep)
    return np.ascontiguousarray(x_ND @ (v_DD[:, :k] / np.sqrt(var_D[:k])))


def _mean_canonical(c_AB: np.ndarray) -> float:
    """Mean canonical correlation from c_AB = U_a^T U_b (two orthonormal bases): its singular values,
    taken as sqrt(eigvalsh) of the smaller Gram (7x faster than an SVD; values in [0, 1])."""
    small = c_AB @ c_AB.T if c_AB.shape[0] <= c_AB.shape[1] else c_AB.T @ c_AB
    rho = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0.0, 1.0))
    return float(rho.mean())


def svcca(x_ND: Any, y_NE: Any, keep: float | int = SVCCA_KEEP) -> float:
    """SVCCA similarity (Raghu et al. 2017) of two representations of the same N rows, in [0, 1].

    Each side is reduced to its top singular directions holding `keep` of the variance (float, default
    0.99) or to `keep` directions (int); the score is the mean of the min(k_x, k_y) canonical correlations
    between the reduced spaces. Note CCA overfits when k is not << N: independent data score ~sqrt(k/N).
    """
    u_x, u_y = svcca_basis(x_ND, keep, "x_ND"), svcca_basis(y_NE, keep, "y_NE")
    _check_rows(u_x.shape[0], u_y.shape[0], "x_ND and y_NE")
    return _mean_canonical(u_x.T @ u_y)


def svcca_matrix(xs: Sequence[Any], ys: Sequence[Any], keep: float | int = SVCCA_KEEP) -> np.ndarray:
    """SVCCA of every layer of xs with every layer of ys: numpy [len(xs), len(ys)].

    Each SVD is done once; per x one GEMM against all ys' kept bases stacked, then one small symmetric
    eigenproblem per pair (a loop over layer pairs, a few hundred at most).
    """
    if not len(xs) or not len(ys):
        raise ValueError("xs and ys must each hold at least one [N, width] layer")
    bases_y = [svcca_basis(y, keep, f"ys[{j}]") for j, y in enumerate(ys)]
    for j, u_y in enumerate(bases_y):
        _check_rows(bases_y[0].shape[0], u_y.shape[0], f"ys[0] and ys[{j}]")
    offsets = np.cumsum([0] + [u.shape[1] for u in bases_y])
    u_all, out_XY = np.concatenate(bases_y, axis=1), np.empty((len(xs), len(ys)))
    del bases_y
    for i, x in enumerate(xs):
        u_x = svcca_basis(x, keep, f"xs[{i}]")
        _check_rows(u_x.shape[0], u_all.shape[0], f"xs[{i}] and ys")
        c_all = u_x.T @ u_all  # [k_x, sum k_y]
        out_XY[i] = [_mean_canonical(c_all[:, a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return out_XY
