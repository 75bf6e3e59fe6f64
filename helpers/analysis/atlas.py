"""UMAP atlas of SAE decoder directions (post figure F14) and the alignment maths behind it.

Three views, all built from plain arrays so the caller decides which SAEs and rows to show:
- per-layer embeddings: one UMAP fit per layer's `W_dec` (`embed_groups`);
- one combined embedding of several decoders with rows labelled by group (layer, or SAE for the
  seed/corpus pair view), so positions are comparable across groups (`embed_combined`);
- successive per-layer fits made comparable by orthogonal Procrustes on matched rows
  (`procrustes_align`, `align_sequence`) for the layer animation;
and two readings of them: how far successive groups' centroids move in one embedding
(`centroid_steps`), and a pair of SAEs in one embedding with each latent marked matched or not
(`pair_view`, `PairView`).

umap-learn is imported lazily: the import takes ~14 s and the first fit in a process compiles
numba kernels (~46 s measured on a 2-core CPU); later fits of a few thousand rows take seconds.
Embeddings are numpy float32 arrays [n, 2] (they only feed matplotlib / HTML).

Small-n fallback: UMAP needs more rows than `n_neighbors`. With `small_n="pca"` (default) an input
with n <= n_neighbors is embedded by PCA-2 of the (row-normalised, for cosine) directions with a
warning; with `small_n="cap"` UMAP runs with n_neighbors = n - 1 (needs n >= 4). n == 1 gives (0, 0).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from helpers.analysis.similarity import SHARED_COS, topk_cosine
from helpers.checks import as_matrix

_FIRST_FIT_DONE = False
SMALL_N_CHOICES = ("pca", "cap")
EXACT_KNN_METRICS = ("cosine", "euclidean")


def _as_numpy(x, name: str) -> np.ndarray:
    return as_matrix(x, name, "pass W_dec rows, not a flat vector", finite=True).cpu().numpy()


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """x / ||x|| per row; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def pca_embed(directions, n_components: int = 2, normalize: bool = True) -> np.ndarray:
    """PCA coordinates: Y = (X - mean) @ V[:, :k], V the right singular vectors; [n, k] float32.

    With `normalize` the rows are scaled to unit norm first (matches a cosine metric). Signs are
    fixed so each component's largest-|loading| entry is positive (deterministic output).
    """
    x = _as_numpy(directions, "directions")
    if normalize:
        x = _unit_rows(x)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    vt = vt[:n_components]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    y = x @ (vt * signs[:, None]).T
    if y.shape[1] < n_components:  # fewer rows/dims than components: pad with zeros
        y = np.pad(y, ((0, 0), (0, n_components - y.shape[1])))
    return y.astype(np.float32)


