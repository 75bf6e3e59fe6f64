"""Top-activating contexts per SAE latent, by one streaming pass over the activation store.

`TopActivationTracker` keeps, per latent, the N largest POSITIVE activations seen so far with their
(sequence id, position): memory O(d_sae * N), never [tokens, latents] for the whole data. Each chunk
is reduced to its positive entries, pruned below each latent's running N-th value (and, for dense
codes, below the chunk's own N-th value from `torch.topk`; ties kept), merged with the running
buffer, and the merged candidates are ranked by one vectorised lexicographic sort.
The order is total, so the result does not depend on chunking:
    value descending, then sequence id ascending, then position ascending (earlier token wins ties).
Ties are common in practice: position 0 (the BOS-like sink) gives identical codes in every sequence.

The tracker also counts firings (density = fire_counts / n_tokens) and, optionally, a histogram of
nonzero activations per latent on caller-given bin edges, all in the same pass.

For display, `window_activations` re-encodes only the context windows of the top activations from
stored residual activations through a caller's `encode_fn(acts [m, d]) -> codes [m, d_sae]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from helpers.checks import InputError, as_tensor

DENSE_PRUNE_FACTOR = 8  # above 8 * d_sae * N positive entries per chunk, prune with a dense topk first


def _int_tensor(x, name: str) -> torch.Tensor:
    """x as int64, refusing floats (a float id or index would be truncated to another one)."""
    t = as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(
            f"{name} has dtype {t.dtype}; pass integer ids or indices "
            f"(e.g. the store's tokens or TopActivations.seq_ids), not floats"
        )
    return t.to(torch.int64)


@dataclass
class TopActivations:
    """Top-N positive activations per latent; rows sorted by the total order described above.

    values     # [d_sae, N] float32, nan where the latent fired fewer than N times
    seq_ids    # [d_sae, N] int64, -1 where empty
    positions  # [d_sae, N] int64, -1 where empty
    fire_counts  # [d_sae] int64, number of positive activations seen
    n_tokens   # tokens seen
    hist_counts  # [d_sae, n_bins] int64 or None; hist_edges [n_bins + 1] or None
    """

    values: torch.Tensor
    seq_ids: torch.Tensor
    positions: torch.Tensor
    fire_counts: torch.Tensor
    n_tokens: int
    hist_counts: torch.Tensor | None = None
    hist_edges: torch.Tensor | None = None

    @property
    def density(self) -> torch.Tensor:  # [d_sae] float
        """Fraction of tokens on which each latent is positive: fire_counts / n_tokens."""
        return self.fire_counts.double() / max(self.n_tokens, 1)

    def n_valid(self) -> torch.Tensor:  # [d_sae]
        return (self.seq_ids >= 0).sum(1)

    def latent(self, f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values [k], seq_ids [k], positions [k]) of latent f, empty slots dropped."""
        if not 0 <= f < self.values.shape[0]:
            raise ValueError(f"latent {f} out of range [0, {self.values.shape[0]})")
        keep = self.seq_ids[f] >= 0
        return self.values[f][keep], self.seq_ids[f][keep], self.positions[f][keep]


def _rank_candidates(latent, value, seq, pos, d_sae: int, n_top: int):
    """Keep the first n_top candidates per latent under (value desc, seq asc, pos asc).

    Inputs are flat [m] tensors (values > 0); returns dense [d_sae, n_top] (values, seq_ids, positions).
    Two stable argsorts = one lexicographic sort: by token (seq, pos), then by the packed key
    latent * 2^31 + (2^31 - 1 - float32 bits of value) (positive floats order like their bits).
    """
    values = torch.full((d_sae, n_top), float("nan"))
    seq_ids = torch.full((d_sae, n_top), -1, dtype=torch.int64)
    positions = torch.full((d_sae, n_top), -1, dtype=torch.int64)
    if latent.numel() == 0:
        return values, seq_ids, positions
    order = torch.argsort(seq * (int(pos.max()) + 1) + pos, stable=True)
    bits = value.float().contiguous().view(torch.int32).to(torch.int64)
    key = latent * (1 << 31) + ((1 << 31) - 1 - bits)
    order = order[torch.argsort(key[order], stable=True)]
    latent, value, seq, pos = latent[order], value[order], seq[order], pos[order]
    counts = torch.bincount(latent, minlength=d_sae)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(latent.numel()) - starts[latent]
    keep = rank < n_top
    li, ri = latent[keep], rank[keep]
    values[li, ri] = value[keep]
    seq_ids[li, ri] = seq[keep]
    positions[li, ri] = pos[keep]
    return values, seq_ids, positions


