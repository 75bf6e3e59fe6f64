"""Feature matching between SAE dictionaries (issue #5).

What: top-k cosine search, top-1 ratio / MMCS, one-to-one (Hungarian) matching, feature
splitting, the factor study (pairs of SAEs that differ in one factor) and the layer-pair matrix.
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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

CHUNK_BYTES = 64 * 2**20  # target size of one [chunk, n_A] float32 similarity block


# ----------------------------------------------------------------------------- basics
def _rows(X: Any, name: str) -> torch.Tensor:
    t = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_latents, d], got shape {tuple(t.shape)}; pass W_dec or W_enc.T")
    return t.to(torch.float32)


def _unit(t: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; zero rows stay zero (cosine 0 with everything)."""
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _prepare(A: Any, B: Any) -> tuple[torch.Tensor, torch.Tensor]:
    A_hat, B_hat = _unit(_rows(A, "A")), _unit(_rows(B, "B"))
    if A_hat.shape[1] != B_hat.shape[1]:
        raise ValueError(f"A and B must share d (got {A_hat.shape[1]} vs {B_hat.shape[1]}); pass rows of the same space")
    return A_hat, B_hat.to(A_hat.device)


def _chunk(n_A: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, CHUNK_BYTES // (4 * max(n_A, 1)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    return int(chunk_size)


def _topk_pass(A_hat, B_hat, k: int, col_max: bool = False, chunk_size: int | None = None):
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
    vals, idx, _ = _topk_pass(A_hat, B_hat, k, False, chunk_size)
    return vals, idx


def top1_ratio_curve(values: Any, thresholds: Any) -> np.ndarray:
    """Fraction of rows whose best cosine exceeds each threshold (numpy [n_thresholds]).

    `values` is [n] best cosines or [n, k] top-k values (column 0 used); one sort + searchsorted.
    """
    v = torch.as_tensor(values).detach().cpu().double().numpy()
    v = np.sort(v[:, 0] if v.ndim == 2 else v.ravel())
    t = np.asarray(thresholds, dtype=np.float64)
    return 1.0 - np.searchsorted(v, t, side="right") / max(len(v), 1)


def top1_ratio(A: Any, B: Any, threshold: float = 0.7, chunk_size: int | None = None) -> float:
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

    def __new__(cls, rows_A, rows_B, similarities, exact: bool = True, method: str = "dense", rounds: int = 0):
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
        found.append((Jc[rows], ei, S.cpu().numpy()[rows, ei].astype(np.float64), ev.cpu().numpy()[rows, cols]))
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
    vR, iR, _ = _topk_pass(L_hat, R_hat, kR, False, chunk_size)
    bound_R = vR[:, -1].double().cpu().numpy() if kR < n_L else np.full(n_R, -np.inf)  # S_rl for l outside top-k
    r, l = np.repeat(np.arange(n_R), kR), iR.cpu().numpy().ravel()
    s = vR.cpu().numpy().ravel().astype(np.float64)
    # feasibility: complete a maximum-cardinality matching with arbitrary (true-cost) pairs
    mb = maximum_bipartite_matching(sp.csr_matrix((np.ones(len(r)), (r, l)), shape=(n_R, n_L)), perm_type="column")
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


_MATCH_DEFAULTS = dict(method="auto", k=32, dense_max=4_000_000, chunk_size=None, tol=1e-5, max_rounds=20, cache_mb=256)


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
            warnings.warn(f"sparse matching not certified optimal after {rounds} rounds; raise k or max_rounds, or use method='dense'")
    order = np.argsort(rb, kind="stable")
    ra, rb = torch.as_tensor(ra[order], dtype=torch.long), torch.as_tensor(rb[order], dtype=torch.long)
    sims = (A_hat[ra.to(A_hat.device)] * B_hat[rb.to(A_hat.device)]).sum(1)
    return Matching(ra, rb, sims, exact=exact, method=method, rounds=rounds)


def hungarian_match(A: Any, B: Any, *, method: str = "auto", k: int = 32, dense_max: int = 4_000_000,
                    chunk_size: int | None = None, tol: float = 1e-5, max_rounds: int = 20,
                    cache_mb: float = 256) -> Matching:
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
        raise ValueError("encoder and decoder dictionaries must have the same latents; pass W_enc.T, not W_enc")
    bad = set(kwargs) - set(_MATCH_DEFAULTS)
    if bad:
        raise ValueError(f"unknown options {sorted(bad)}; valid: {', '.join(_MATCH_DEFAULTS)}")
    XA, XB = torch.cat([dA, eA], 1) / math.sqrt(2), torch.cat([dB, eB], 1) / math.sqrt(2)
    return _match_hat(XA, XB, **(_MATCH_DEFAULTS | kwargs))


def shared_fraction(similarities: Any, threshold: float = 0.7) -> float:
    """Fraction of matched pairs whose similarity is > threshold ("shared latents")."""
    return float((torch.as_tensor(similarities) > threshold).double().mean())


# ----------------------------------------------------------------------------- SAE variants
def _check_sae(sae: Any) -> None:
    W_enc, W_dec = sae.W_enc, sae.W_dec
    if tuple(W_enc.shape) != tuple(W_dec.shape)[::-1]:
        raise ValueError(f"SAE needs W_enc [d_in, d_sae] and W_dec [d_sae, d_in], got {tuple(W_enc.shape)} and {tuple(W_dec.shape)}")


VARIANTS: dict[str, Callable[[Any, Any], tuple[Any, Any]]] = {
    "decoder": lambda a, b: (a.W_dec, b.W_dec),  # latents: rows of W_dec [d_sae, d_in]
    "encoder": lambda a, b: (a.W_enc.T, b.W_enc.T),  # latents: columns of W_enc [d_in, d_sae]
    "neuron": lambda a, b: (neuron_basis(b.W_dec.shape[1]), b.W_dec),  # B's decoder vs model neurons
    "decoder_neuron": lambda a, b: (a.W_dec.T, b.W_dec.T),  # post's "decoder neurons": [d_in, d_sae]
    "encoder_neuron": lambda a, b: (a.W_enc, b.W_enc),  # post's "encoder neurons": [d_in, d_sae]
}


def variant_dictionaries(sae_A: Any, sae_B: Any, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (A, B) dictionaries, one latent per row, that a matching variant compares.

    "decoder": W_dec rows; "encoder": W_enc.T rows; "neuron": identity basis of d_in (A) vs B's
    decoder (chance baseline); "decoder_neuron"/"encoder_neuron": the post's neuron variants (rows
    indexed by model dimension, needs equal d_sae).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    _check_sae(sae_A), _check_sae(sae_B)
    A, B = VARIANTS[variant](sae_A, sae_B)
    return _rows(A, "A"), _rows(B, "B")


# ----------------------------------------------------------------------------- feature splitting
@dataclass
class FeatureSplitting:
    """Children (rows of the larger dictionary) assigned to their best parent."""

    best_parent: torch.Tensor  # [n_child] int64, -1 where the best cosine is <= threshold
    best_cos: torch.Tensor  # [n_child] best cosine to any parent
    counts: torch.Tensor  # [n_parent] children whose best parent it is (cosine > threshold)
    examples: dict[int, list[int]]  # parent -> its children, for the parents with most children
    threshold: float


def feature_splitting(parent: Any, child: Any, threshold: float = 0.7, n_examples: int = 10,
                      chunk_size: int | None = None) -> FeatureSplitting:
    """For each parent latent, the child latents whose best parent it is with cosine > threshold.

    child_j -> argmax_i cos(parent_i, child_j) if that max > threshold; counts = bincount.
    """
    vals, idx = topk_cosine(parent, child, 1, chunk_size)
    best_cos, best = vals[:, 0], idx[:, 0]
    best_parent = torch.where(best_cos > threshold, best, torch.full_like(best, -1))
    kept = best_parent >= 0
    counts = torch.bincount(best_parent[kept], minlength=_rows(parent, "parent").shape[0])
    top = torch.argsort(counts, descending=True, stable=True)[:n_examples]
    top = top[counts[top] > 0]
    examples = {int(p): torch.nonzero(best_parent == p).ravel().tolist() for p in top}  # <= n_examples parents
    return FeatureSplitting(best_parent, best_cos, counts, examples, threshold)


# ----------------------------------------------------------------------------- factor study
FACTORS = ("seed", "corpus", "architecture", "k", "d_sae", "layer")


@dataclass(frozen=True)
class SAEEntry:
    """One SAE of the factor study, described by its factor values; `loader()` returns the SAE."""

    name: str
    seed: int
    corpus: str
    architecture: str
    k: int | None
    d_sae: int
    layer: int
    loader: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def factor_values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FACTORS}

    def to_dict(self) -> dict[str, Any]:
        return {key: v for key, v in asdict(self).items() if key != "loader"}

    @classmethod
    def from_dict(cls, d: dict[str, Any], loader: Callable[[], Any] | None = None) -> "SAEEntry":
        return cls(**d, loader=loader)