def exact_knn(directions, k: int, metric: str = "cosine", chunk_elems: int = 1 << 24):
    """Exact k nearest neighbours by chunked torch matmul: (indices [n, k] int64, distances [n, k] float32).

    Column 0 is the point itself (distance 0), as umap's own kNN returns. cosine: d = 1 - <x/|x|, y/|y|>;
    euclidean: d = sqrt(|x|^2 + |y|^2 - 2 <x, y>). Memory O(chunk_elems), never [n, n].
    """
    import torch  # noqa: PLC0415

    if metric not in EXACT_KNN_METRICS:
        raise ValueError(f"exact_knn metric {metric!r} unsupported; choose one of {EXACT_KNN_METRICS}")
    x = torch.from_numpy(_as_numpy(directions, "directions"))
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, n={n}]")
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    sq = (x * x).sum(1)
    step = max(1, chunk_elems // max(n, 1))
    idx = torch.empty(n, k, dtype=torch.int64)
    dist = torch.empty(n, k, dtype=torch.float32)
    for s in range(0, n, step):  # chunks of rows, not a loop over latents
        rows = torch.arange(s, min(s + step, n))
        sim = x[rows] @ x.T  # [c, n]
        score = sim if metric == "cosine" else 2 * sim - sq[None, :]  # larger = closer
        score[torch.arange(len(rows)), rows] = float("inf")  # self first
        top = torch.topk(score, k, dim=1)
        idx[rows] = top.indices
        if metric == "cosine":
            d = (1.0 - sim.gather(1, top.indices)).clamp(min=0.0)
        else:
            d = (sq[rows, None] + sq[top.indices] - 2 * sim.gather(1, top.indices)).clamp(min=0.0).sqrt()
        d[:, 0] = 0.0
        dist[rows] = d
    return idx.numpy(), dist.numpy()


def _import_umap():
    if "umap" not in sys.modules:
        print("importing umap-learn (~14 s the first time in a process)...", flush=True)
    import umap  # noqa: PLC0415 - lazy on purpose (slow import)

    return umap


def umap_embed(
    directions,  # [n, d]
    random_state: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    n_epochs: int | None = None,
    init: str = "spectral",
    small_n: str = "pca",
    exact_knn_max: int = 12_000,
    verbose: bool = True,
) -> np.ndarray:  # [n, 2] float32
    """2-D UMAP embedding of the rows of `directions` with a fixed `random_state` (reproducible).

    For n <= exact_knn_max (cosine/euclidean) the kNN graph is computed exactly with torch
    (`exact_knn`) and handed to UMAP as precomputed_knn: this skips pynndescent, whose numba
    compilation costs ~40-70 s per process for n >= 4096; larger n uses umap's own NN-descent.
    `verbose` prints the compile note and each fit's size and time (umap-learn's own verbose
    mode prints its whole repr, precomputed kNN arrays included, so it stays off). Small inputs (n <=
    n_neighbors) fall back per `small_n` (see module docstring).
    """
    if small_n not in SMALL_N_CHOICES:
        raise ValueError(f"small_n={small_n!r} unknown; choose one of {SMALL_N_CHOICES}")
    x = _as_numpy(directions, "directions")
    n = x.shape[0]
    if n <= 1:
        return np.zeros((n, 2), dtype=np.float32)
    if n <= n_neighbors:
        if small_n == "pca" or n < 4:
            warnings.warn(
                f"umap_embed: n={n} <= n_neighbors={n_neighbors}; using PCA-2 instead of UMAP "
                "(pass small_n='cap' to run UMAP with n_neighbors=n-1)",
                stacklevel=2,
            )
            return pca_embed(x, normalize=(metric == "cosine"))
        n_neighbors = n - 1
    umap = _import_umap()
    global _FIRST_FIT_DONE
    if not _FIRST_FIT_DONE and verbose:
        print(
            "umap: the first fit in a process compiles numba kernels (~46 s measured); "
            "later fits take seconds",
            flush=True,
        )
    t0 = time.perf_counter()
    knn = (None, None, None)
    if metric in EXACT_KNN_METRICS and n <= exact_knn_max:
        knn = (*exact_knn(x, n_neighbors, metric), None)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric=metric,
        random_state=random_state,
        n_epochs=n_epochs,
        init=init,
        verbose=False,
        precomputed_knn=knn,
    )
    with warnings.catch_warnings():
        # a fixed random_state disables parallelism; umap warns about it on every fit, and
        # about transform() being unavailable without a search index (we never transform)
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        y = reducer.fit_transform(x)
    _FIRST_FIT_DONE = True
    if verbose:
        print(f"umap: {n} x {x.shape[1]} embedded in {time.perf_counter() - t0:.1f} s", flush=True)
    return np.asarray(y, dtype=np.float32)


@dataclass
class GroupedEmbedding:
    """One embedding of stacked groups of rows (layers, or the two SAEs of a pair).

    coords  # [N, 2]  all rows, groups stacked in `groups` order
    labels  # [N]     position of each row's group in `groups` (int)
    rows    # [N]     row index of each point inside its own group (e.g. the latent id)
    groups  # group keys in stacking order (layer ints, SAE names, ...)
    """

    coords: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    groups: list

    def mask(self, group: Hashable) -> np.ndarray:  # [N] bool
        if group not in self.groups:
            raise ValueError(f"group {group!r} not in this embedding; choose one of {self.groups}")
        return self.labels == self.groups.index(group)

    def of(self, group: Hashable) -> np.ndarray:  # [n_group, 2]
        """Coordinates of one group's embedded rows, sorted by row index (= latent id)."""
        m = self.mask(group)
        return self.coords[m][np.argsort(self.rows[m], kind="stable")]

    def split(self) -> dict:
        """{group: coords [n_group, 2]} - the per-frame input of `plots.atlas.animate_layers`."""
        return {g: self.of(g) for g in self.groups}

    def stack(self, per_group: Mapping) -> np.ndarray:  # [N, ...]
        """Concatenate per-group arrays (e.g. densities, matched masks) in this embedding's row order."""
        missing = [g for g in self.groups if g not in per_group]
        if missing:
            raise ValueError(f"per_group lacks groups {missing}; pass one array per group of the embedding")
        parts = [np.asarray(per_group[g])[self.rows[self.labels == i]] for i, g in enumerate(self.groups)]
        return np.concatenate(parts)