@dataclass
class TopActivationTracker:
    """Streaming top-N per latent. Feed chunks with `update`, read `result()`.

    Chunk forms accepted by `update`:
      codes [n_seq, T, d_sae]                      seq ids = running offset + row, positions = column
      codes [n_seq, T, d_sae], seq_ids [n_seq]     explicit sequence ids
      codes [n, d_sae], seq_ids [n], positions [n] flattened tokens
    """

    d_sae: int
    n_top: int = 20
    hist_edges: torch.Tensor | None = None  # [n_bins + 1]; values outside are clipped to end bins
    _values: torch.Tensor = field(init=False, repr=False)
    _seq: torch.Tensor = field(init=False, repr=False)
    _pos: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.d_sae < 1 or self.n_top < 1:
            raise ValueError(f"need d_sae >= 1 and n_top >= 1, got {self.d_sae}, {self.n_top}")
        self._values, self._seq, self._pos = _rank_candidates(
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
            self.d_sae,
            self.n_top,
        )
        self.fire_counts = torch.zeros(self.d_sae, dtype=torch.int64)
        self.n_tokens = 0
        self._next_seq = 0
        self.hist_counts = None
        if self.hist_edges is not None:
            self.hist_edges = as_tensor(self.hist_edges, torch.float32)
            self.hist_counts = torch.zeros(self.d_sae, len(self.hist_edges) - 1, dtype=torch.int64)

    def _flatten(self, codes, seq_ids, positions):
        codes = as_tensor(codes).float()
        if codes.shape[-1] != self.d_sae:
            raise ValueError(f"codes last dim {codes.shape[-1]} != d_sae {self.d_sae}; pass SAE codes")
        if codes.ndim == 3:
            if positions is not None:
                raise ValueError("3-D codes take positions from their columns; drop the positions argument")
            n_seq, t_len = codes.shape[:2]
            if seq_ids is None:
                seq_ids = torch.arange(self._next_seq, self._next_seq + n_seq)
            seq_ids = as_tensor(seq_ids, torch.int64).reshape(n_seq)
            self._next_seq = max(self._next_seq, int(seq_ids.max()) + 1) if n_seq else self._next_seq
            seq = seq_ids[:, None].expand(n_seq, t_len).reshape(-1)
            pos = torch.arange(t_len).expand(n_seq, t_len).reshape(-1)
            return codes.reshape(-1, self.d_sae), seq, pos
        if codes.ndim == 2:
            if seq_ids is None or positions is None:
                raise ValueError("flattened codes [n, d_sae] need seq_ids [n] and positions [n]")
            seq = as_tensor(seq_ids, torch.int64).reshape(-1)
            pos = as_tensor(positions, torch.int64).reshape(-1)
            if len(seq) != len(codes) or len(pos) != len(codes):
                raise ValueError(f"seq_ids/positions length {len(seq)}/{len(pos)} != codes rows {len(codes)}")
            return codes, seq, pos
        raise ValueError(f"codes must be [n_seq, T, d_sae] or [n, d_sae], got shape {tuple(codes.shape)}")

    def update(self, codes, seq_ids=None, positions=None) -> None:
        flat, seq, pos = self._flatten(codes, seq_ids, positions)
        n = flat.shape[0]
        if n == 0:
            return
        self.n_tokens += n
        tok, lat = (flat > 0).nonzero(as_tuple=True)  # the one dense pass; SAE codes are sparse
        val = flat[tok, lat]
        self.fire_counts += torch.bincount(lat, minlength=self.d_sae)
        if self.hist_counts is not None:
            nb = self.hist_counts.shape[1]
            b = (torch.bucketize(val, self.hist_edges, right=True) - 1).clamp(0, nb - 1)
            self.hist_counts += torch.bincount(lat * nb + b, minlength=self.d_sae * nb).view(self.d_sae, nb)
        # prune before ranking: an entry below its latent's current N-th value cannot enter (ties kept)
        thr = torch.nan_to_num(self._values[:, -1], nan=-float("inf"))  # [d_sae]
        if (
            val.numel() > DENSE_PRUNE_FACTOR * self.d_sae * self.n_top
        ):  # dense-ish codes: chunk's N-th value too
            thr = torch.maximum(thr, torch.topk(flat, min(self.n_top, n), dim=0).values[-1])
        keep = val >= thr[lat]
        tok, lat, val = tok[keep], lat[keep], val[keep]
        b_lat, b_rank = (self._seq >= 0).nonzero(as_tuple=True)
        self._values, self._seq, self._pos = _rank_candidates(
            torch.cat([b_lat, lat]),
            torch.cat([self._values[b_lat, b_rank], val]),
            torch.cat([self._seq[b_lat, b_rank], seq[tok]]),
            torch.cat([self._pos[b_lat, b_rank], pos[tok]]),
            self.d_sae,
            self.n_top,
        )

    def result(self) -> TopActivations:
        return TopActivations(
            self._values.clone(),
            self._seq.clone(),
            self._pos.clone(),
            self.fire_counts.clone(),
            self.n_tokens,
            None if self.hist_counts is None else self.hist_counts.clone(),
            None if self.hist_edges is None else self.hist_edges.clone(),
        )


