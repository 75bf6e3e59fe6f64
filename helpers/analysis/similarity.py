"""How alike two dictionaries are: top-k cosine search, top-1 ratio / MMCS and one-to-one (Hungarian)
matching.

Why: Part 2 of the post compares SAEs trained with different seeds / corpora / architectures by
"for each latent of SAE B, its best cosine to any latent of SAE A" (top-1 ratio = fraction
> 0.7); Paulo & Belrose 2025 (arXiv 2501.16615) use a one-to-one Hungarian matching instead.

A dictionary is a 2-D array or tensor with one latent per row, [n_latents, d]: `W_dec` as is,
`W_enc.T` for encoders. Rows are normalised here (a zero row has cosine 0 with everything).
Every [n_A, n_B]-sized product is computed in chunks of B rows (float32 GEMM), so two
32k-latent dictionaries fit in memory. Functions return torch tensors unless noted.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

from helpers.checks import as_matrix

CHUNK_BYTES = 64 * 2**20  # target size of one [chunk, n_A] float32 similarity block
SHARED_COS = 0.7  # a latent is shared above this cosine (Paulo & Belrose 2025; the post's top-1 ratio)


# ----------------------------------------------------------------------------- basics
def as_rows(X: Any, name: str) -> torch.Tensor:
    """A dictionary, one latent per row, as float32 [n_latents, d]."""
    return as_matrix(X, name, "pass W_dec or W_enc.T")


def unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; zero rows stay zero (cosine 0 with everything)."""
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _prepare(A: Any, B: Any) -> tuple[torch.Tensor, torch.Tensor]:
    A_hat, B_hat = unit_rows(as_rows(A, "A")), unit_rows(as_rows(B, "B"))
    if A_hat.shape[1] != B_hat.shape[1]:
        raise ValueError(
            f"A and B must share d (got {A_hat.shape[1]} vs {B_hat.shape[1]}); pass rows of the same space"
        )
    return A_hat, B_hat.to(A_hat.device)


