"""Massive-activation tokens: residuals whose norm is many times the layer's median norm.

What: `token_norms(store, layer)` ([n_seq, T] L2 norms), `massive_threshold(store, layer, ratio)`
(ratio x the layer's median token norm), `find_massive(store, layer, ...)` -> `MassiveTokens`
(which tokens, where, how large, and what share of the variance about the mean they carry;
`most_common` groups them by token and position). The first-token outlier read off the mean norm per
position (`store.position_norms`): `first_token_ratio`, `late_token_ratio`, `position_norm_summary`.
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_RATIO = 10.0


def token_norms(store, layer: int, shards: Sequence[int] | None = None) -> np.ndarray:
    """L2 norm of every token's residual, [n_seq_selected, T] float32 (rows in shard order)."""
    shards = range(store.n_shards) if shards is None else shards
    out = [
        np.linalg.norm(np.asarray(store.shard_acts(int(s), layer), dtype=np.float32), axis=-1) for s in shards
    ]
    return np.concatenate(out) if out else np.zeros((0, store.seq_len), np.float32)


def massive_threshold(
    store, layer: int, ratio: float = DEFAULT_RATIO, shards: Sequence[int] | None = None
) -> float:
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
    n_tokens: int  # tokens considered
    seq: np.ndarray  # [n_massive] sequence id in the store
    pos: np.ndarray  # [n_massive] position in the sequence
    token_id: np.ndarray  # [n_massive]
    norm: np.ndarray  # [n_massive]
    variance_share: float  # share of sum ||x - mean||^2 carried by these tokens

    @property
    def count(self) -> int:
        return len(self.norm)

    def rows(self, decode=None) -> list[dict]:
        """One dict per massive token (largest norm first); `decode(id) -> str` adds its text."""
        order = np.argsort(-self.norm)
        return [
            {
                "seq": int(self.seq[i]),
                "pos": int(self.pos[i]),
                "token_id": int(self.token_id[i]),
                **({"token": decode(int(self.token_id[i]))} if decode else {}),
                "norm": float(self.norm[i]),
                "x_median": float(self.norm[i] / self.median_norm),
            }
            for i in order
        ]

    @property
    def max_x_median(self) -> float:
        """The largest massive norm in multiples of the median norm (0.0 when there is none)."""
        return float(self.norm.max() / self.median_norm) if self.count else 0.0

    def most_common(self, decode: Callable[[int], str], n: int = 8) -> pd.DataFrame:
        """The n most frequent (token text, position) pairs among the massive tokens, indexed by them:
        "count" and "median_x_median" (their median norm over the median norm); empty when none."""
        rows = pd.DataFrame(self.rows(decode))
        if rows.empty:
            return pd.DataFrame(columns=["count", "median_x_median"])
        return (
            rows.groupby(["token", "pos"])
            .agg(count=("norm", "size"), median_x_median=("x_median", "median"))
            .sort_values("count", ascending=False)
            .head(n)
        )

    def top(self, decode: Callable[[int], str]) -> str:
        """The most common massive token and position, "'\\n' at position 1 (27 times)", or "none"."""
        which = self.most_common(decode)
        if which.empty:
            return "none"
        token, pos = which.index[0]
        return f"{token!r} at position {pos} ({int(which['count'].iloc[0])} times)"

    def summary(self) -> str:
        return (
            f"L{self.layer}: {self.count} of {self.n_tokens:,} tokens above {self.ratio:g}x the median norm "
            f"({self.median_norm:.1f}); they carry {self.variance_share:.1%} of the variance about the mean"
        )