def stack_groups(directions_by_group: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Stack {group: [n_g, d]} into X [N, d], labels [N] (group position), rows [N], groups."""
    if not directions_by_group:
        raise ValueError("directions_by_group is empty; pass {layer_or_name: W_dec [n, d]}")
    groups = list(directions_by_group)
    mats = [_as_numpy(directions_by_group[g], f"directions[{g!r}]") for g in groups]
    dims = {m.shape[1] for m in mats}
    if len(dims) != 1:
        raise ValueError(f"groups have different widths {sorted(dims)}; all decoders must share d_in")
    labels = np.concatenate([np.full(len(m), i, dtype=np.int64) for i, m in enumerate(mats)])
    rows = np.concatenate([np.arange(len(m), dtype=np.int64) for m in mats])
    return np.concatenate(mats), labels, rows, groups


def embed_groups(directions_by_group: Mapping, **umap_kwargs) -> dict:
    """Separate fits: {group: umap_embed(W_dec_group) [n_g, 2]} (per-layer panels of F14)."""
    out = {}
    for g, w in directions_by_group.items():
        if umap_kwargs.get("verbose", True):
            print(f"-- embedding {g!r}", flush=True)
        out[g] = umap_embed(w, **umap_kwargs)
    return out


def embed_combined(
    directions_by_group: Mapping, max_rows_per_group: int | None = None, seed: int = 0, **umap_kwargs
) -> GroupedEmbedding:
    """ONE fit over all groups' rows stacked (combined-by-layer view, seed/corpus pair view).

    max_rows_per_group: embed a seeded random subset of each larger group (e.g. 30 layers x 4608
    rows -> 30 x 1000) to keep the fit fast; `rows` then holds the sampled latent ids.
    """
    x, labels, rows, groups = stack_groups(directions_by_group)
    if max_rows_per_group is not None:
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(x), dtype=bool)
        for i in range(len(groups)):  # loop over groups (layers), not latents
            idx = np.flatnonzero(labels == i)
            take = (
                idx if len(idx) <= max_rows_per_group else rng.choice(idx, max_rows_per_group, replace=False)
            )
            keep[take] = True
        x, labels, rows = x[keep], labels[keep], rows[keep]
    return GroupedEmbedding(umap_embed(x, **umap_kwargs), labels, rows, groups)


def centroid_steps(embedding: GroupedEmbedding) -> list[float]:
    """[n_groups - 1] Euclidean distance between successive groups' centroids (mean of their embedded
    rows), in `embedding.groups` order: with layers as groups, how far the decoder cloud moves from one
    layer to the next. UMAP units: compare steps within one fit, never across fits."""
    centroids_G2 = np.stack([embedding.of(g).mean(0) for g in embedding.groups])
    return [float(v) for v in np.linalg.norm(np.diff(centroids_G2, axis=0), axis=1)]


def median_split(values, mask) -> tuple[float, float]:
    """(median of values where mask, median where not mask); NaN for an empty side (no warning)."""
    values, mask = np.asarray(values, dtype=np.float64), np.asarray(mask, dtype=bool)
    if values.shape != mask.shape:
        raise ValueError(f"values {values.shape} and mask {mask.shape} must have one entry each per latent")
    return tuple(float(np.median(values[m])) if m.any() else float("nan") for m in (mask, ~mask))


@dataclass
class PairView:
    """Two SAEs' decoder rows in one embedding (groups "A", "B"); a latent is matched when its best
    decoder cosine in the other SAE exceeds the threshold (`similarity.SHARED_COS` by default)."""

    embedding: GroupedEmbedding
    matched_a: np.ndarray  # [m_A] bool
    matched_b: np.ndarray  # [m_B] bool

    @property
    def coords(self) -> np.ndarray:  # [m_A + m_B, 2]
        return self.embedding.coords

    @property
    def labels(self) -> np.ndarray:  # [m_A + m_B] 0 = A, 1 = B
        return self.embedding.labels

    @property
    def matched(self) -> np.ndarray:  # [m_A + m_B] bool, in the embedding's row order
        return self.embedding.stack({"A": self.matched_a, "B": self.matched_b})

    def summary(self, density_a=None) -> str:
        """One sentence: the matched share of each side and, given A's density [m_A], the median density
        of its matched and unmatched latents."""
        out = f"{self.matched_a.mean():.0%} of A and {self.matched_b.mean():.0%} of B matched"
        if density_a is not None:
            on, off = median_split(density_a, self.matched_a)
            out += f"; matched A latents fire on {on:.2%} of tokens (median) vs {off:.2%} for unmatched"
        return out + "."


def pair_view(W_dec_a, W_dec_b, threshold: float = SHARED_COS, **umap_kwargs) -> PairView:
    """ONE embedding of both decoders ([m_A, d], [m_B, d]) and each latent's matched flag: its best
    cosine in the other decoder > threshold (`similarity.topk_cosine`, both directions)."""
    best_a = topk_cosine(W_dec_b, W_dec_a, 1)[0][:, 0].numpy()  # [m_A] best cosine of each A row in B
    best_b = topk_cosine(W_dec_a, W_dec_b, 1)[0][:, 0].numpy()  # [m_B]
    emb = embed_combined({"A": W_dec_a, "B": W_dec_b}, **umap_kwargs)
    return PairView(emb, best_a > threshold, best_b > threshold)


@dataclass
class SimilarityTransform:
    """y -> scale * y @ rotation + translation (rotation orthogonal, det may be -1 if allowed)."""

    rotation: np.ndarray  # [2, 2]
    scale: float
    translation: np.ndarray  # [2]

    def apply(self, y) -> np.ndarray:  # [n, 2] -> [n, 2]
        return (self.scale * np.asarray(y, dtype=np.float64) @ self.rotation + self.translation).astype(
            np.float32
        )


def procrustes_fit(y_ref, y, scale: bool = True, allow_reflection: bool = True) -> SimilarityTransform:
    """Least-squares similarity mapping paired rows y -> y_ref (orthogonal Procrustes, Umeyama).

    With centred A = y - mean(y), B = y_ref - mean(y_ref) and U S V^T = svd(A^T B):
    R = U V^T (D = diag(1, sign det) inserted when reflections are not allowed),
    s = tr(S D) / ||A||_F^2, t = mean(y_ref) - s * mean(y) @ R.
    """
    a = np.asarray(y, dtype=np.float64)
    b = np.asarray(y_ref, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"y {a.shape} and y_ref {b.shape} must be paired rows of equal shape [n, k]")
    if len(a) < 2:
        raise ValueError("procrustes needs at least 2 paired rows; pass more matched rows")
    mu_a, mu_b = a.mean(0), b.mean(0)
    a0, b0 = a - mu_a, b - mu_b
    u, s_vals, vt = np.linalg.svd(a0.T @ b0)
    d = np.ones(len(s_vals))
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        d[-1] = -1.0
    rot = (u * d) @ vt
    denom = (a0**2).sum()
    s = float((s_vals * d).sum() / denom) if (scale and denom > 0) else 1.0
    return SimilarityTransform(rot, s, mu_b - s * mu_a @ rot)


def procrustes_align(
    y_ref,  # [n_ref, 2]
    y,  # [n, 2]
    rows_ref=None,  # [m] int rows of y_ref paired with ...
    rows=None,  # [m] int rows of y
    scale: bool = True,
    allow_reflection: bool = True,
) -> np.ndarray:  # [n, 2]
    """All of `y` moved by the similarity that best maps y[rows] onto y_ref[rows_ref].

    Without row indices the two arrays must be paired row by row. UMAP layouts are defined up to
    rotation/reflection/scale/translation, so this makes successive fits visually comparable.
    """
    y_ref = np.asarray(y_ref)
    y = np.asarray(y)
    if (rows_ref is None) != (rows is None):
        raise ValueError("pass both rows_ref and rows (the matched pairs) or neither")
    if rows is None:
        fit = procrustes_fit(y_ref, y, scale=scale, allow_reflection=allow_reflection)
    else:
        rows_ref, rows = np.asarray(rows_ref), np.asarray(rows)
        fit = procrustes_fit(y_ref[rows_ref], y[rows], scale=scale, allow_reflection=allow_reflection)
    return fit.apply(y)


def align_sequence(
    coords: Sequence[np.ndarray],  # L x [n_l, 2]
    pairs: Sequence[tuple] | None = None,  # L-1 x (rows in l, rows in l+1)
    scale: bool = True,
    allow_reflection: bool = True,
) -> list[np.ndarray]:
    """Chain-align per-layer fits: frame l+1 is Procrustes-aligned to the already aligned frame l.

    `pairs[l] = (rows_l, rows_l1)` are matched rows between layers l and l+1 (from the matching
    module, e.g. mutual top-1 decoder cosine); None pairs rows one-to-one (same n required).
    """
    out = [np.asarray(coords[0], dtype=np.float32)]
    if pairs is not None and len(pairs) != len(coords) - 1:
        raise ValueError(f"need {len(coords) - 1} pair arrays for {len(coords)} frames, got {len(pairs)}")
    for i in range(1, len(coords)):
        r_prev, r_next = (None, None) if pairs is None else pairs[i - 1]
        out.append(procrustes_align(out[-1], coords[i], r_prev, r_next, scale, allow_reflection))
    return out