@dataclass
class PairResult:
    """Matching of two SAEs that differ only in `factor`: B's latents matched into A."""

    factor: str
    name_a: str
    name_b: str
    value_a: Any
    value_b: Any
    variant: str
    threshold: float
    best_cos: np.ndarray  # [n_latents_B] best cosine of each B latent to any A latent
    top1_ratio: float

    def summary(self) -> dict[str, Any]:
        """One table row (no arrays)."""
        row = {key: v for key, v in asdict(self).items() if key != "best_cos"}
        return row | {"mean_best_cos": float(self.best_cos.mean())}


@dataclass
class FactorRank:
    factor: str
    mean_top1_ratio: float
    n_pairs: int


def factor_pairs(entries: Sequence[SAEEntry], factors: Sequence[str] = FACTORS,
                 free: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    """(factor, i, j) for every unordered pair i < j whose factor values differ in exactly that factor.

    `free` factors (e.g. ("seed",) when every SAE has its own initialisation) may differ in any
    pair: a pair then counts for the one other factor it differs in, or for the free factor when
    it differs in nothing else (the seed pair, the noise floor every other factor is read against).
    """
    bad = [f for f in [*factors, *free] if f not in FACTORS]
    if bad:
        raise ValueError(f"unknown factors {bad}; valid: {', '.join(FACTORS)}")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("SAEEntry names must be unique; rename the duplicates")
    table = np.array([[repr(e.factor_values()[f]) for f in FACTORS] for e in entries], dtype=object)
    fixed = np.array([f not in free for f in FACTORS])
    out = []
    for i in range(len(entries)):
        diff = table[i + 1 :] != table[i]  # [n - i - 1, n_factors]
        for j in range(diff.shape[0]):
            d = diff[j]
            if (d & fixed).sum() == 1:
                f = FACTORS[int(np.flatnonzero(d & fixed)[0])]
            elif (d & fixed).sum() == 0 and d.sum() == 1:
                f = FACTORS[int(np.flatnonzero(d)[0])]
            else:
                continue
            if f in factors:
                out.append((f, i, i + 1 + j))
    return out


def factor_study(entries: Sequence[SAEEntry], factors: Sequence[str] = FACTORS, variant: str = "decoder",
                 threshold: float = 0.7, method: str = "top1", chunk_size: int | None = None,
                 free: Sequence[str] = ()) -> list[PairResult]:
    """Match every pair of SAEs that differ only in one factor (besides the `free` ones, see
    `factor_pairs`); each pair once, each SAE loaded once.

    For pair (a, b) with a before b in `entries`: method "top1" (the post) - best cosine of each
    latent of b in a; "hungarian" - one-to-one matched cosines. top1_ratio = fraction > threshold.
    """
    if method not in ("top1", "hungarian"):
        raise ValueError(f"unknown method {method!r}; valid: top1, hungarian")
    pairs = factor_pairs(entries, factors, free)
    last_use = {}
    for n, (_, i, j) in enumerate(pairs):
        last_use[i] = last_use[j] = n
    cache: dict[int, Any] = {}
    results = []
    for n, (f, i, j) in enumerate(pairs):
        for e in (i, j):
            if e not in cache:
                if entries[e].loader is None:
                    raise ValueError(f"SAEEntry {entries[e].name!r} has no loader; pass loader=lambda: load_sae(path)")
                cache[e] = entries[e].loader()
        A, B = variant_dictionaries(cache[i], cache[j], variant)
        if method == "top1":
            best = topk_cosine(A, B, 1, chunk_size)[0][:, 0].cpu().numpy()
        else:
            best = hungarian_match(A, B, chunk_size=chunk_size).similarities.cpu().numpy()
        ea, eb = entries[i], entries[j]
        results.append(PairResult(f, ea.name, eb.name, getattr(ea, f), getattr(eb, f), variant, threshold,
                                  best, float((best > threshold).mean())))
        for e in (i, j):
            if last_use[e] == n:
                del cache[e]
    return results


def rank_factors(results: Sequence[PairResult]) -> list[FactorRank]:
    """Factors by mean top-1 ratio over their pairs, ascending (first = changes features most)."""
    by: dict[str, list[float]] = {}
    for res in results:
        by.setdefault(res.factor, []).append(res.top1_ratio)
    ranks = [FactorRank(f, float(np.mean(v)), len(v)) for f, v in by.items()]
    return sorted(ranks, key=lambda r: r.mean_top1_ratio)


# ----------------------------------------------------------------------------- layer pairs
def layer_pair_matrix(dictionaries: Sequence[Any], threshold: float = 0.7, chunk_size: int | None = None) -> np.ndarray:
    """M [n, n] (numpy) with M[i, j] = fraction of rows of dictionaries[j] whose best cosine to
    dictionaries[i] is > threshold (decoder top-1 ratio); diagonal 1.

    Both directions of a pair come from one chunked GEMM pass, so each unordered pair costs one pass.
    """
    hats = [_unit(_rows(D, f"dictionaries[{n}]")) for n, D in enumerate(dictionaries)]
    n = len(hats)
    M = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            if hats[i].shape[1] != hats[j].shape[1]:
                raise ValueError(f"dictionaries {i} and {j} differ in d; pass rows of the same space")
            vb, _, va = _topk_pass(hats[i], hats[j], 1, True, chunk_size)
            M[i, j] = float((vb[:, 0] > threshold).double().mean())
            M[j, i] = float((va > threshold).double().mean())
    return M