def top_activations(chunks: Iterable, d_sae: int, n_top: int = 20, hist_edges=None) -> TopActivations:
    """Run a tracker over `chunks`: each a codes tensor or a tuple of `update` arguments."""
    tracker = TopActivationTracker(d_sae, n_top, hist_edges)
    for chunk in chunks:
        if isinstance(chunk, (tuple, list)):
            tracker.update(*chunk)
        else:
            tracker.update(chunk)
    return tracker.result()


# ---------------------------------------------------------------- context windows
def _sequences_of(source, seq_ids: torch.Tensor):
    """source[seq_ids] for an array/tensor/memmap [n_seq, T, ...] or a callable(seq_ids) -> rows."""
    if callable(source):
        return as_tensor(source(seq_ids))
    if isinstance(source, torch.Tensor):
        return source[seq_ids]
    return torch.as_tensor(np.asarray(source[seq_ids.numpy()]))


@dataclass
class Windows:
    """Token windows around (seq_id, position) pairs; column `center` is the anchor token.

    tokens     # [m, W] int64, -1 outside the sequence
    positions  # [m, W] int64, column j is position - before + j (-1 outside the sequence)
    valid      # [m, W] bool
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    seq_ids: torch.Tensor  # [m]
    center: int


def context_windows(tokens, seq_ids, positions, before: int = 10, after: int = 4) -> Windows:
    """Gather windows [position - before, position + after] for m anchors at once.

    `tokens` is [n_seq, T] (array/tensor/memmap) or a callable seq_ids [u] -> tokens [u, T].
    """
    seq_ids = _int_tensor(seq_ids, "seq_ids").reshape(-1)
    positions = _int_tensor(positions, "positions").reshape(-1)
    if len(seq_ids) != len(positions):
        raise ValueError(f"seq_ids ({len(seq_ids)}) and positions ({len(positions)}) must pair up")
    if before < 0 or after < 0:
        raise ValueError(f"before/after must be >= 0, got {before}/{after}")
    uniq, inv = torch.unique(seq_ids, return_inverse=True)
    rows = _int_tensor(_sequences_of(tokens, uniq), "tokens")  # [u, T]
    t_len = rows.shape[1]
    if len(positions) and (positions.min() < 0 or positions.max() >= t_len):
        raise ValueError(f"positions must lie in [0, {t_len}); got {positions.min()}..{positions.max()}")
    cols = positions[:, None] + torch.arange(-before, after + 1)[None, :]  # [m, W]
    valid = (cols >= 0) & (cols < t_len)
    toks = rows[inv[:, None], cols.clamp(0, t_len - 1)]
    return Windows(toks.masked_fill(~valid, -1), cols.masked_fill(~valid, -1), valid, seq_ids, before)


def window_activations(
    acts,  # [n_seq, T, d] array/tensor/memmap, or callable seq_ids [u] -> [u, T, d]
    windows: Windows,
    latents,  # [m] int (or one int for all windows)
    encode_fn: Callable,  # acts [k, d] -> codes [k, d_sae]
    batch_size: int = 4096,
) -> torch.Tensor:  # [m, W] float32, nan outside the sequence
    """Per-token activation of each window's latent, re-encoding only the windows' tokens."""
    m, width = windows.tokens.shape
    latents = as_tensor(latents, torch.int64).reshape(-1)
    if latents.numel() == 1:
        latents = latents.expand(m)
    if len(latents) != m:
        raise ValueError(
            f"latents has {len(latents)} entries for {m} windows; pass one per window or one int"
        )
    out = torch.full((m, width), float("nan"))
    if m == 0:
        return out
    uniq, inv = torch.unique(windows.seq_ids, return_inverse=True)
    rows = _sequences_of(acts, uniq).float()  # [u, T, d]
    wi, wj = windows.valid.nonzero(as_tuple=True)
    x = rows[inv[wi], windows.positions[wi, wj]]  # [k, d]
    lat = latents[wi]
    vals = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            codes = as_tensor(encode_fn(x[s : s + batch_size])).float()
            vals.append(codes[torch.arange(codes.shape[0]), lat[s : s + batch_size]])
    out[wi, wj] = torch.cat(vals)
    return out


@dataclass
class Context:
    """One top-activating context of a latent, ready for display.

    tokens  # [w] int64 token ids (window clipped to the sequence)
    acts    # [w] float32 this latent's activation on each token
    target  # index into tokens of the anchor (top-activating) token
    """

    seq_id: int
    position: int
    value: float
    tokens: np.ndarray
    acts: np.ndarray
    target: int


def top_contexts(
    top: TopActivations,
    latent: int,
    tokens,
    acts,
    encode_fn: Callable,
    n: int | None = None,
    before: int = 10,
    after: int = 4,
    check_tol: float | None = 1e-3,
) -> list[Context]:
    """The latent's top-n contexts with per-token activations recomputed by `encode_fn`.

    With `check_tol`, raise if the recomputed anchor activation differs from the tracked value by
    more than check_tol * max(1, |value|) (catches an encode_fn that differs from the tracking pass,
    e.g. a missing input normalisation or a shifted store).
    """
    values, seq, pos = top.latent(latent)
    if n is not None:
        values, seq, pos = values[:n], seq[:n], pos[:n]
    win = context_windows(tokens, seq, pos, before, after)
    wacts = window_activations(acts, win, latent, encode_fn)
    if check_tol is not None and len(values):
        err = (wacts[:, win.center] - values).abs() / values.abs().clamp(min=1.0)
        if float(err.max()) > check_tol:
            raise ValueError(
                f"recomputed activation differs from the tracked one by {float(err.max()):.3g}; "
                "encode_fn or the activation source does not match the tracking pass"
            )
    out = []
    for i in range(len(values)):  # packaging only: n is ~20
        keep = win.valid[i]
        target = int(win.center - (~keep[: win.center]).sum())
        out.append(
            Context(
                int(seq[i]),
                int(pos[i]),
                float(values[i]),
                win.tokens[i][keep].numpy(),
                wacts[i][keep].numpy(),
                target,
            )
        )
    return out


@torch.no_grad()
def encoded_chunks(sequences, encode_fn, chunk_seqs: int = 8):
    """Yield codes [n, T, d_sae] for `sequences` = iterable of (tokens, acts [n, T, d]) chunks
    (e.g. `store.sequences(layer)`), encoding `chunk_seqs` sequences at a time."""
    for _, acts in sequences:
        for i in range(0, len(acts), chunk_seqs):
            yield encode_fn(acts[i : i + chunk_seqs])