def find_massive(
    store,
    layer: int,
    ratio: float = DEFAULT_RATIO,
    shards: Sequence[int] | None = None,
    exclude_tokens: Sequence[int] = (),
) -> MassiveTokens:
    """Massive tokens of `layer` over `shards` (default all), among tokens whose id is not in
    `exclude_tokens` (e.g. the BOS/separator, which SAEs never see anyway).

    One pass over the shards gathers every token's norm and the moments of the kept tokens; the
    threshold (ratio x the median norm over all tokens, as `massive_threshold`) comes after it."""
    if not ratio > 1:
        raise ValueError(f"massive-token ratio must be > 1 (a multiple of the median norm), got {ratio}")
    shards = list(range(store.n_shards)) if shards is None else [int(s) for s in shards]
    n = 0
    sum_x = np.zeros(store.d_model)
    sum_sq = 0.0
    norms, keeps, toks_all, seq_ids = [], [], [], []
    for s in shards:
        acts = np.asarray(store.shard_acts(s, layer), dtype=np.float32)
        toks = np.asarray(store.shard_tokens(s))
        keep = ~np.isin(toks, np.asarray(exclude_tokens, dtype=toks.dtype))
        x = acts[keep].astype(np.float64)
        n += len(x)
        sum_x += x.sum(0)
        sum_sq += float((x * x).sum())
        norms.append(np.linalg.norm(acts, axis=-1))
        keeps.append(keep)
        toks_all.append(toks)
        seq_ids.append(s * store.request.shard_seqs + np.arange(len(acts)))  # store-wide sequence ids
    if not norms:
        raise ValueError(f"no shards given for {store.path}; pick stored shards")
    norms_a, keep_a, toks_a = np.concatenate(norms), np.concatenate(keeps), np.concatenate(toks_all)
    threshold = float(ratio * np.median(norms_a))
    row, pos = np.nonzero((norms_a > threshold) & keep_a)
    seq = np.concatenate(seq_ids)[row]
    mu = sum_x / max(n, 1)
    total = sum_sq - n * float(mu @ mu)
    massive_ss = 0.0
    for sq, p in zip(seq, pos):
        x = store.acts_for(layer, [int(sq)])[0, p].astype(np.float64)
        massive_ss += float(((x - mu) ** 2).sum())
    return MassiveTokens(
        layer,
        ratio,
        threshold / ratio,
        threshold,
        n,
        seq.astype(int),
        pos.astype(int),
        toks_a[row, pos].astype(int),
        norms_a[row, pos].astype(np.float64),
        massive_ss / total if total > 0 else 0.0,
    )


# ---------------------------------------------------------------------------- the first-token outlier
def first_token_ratio(norms_T: np.ndarray) -> float:
    """Position 0's mean residual norm over the mean of the later positions' (norms_T: [T] mean ||x||
    per position, `store.position_norms`). ~1: no outlier; >> 1: the first token is an attention sink."""
    norms_T = np.asarray(norms_T, dtype=np.float64)
    return float(norms_T[0] / norms_T[1:].mean())


def late_token_ratio(norms_T: np.ndarray, n: int = 10) -> float:
    """Mean norm of the last n positions over that of positions 1..n (position 0, the sink, left out):
    whether the norm grows or shrinks along the sequence."""
    norms_T = np.asarray(norms_T, dtype=np.float64)
    if len(norms_T) < n + 1:
        raise ValueError(f"need more than n={n} positions, got {len(norms_T)}; pick a smaller n")
    return float(norms_T[-n:].mean() / norms_T[1 : n + 1].mean())


def position_norm_summary(norms: Mapping[int, np.ndarray], big: float = 2.0, n: int = 10) -> str:
    """Two lines read off {layer: [T] mean norm per position}: where position 0 stands out most (and
    the layers where it is over `big` x the rest), and `late_token_ratio` per layer."""
    ratios = {layer: first_token_ratio(v) for layer, v in norms.items()}
    top, first = max(ratios, key=ratios.get), min(norms)
    over = [layer for layer, r in ratios.items() if r > big]
    late = ", ".join(f"L{layer} {late_token_ratio(v, n):.2f}" for layer, v in norms.items())
    return (
        f"Position 0's residual norm is {ratios[top]:.1f}x the mean of later positions at layer {top} "
        f"(and > {big:g}x at layers {over}); at layer {first} it is {ratios[first]:.2f}x.\n"
        f"Norm of the last {n} positions over positions 1-{n}, per layer: {late}"
    )