def _chunk(n_A: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, CHUNK_BYTES // (4 * max(n_A, 1)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    return int(chunk_size)


def topk_pass(A_hat, B_hat, k: int, col_max: bool = False, chunk_size: int | None = None):
    """One chunked GEMM pass over S = B_hat @ A_hat.T  # [n_B, n_A].

    Returns (vals [n_B, k], idx [n_B, k]): each B row's best A rows, and, if col_max,
    colmax [n_A] = max_j S_ji (each A row's best cosine to B; amax along dim 0 is cheap).
    """
    n_A, n_B = A_hat.shape[0], B_hat.shape[0]
    c = _chunk(n_A, chunk_size)
    vals = torch.empty(n_B, k, device=A_hat.device)
    idx = torch.empty(n_B, k, dtype=torch.long, device=A_hat.device)
    colmax = torch.full((n_A,), -torch.inf, device=A_hat.device) if col_max else None
    for s in range(0, n_B, c):
        S = B_hat[s : s + c] @ A_hat.T  # [c, n_A]
        vals[s : s + c], idx[s : s + c] = torch.topk(S, k, dim=1)
        if col_max:
            torch.maximum(colmax, S.amax(dim=0), out=colmax)
    return vals, idx, colmax


def topk_cosine(A: Any, B: Any, k: int, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of B, its k most cosine-similar rows of A, descending.

    values[j, r] = cos(B_j, A_{indices[j, r]}), cos(a, b) = a.b / (|a| |b|).
    Returns (values [n_B, k] float32, indices [n_B, k] int64). `chunk_size` B rows per GEMM
    (default: the [chunk, n_A] block is ~64 MB).
    """
    A_hat, B_hat = _prepare(A, B)
    if not 1 <= k <= A_hat.shape[0]:
        raise ValueError(f"k={k} must be in [1, n_A={A_hat.shape[0]}]; lower k or pass a larger A")
    vals, idx, _ = topk_pass(A_hat, B_hat, k, False, chunk_size)
    return vals, idx


def top1_ratio_curve(values: Any, thresholds: Any) -> np.ndarray:
    """Fraction of rows whose best cosine exceeds each threshold (numpy [n_thresholds]).

    `values` is [n] best cosines or [n, k] top-k values (column 0 used); one sort + searchsorted.
    """
    v = torch.as_tensor(values).detach().cpu().double().numpy()
    v = np.sort(v[:, 0] if v.ndim == 2 else v.ravel())
    t = np.asarray(thresholds, dtype=np.float64)
    return 1.0 - np.searchsorted(v, t, side="right") / max(len(v), 1)


def top1_ratio(A: Any, B: Any, threshold: float = SHARED_COS, chunk_size: int | None = None) -> float:
    """Fraction of rows of B whose best cosine to any row of A is > threshold."""
    vals, _ = topk_cosine(A, B, 1, chunk_size)
    return float((vals[:, 0] > threshold).double().mean())


def mmcs(A: Any, B: Any, chunk_size: int | None = None) -> float:
    """Mean max cosine similarity: mean over rows j of B of max_i cos(A_i, B_j)."""
    vals, _ = topk_cosine(A, B, 1, chunk_size)
    return float(vals[:, 0].double().mean())


def neuron_basis(d: int) -> torch.Tensor:
    """The identity basis of the d model dimensions, [d, d]: the "neurons" chance baseline."""
    return torch.eye(d)


# ----------------------------------------------------------------------------- one-to-one
class Matching(tuple):
    """(rows_A, rows_B, similarities), sorted by rows_B; unpacks as a 3-tuple.

    `.exact`: optimality is guaranteed (dense solver, or the sparse path's dual certificate);
    `.method`: "dense" or "sparse"; `.rounds`: sparse re-solves needed.
    """

    def __new__(
        cls, rows_A, rows_B, similarities, exact: bool = True, method: str = "dense", rounds: int = 0
    ):
        self = super().__new__(cls, (rows_A, rows_B, similarities))
        self.exact, self.method, self.rounds = exact, method, rounds
        return self

    def __getnewargs__(self):  # pickle / copy: the 3 fields as arguments, the rest via __dict__
        return tuple(self)

    rows_A = property(lambda self: self[0])
    rows_B = property(lambda self: self[1])
    similarities = property(lambda self: self[2])


def _dual_potentials(n_L, m, r, l, cost, c_match):
    """Potentials u [n_L] (<= 0) of the restricted problem, or None if they do not converge.

    Dual of min sum c x over full matchings (R rows matched once, L cols at most once):
    u_l + v_r <= c_rl, u_l <= 0, u_l = 0 for unmatched l; tight on the matching gives
    v_r = c_match_r - u_{m_r}, so u_l <= u_{m_r} + (c_rl - c_match_r): shortest paths from
    a virtual node z (z -> l with 0 for every l, unmatched l -> z with 0), vectorised Bellman-Ford.
    """
    z = n_L
    unmatched = np.setdiff1d(np.arange(n_L), m)
    off = l != m[r]
    src = np.concatenate([m[r[off]], unmatched, np.full(n_L, z)])
    dst = np.concatenate([l[off], np.full(len(unmatched), z), np.arange(n_L)])
    w = np.concatenate([cost[off] - c_match[r[off]], np.zeros(len(unmatched) + n_L)])
    order = np.argsort(dst, kind="stable")
    src, dst, w = src[order], dst[order], w[order]
    starts = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
    targets = dst[starts]
    dist = np.zeros(n_L + 1)
    for _ in range(n_L + 2):
        best = np.minimum.reduceat(dist[src] + w, starts)
        better = best < dist[targets] - 1e-12
        if not better.any():
            return dist[:n_L]
        dist[targets[better]] = best[better]
    return None


_MARGIN = 0.02  # also add near-violating pairs (excess > -margin): fewer re-solves, same optimum


def _violations(L_hat, R_hat, J, thr, u, k_add, chunk_size, cache):
    """Pairs (r in J, l) with excess S_rl + u_l - thr_r > -margin, at most k_add per row
    (excess > tol: dual infeasible). Exact S rows of the first J that fits in cache["bytes"]
    are kept in `cache` and reused by later rounds. Returns numpy (r, l, s, excess).
    """
    n_L, dev = L_hat.shape[0], L_hat.device
    if cache.get("rows") is None and 0 < len(J) * n_L * 4 <= cache["bytes"]:
        cache["rows"], cache["S"] = J, torch.empty(len(J), n_L, device=dev)  # J is sorted
        fill = True
    else:
        fill = False
    rows_c = cache.get("rows")
    u_t = torch.as_tensor(u, dtype=torch.float32, device=dev)
    found = []
    c = _chunk(n_L, chunk_size)
    for a in range(0, len(J), c):
        Jc = J[a : a + c]
        if fill:
            S = cache["S"][a : a + c] = R_hat[torch.as_tensor(Jc, device=dev)] @ L_hat.T  # [c, n_L]
        elif rows_c is not None:
            pos = np.minimum(np.searchsorted(rows_c, Jc), len(rows_c) - 1)
            hit = rows_c[pos] == Jc
            S = torch.empty(len(Jc), n_L, device=dev)
            S[torch.as_tensor(hit)] = cache["S"][torch.as_tensor(pos[hit])]
            S[torch.as_tensor(~hit)] = R_hat[torch.as_tensor(Jc[~hit], device=dev)] @ L_hat.T
        else:
            S = R_hat[torch.as_tensor(Jc, device=dev)] @ L_hat.T
        excess = S + u_t - torch.as_tensor(thr[Jc], dtype=torch.float32, device=dev)[:, None]
        ev, ei = torch.topk(excess, min(k_add, n_L), dim=1)
        rows, cols = np.nonzero((ev > -_MARGIN).cpu().numpy())
        ei = ei.cpu().numpy()[rows, cols]
        found.append(
            (Jc[rows], ei, S.cpu().numpy()[rows, ei].astype(np.float64), ev.cpu().numpy()[rows, cols])
        )
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(x) for x in zip(*found))


def _sparse_match(L_hat, R_hat, k, chunk_size, tol, max_rounds, cache_bytes):
    """Min-cost full matching of all R rows into L (n_L >= n_R) on a top-k candidate graph,
    re-solved with violating pairs until dual-certified. Returns (m [n_R] L index per R row,
    exact, rounds). See hungarian_match.
    """
    n_L, n_R = L_hat.shape[0], R_hat.shape[0]
    kR = min(k, n_L)
    vR, iR, _ = topk_pass(L_hat, R_hat, kR, False, chunk_size)
    bound_R = (
        vR[:, -1].double().cpu().numpy() if kR < n_L else np.full(n_R, -np.inf)
    )  # S_rl for l outside top-k
    r, l = np.repeat(np.arange(n_R), kR), iR.cpu().numpy().ravel()
    s = vR.cpu().numpy().ravel().astype(np.float64)
    # feasibility: complete a maximum-cardinality matching with arbitrary (true-cost) pairs
    mb = maximum_bipartite_matching(
        sp.csr_matrix((np.ones(len(r)), (r, l)), shape=(n_R, n_L)), perm_type="column"
    )
    lonely = np.flatnonzero(mb < 0)
    if len(lonely):
        free = np.setdiff1d(np.arange(n_L), mb[mb >= 0])[: len(lonely)]
        extra = (R_hat[lonely] * L_hat[free]).sum(1).double().cpu().numpy()
        r, l, s = np.r_[r, lonely], np.r_[l, free], np.r_[s, extra]
    cache = {"bytes": cache_bytes}
    for rounds in range(1, max_rounds + 1):
        cost = 2.0 - s  # in [1, 3]: LAPJVsp needs non-zero weights; a constant shift keeps the optimum
        _, m = min_weight_full_bipartite_matching(sp.csr_matrix((cost, (r, l)), shape=(n_R, n_L)))
        c_match = np.empty(n_R)
        on = l == m[r]
        c_match[r[on]] = cost[on]
        u = _dual_potentials(n_L, m, r, l, cost, c_match)
        if u is None:
            return m, False, rounds
        thr = 2.0 - (c_match - u[m])  # dual feasible iff S_rl + u_l <= thr_r (+ tol) for all pairs
        J = np.flatnonzero(bound_R + u.max() > thr + tol)  # rows the top-k bound cannot clear
        nr, nl, ns, excess = _violations(L_hat, R_hat, J, thr, u, k, chunk_size, cache)
        fresh = ~np.isin(nr * n_L + nl, r * n_L + l)  # candidates' own excess is float32 noise
        if not (fresh & (excess > tol)).any():
            return m, True, rounds
        r, l, s = np.r_[r, nr[fresh]], np.r_[l, nl[fresh]], np.r_[s, ns[fresh]]
    return m, False, max_rounds


_MATCH_DEFAULTS = dict(
    method="auto", k=32, dense_max=4_000_000, chunk_size=None, tol=1e-5, max_rounds=20, cache_mb=256
)


def _match_hat(A_hat, B_hat, method, k, dense_max, chunk_size, tol, max_rounds, cache_mb) -> Matching:
    n_A, n_B = A_hat.shape[0], B_hat.shape[0]
    methods = ("auto", "dense", "sparse")
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(methods)}")
    if method == "auto":
        method = "dense" if n_A * n_B <= dense_max else "sparse"
    exact, rounds = True, 0
    if method == "dense":
        S = (A_hat @ B_hat.T).double().cpu().numpy()  # [n_A, n_B]
        ra, rb = linear_sum_assignment(S, maximize=True)
    else:
        if k < 1:
            raise ValueError(f"k={k} candidates per row must be >= 1")
        swap = n_A < n_B  # the solver matches every row of the smaller side ("R") into the larger ("L")
        L_hat, R_hat = (B_hat, A_hat) if swap else (A_hat, B_hat)
        m, exact, rounds = _sparse_match(L_hat, R_hat, k, chunk_size, tol, max_rounds, cache_mb * 2**20)
        ra, rb = (np.arange(n_A), m) if swap else (m, np.arange(n_B))
        if not exact:
            warnings.warn(
                f"sparse matching not certified optimal after {rounds} rounds; raise k or max_rounds, or use "
                "method='dense'",
                stacklevel=2,
            )
    order = np.argsort(rb, kind="stable")
    ra, rb = torch.as_tensor(ra[order], dtype=torch.long), torch.as_tensor(rb[order], dtype=torch.long)
    sims = (A_hat[ra.to(A_hat.device)] * B_hat[rb.to(A_hat.device)]).sum(1)
    return Matching(ra, rb, sims, exact=exact, method=method, rounds=rounds)


def hungarian_match(
    A: Any,
    B: Any,
    *,
    method: str = "auto",
    k: int = 32,
    dense_max: int = 4_000_000,
    chunk_size: int | None = None,
    tol: float = 1e-5,
    max_rounds: int = 20,
    cache_mb: float = 256,
) -> Matching:
    """One-to-one assignment maximising sum over pairs of cos(A_i, B_j); min(n_A, n_B) pairs.

    method "dense" (auto when n_A * n_B <= dense_max): scipy linear_sum_assignment on the full
    cosine matrix - exact.
    method "sparse": scipy min_weight_full_bipartite_matching (LAPJVsp) with cost 2 - cos on a
    candidate graph: each row of the smaller side with its top-k rows of the other (one chunked
    GEMM pass), completed by arbitrary true-cost pairs wherever it lacks a full matching. The
    solution is then certified by LP duality: dual potentials of the restricted problem (Bellman-
    Ford) are checked against every pair - cleared wholesale by the k-th-neighbour bound, by an
    exact GEMM only for the rows the bound cannot clear (up to cache_mb of those rows is kept for
    later rounds). Violating pairs are added and the problem re-solved. `.exact` is True when
    certified: the total similarity is then within min(n_A, n_B) * tol of the optimum over all
    pairs (float32 cosines) - exact, not a heuristic. If max_rounds is hit a warning is issued
    and `.exact` is False. Returns Matching(rows_A, rows_B, similarities) sorted by rows_B.
    """
    A_hat, B_hat = _prepare(A, B)
    return _match_hat(A_hat, B_hat, method, k, dense_max, chunk_size, tol, max_rounds, cache_mb)


def hungarian_match_combined(dec_A: Any, dec_B: Any, enc_A: Any, enc_B: Any, **kwargs) -> Matching:
    """Hungarian matching on the mean of decoder and encoder cosine (Paulo & Belrose 2025).

    similarity_ij = (cos(dec_A_i, dec_B_j) + cos(enc_A_i, enc_B_j)) / 2, with dec = W_dec rows and
    enc = W_enc.T rows; computed exactly as the dot product of [dec_hat, enc_hat] / sqrt(2).
    Keyword arguments as in hungarian_match.
    """
    dA, dB = _prepare(dec_A, dec_B)
    eA, eB = _prepare(enc_A, enc_B)
    if dA.shape[0] != eA.shape[0] or dB.shape[0] != eB.shape[0]:
        raise ValueError(
            "encoder and decoder dictionaries must have the same latents; pass W_enc.T, not W_enc"
        )
    bad = set(kwargs) - set(_MATCH_DEFAULTS)
    if bad:
        raise ValueError(f"unknown options {sorted(bad)}; valid: {', '.join(_MATCH_DEFAULTS)}")
    XA, XB = torch.cat([dA, eA], 1) / math.sqrt(2), torch.cat([dB, eB], 1) / math.sqrt(2)
    return _match_hat(XA, XB, **(_MATCH_DEFAULTS | kwargs))


def shared_fraction(similarities: Any, threshold: float = SHARED_COS) -> float:
    """Fraction of matched pairs whose similarity is > threshold ("shared latents")."""
    return float((torch.as_tensor(similarities) > threshold).double().mean())


# ----------------------------------------------------------------------------- the null model
NULL_SEED = 1_234_567  # not a seed any SAE here starts from (their inits are seeded randn draws)


def random_rotation(d: int, seed: int = NULL_SEED) -> torch.Tensor:
    """A Haar-random orthogonal [d, d] matrix (QR of a float64 Gaussian, signs fixed), as float32."""
    q, r = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return (q * torch.sign(torch.diagonal(r))).float()


def rotate_rows(W: Any, seed: int = NULL_SEED) -> torch.Tensor:
    """Every row of a dictionary W [n, d] turned by the same Haar-random rotation: W @ Q."""
    W = as_rows(W, "W")
    return W @ random_rotation(W.shape[1], seed).to(W.device)


def null_shared_fraction(
    A: Any, B: Any, threshold: float = SHARED_COS, seed: int = NULL_SEED, **match_kwargs
) -> float:
    """The chance level of `shared_fraction(hungarian_match(A, B).similarities)`: the same one-to-one
    matching of A against B turned by one Haar-random rotation of the d dimensions (`rotate_rows`).

    The lab's one null model for every shared-fraction baseline (report/compare, tied SAEs, crosscoders
    against per-layer SAEs). Why a rotation of B and not random Gaussian directions: the question is
    whether A and B point the same way, so the null should destroy only their alignment. A rotation
    keeps everything else of B: its row norms, its Gram matrix (how its latents sit relative to each
    other: clusters, near-duplicates, the anisotropy of a trained dictionary) and its rank; i.i.d.
    Gaussian rows are nearly orthogonal to everything in high dimension and have none of that
    structure, so they are a weaker null (they understate the chance overlap of two structured
    dictionaries). Deterministic per `seed`; `match_kwargs` go to `hungarian_match`."""
    B = as_rows(B, "B")
    m = hungarian_match(A, rotate_rows(B, seed), **match_kwargs)
    return shared_fraction(m.similarities, threshold)


def null_shared_fraction_combined(
    dec_A: Any,
    dec_B: Any,
    enc_A: Any,
    enc_B: Any,
    threshold: float = SHARED_COS,
    seed: int = NULL_SEED,
    **match_kwargs,
) -> float:
    """`null_shared_fraction` for `hungarian_match_combined`: B's decoder rows and encoder directions
    (W_enc.T rows) turned by the SAME Haar-random rotation (`rotate_rows`, one `seed`), so B keeps how
    its encoder and decoder sit relative to each other and loses only its alignment with A."""
    dec_B, enc_B = as_rows(dec_B, "dec_B"), as_rows(enc_B, "enc_B")
    m = hungarian_match_combined(
        dec_A, rotate_rows(dec_B, seed), enc_A, rotate_rows(enc_B, seed), **match_kwargs
    )
    return shared_fraction(m.similarities, threshold)
