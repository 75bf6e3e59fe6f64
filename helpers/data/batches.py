"""Shuffled training batches from an activation store: `BatchStream` (what ActivationStore.batches returns).

What: rows of one layer ([B, d]) or of several layers side by side ([B, L*d], a crosscoder's input),
shuffled through a mixing buffer of a few shards, with positions, token ids and massive-norm tokens
left out, cycling over epochs until the trainer stops it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class ShardSource(Protocol):
    """What a BatchStream reads from its store (helpers.data.store.ActivationStore is one): described
    here, so that store.py imports this module and not the other way round."""

    path: Path
    d_model: int
    seq_len: int
    n_shards: int

    def shard_acts(self, shard: int, layer: int) -> np.ndarray: ...

    def shard_tokens(self, shard: int) -> np.ndarray: ...


@dataclass
class BatchStream:
    """Shuffled [B, d] float32 batches from one layer of a store (or several side by side); iterate it.

    Shuffling mixes `buffer_shards` shards at a time (a mixing buffer, as in SAELens), so memory
    stays ~buffer_shards shards. `current_source` names the shards behind the last batch, for
    error messages. `epochs=None` cycles forever (a trainer stops by its token budget)."""

    store: ShardSource
    layer: int | tuple[int, ...]  # a tuple: those layers side by side in every row (a crosscoder's input)
    batch_size: int = 4096
    shuffle: bool = True
    seed: int = 0
    exclude_positions: Sequence[int] = ()
    epochs: int | None = 1
    buffer_shards: int = 4
    device: str = "cpu"
    shards: Sequence[int] | None = None  # which shards to read (default all), e.g. a train split
    exclude_tokens: Sequence[int] = ()  # token ids to drop wherever they occur (e.g. BOS/EOT)
    max_norm: float | tuple[float, ...] | None = None  # drop tokens whose residual norm exceeds it
    # (helpers.data.massive); with several layers, one cut per layer
    cache_bytes: int = 2 << 30
    """Where the chosen shards' rows fit in this many bytes (in the store's dtype), each shard's kept
    rows stay in memory after its first read, and later epochs skip the read, the masks and the norms
    (~4 ms of a 2048-row batch on 2 Zen 3 cores); 0 reads every epoch afresh."""
    current_source: str = field(default="", init=False)
    _cache: dict[int, np.ndarray] | None = field(default=None, init=False, repr=False)

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers side by side in each row ([B, len(layers) * d]: a crosscoder's input)."""
        return (self.layer,) if isinstance(self.layer, int) else tuple(self.layer)

    @property
    def width(self) -> int:
        return len(self.layers) * self.store.d_model

    def _kept_rows(self, shard: int, keep: np.ndarray) -> np.ndarray:
        """[n_kept, len(layers) * d] of one shard in the store's dtype (float16 as stored: the cast to
        float32 happens per batch, on 1/30 of the rows at a time): kept positions, minus excluded
        token ids and tokens above max_norm (per layer; a token above the cut at any layer is left
        out). Norms are computed in float32."""
        acts = [self.store.shard_acts(shard, layer) for layer in self.layers]
        mask = np.zeros(acts[0].shape[:2], dtype=bool)
        mask[:, keep] = True
        if len(self.exclude_tokens):
            mask &= ~np.isin(self.store.shard_tokens(shard), np.asarray(self.exclude_tokens))
        rows = [np.ascontiguousarray(a[mask]) for a in acts]
        if self.max_norm is not None:
            cuts = np.broadcast_to(np.asarray(self.max_norm, dtype=np.float64), (len(rows),))
            ok = torch.ones(len(rows[0]), dtype=torch.bool)
            for r, cut in zip(rows, cuts):
                ok &= torch.linalg.vector_norm(torch.from_numpy(r), dim=1, dtype=torch.float32) <= float(cut)
            rows = [r[ok.numpy()] for r in rows]
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=1)

    def _rows(self, shard: int, keep: np.ndarray) -> np.ndarray:
        """`_kept_rows`, from the cache where this stream has read the shard before."""
        if self._cache is not None and shard in self._cache:
            return self._cache[shard]
        rows = self._kept_rows(shard, keep)
        if self._cache is not None:
            self._cache[shard] = rows
        return rows

    def _fits_cache(self, chosen: np.ndarray) -> bool:
        """Whether the chosen shards' rows, at most (shard 0's size) each, fit in cache_bytes."""
        one = self.store.shard_acts(int(chosen[0]), self.layers[0])
        return len(chosen) * len(self.layers) * one.nbytes <= self.cache_bytes

    def __iter__(self) -> Iterator[torch.Tensor]:
        store, T = self.store, self.store.seq_len
        keep = np.setdiff1d(np.arange(T), np.asarray(self.exclude_positions, dtype=int))
        chosen = np.arange(store.n_shards) if self.shards is None else np.asarray(self.shards)
        if self._cache is None and self.epochs != 1 and self.cache_bytes > 0 and self._fits_cache(chosen):
            self._cache = {}
        epoch = 0
        leftover = None
        while self.epochs is None or epoch < self.epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(chosen) if self.shuffle else chosen
            for g in range(0, len(order), self.buffer_shards):
                group = order[g : g + self.buffer_shards]
                parts = ([] if leftover is None else [leftover]) + [self._rows(int(s), keep) for s in group]
                pool = np.concatenate(parts)
                # shuffled by an index: each batch gathers its rows (and casts them) once, instead of
                # permuting the whole pool first
                idx = rng.permutation(len(pool)) if self.shuffle else np.arange(len(pool))
                n_full = len(pool) // self.batch_size * self.batch_size
                self.current_source = (
                    f"{store.path} layer {'+'.join(map(str, self.layers))} "
                    f"shards {sorted(int(s) for s in group)} (epoch {epoch})"
                )
                for i in range(0, n_full, self.batch_size):
                    yield self._batch(pool, idx[i : i + self.batch_size])
                leftover = pool[idx[n_full:]]
            epoch += 1
        if leftover is not None and len(leftover):
            yield self._batch(leftover, np.arange(len(leftover)))

    def _batch(self, pool: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """float32 [len(rows), width] on `device`: the rows gathered from the pool, then cast."""
        return torch.from_numpy(pool[rows]).to(self.device, torch.float32)
