"""Massive-activation tokens: residuals whose norm is many times the layer's median norm.

What: `token_norms(store, layer)` ([n_seq, T] L2 norms), `massive_threshold(store, layer, ratio)`
(ratio x the layer's median token norm), `find_massive(store, layer, ...)` -> `MassiveTokens`
(which tokens, where, how large, and what share of the variance about the mean they carry).
Why: a handful of tokens can dominate every second-moment statistic. On SmolLM2's layer 12 over
Python docs, 3 of 16,350 held-out tokens (not the BOS) had norms up to ~170x the median and
carried ~79% of the variance about the mean: FVU measured with them says how well an SAE
reconstructs three tokens. Like the first-token attention sink (Sun et al. 2024, "Massive
activations"), they are excluded from SAE training and from reconstruction metrics by default
(`BatchStream(max_norm=...)`, `reconstruction_eval(max_norm=...)`), and shown in notebook 01.
The default ratio (`DEFAULT_RATIO`) sits far above the bulk of the norm distribution (typical
tokens stay within ~3x the median) and far below the sink-like tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RATIO = 10.0


def token_norms(store, layer: int, shards: Sequence[int] | None = None) -> np.ndarray:
    """L2 norm of every token's residual, [n_seq_selected, T] float32 (rows in shard order)."""
    shards = range(store.n_shards) if shards is None else shards
    out = [np.linalg.norm(np.asarray(store.shard_acts(int(s), layer), dtype=np.float32), axis=-1)
           for s in shards]
    return np.concatenate(out) if out else np.zeros((0, store.seq_len), np.float32)


def massive_threshold(store, layer: int, ratio: float = DEFAULT_RATIO,
                      shards: Sequence[int] | None = None) -> float:
    """`ratio` x the median token norm of `layer` (over `shards`, default all)."""
    if not ratio > 1:
        raise ValueError(f"massive-token ratio must be > 1 (a multiple of the median norm), got {ratio}")
    norms = token_norms(store, layer, shards)
    if norms.size == 0:
        raise ValueError(f"no tokens in shards {list(shards or [])} of {store.path}; pick stored shards")
    return float(ratio * np.median(norms))


@dataclass
class MassiveTokens:
    """The tokens of one layer whose residual norm exceeds `threshold` = ratio x median norm."""
    layer: int
    ratio: float
    median_norm: float
    threshold: float
    n_tokens: int               # tokens considered
    seq: np.ndarray             # [n_massive] sequence id in the store
    pos: np.ndarray             # [n_massive] position in the sequence
    token_id: np.ndarray        # [n_massive]
    norm: np.ndarray            # [n_massive]
    variance_share: float       # share of sum ||x - mean||^2 carried by these tokens

    @property
    def count(self) -> int:
        return len(self.norm)

    def rows(self, decode=None) -> list[dict]:
        """One dict per massive token (largest norm first); `decode(id) -> str` adds its text."""
        order = np.argsort(-self.norm)
        return [{"seq": int(self.seq[i]), "pos": int(self.pos[i]), "token_id": int(self.token_id[i]),
                 **({"token": decode(int(self.token_id[i]))} if decode else {}),
                 "norm": float(self.norm[i]), "x_median": float(self.norm[i] / self.median_norm)}
                for i in order]

    def summary(self) -> str:
        return (f"L{self.layer}: {self.count} of {self.n_tokens:,} tokens above {self.ratio:g}x the median norm "
                f"({self.median_norm:.1f}); they carry {self.variance_share:.1%} of the variance about the mean")


def find_massive(store, layer: int, ratio: float = DEFAULT_RATIO, shards: Sequence[int] | None = None,
                 exclude_tokens: Sequence[int] = ()) -> MassiveTokens:
    """Massive tokens of `layer` over `shards` (default all), among tokens whose id is not in
    `exclude_tokens` (e.g. the BOS/separator, which SAEs never see anyway)."""
    shards = list(range(store.n_shards)) if shards is None else [int(s) for s in shards]
    threshold = massive_threshold(store, layer, ratio, shards)
    n = 0
    sum_x = np.zeros(store.d_model)
    sum_sq = 0.0
    hits: list[tuple[int, int, int, float]] = []
    rows_per_shard = store.request.shard_seqs
    for s in shards:
        acts = np.asarray(store.shard_acts(s, layer), dtype=np.float32)
        toks = np.asarray(store.shard_tokens(s))
        keep = ~np.isin(toks, np.asarray(exclude_tokens, dtype=toks.dtype))
        x = acts[keep].astype(np.float64)
        n += len(x)
        sum_x += x.sum(0)
        sum_sq += float((x * x).sum())
        norms = np.linalg.norm(acts, axis=-1)
        for i, t in zip(*np.nonzero((norms > threshold) & keep)):
            hits.append((s * rows_per_shard + int(i), int(t), int(toks[i, t]), float(norms[i, t])))
    mu = sum_x / max(n, 1)
    total = sum_sq - n * float(mu @ mu)
    massive_ss = 0.0
    for seq, pos, _, _ in hits:
        x = store.acts_for(layer, [seq])[0, pos].astype(np.float64)
        massive_ss += float(((x - mu) ** 2).sum())
    arr = np.array(hits, dtype=np.float64).reshape(-1, 4)
    return MassiveTokens(layer, ratio, threshold / ratio, threshold, n, arr[:, 0].astype(int), arr[:, 1].astype(int),
                         arr[:, 2].astype(int), arr[:, 3], massive_ss / total if total > 0 else 0.0)
