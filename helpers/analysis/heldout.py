"""One held-out view per store and layer: the tokens every held-out number of the lab is measured on.

The lab's one token policy, applied once here (`HeldOut(store, layer)`):
- shards: the store's held-out split, `store.split(N_EVAL_SHARDS)` (the last shard; every SAE trains on
  the others);
- positions: `experiments.EXCLUDE_POSITIONS` (position 0, the BOS / attention sink) are left out;
- tokens: `experiments.excluded_tokens(store)` (the BOS / separator id, wherever it occurs) are left out;
- massive tokens: a token whose residual norm exceeds `massive_ratio` x the layer's median token norm over
  the whole store (`helpers.data.massive.massive_threshold`, the cut SAEs train without) is left out;
  with several layers (a crosscoder's input) there is one cut per layer and a token above any is left out.
The rows come from `store.token_rows` (one implementation of those exclusions, shared with training).

The view holds the kept rows once (x [N, d], token ids, store-wide sequence ids and positions) and
encodes each SAE once: its codes are cached per SAE object, kept sparse (row, latent, value of every
nonzero entry: a TopK SAE has k per row). Every per-latent number derives from that cache, so a
latent has ONE density, ONE typical activation, ONE proxy score and ONE set of top contexts whichever
notebook asks (05's feature pages and 06's picked features read the same numbers):
    density      fraction of the kept rows where the latent is > 0
    typical      its mean nonzero value there (`interventions.mean_nonzero`): the unit of steering alpha
    proxy        `baselines.token_concentration` of its top-20 rows (share of one token)
    top contexts `contexts.TopActivations` over the kept rows, with store-wide (sequence, position)
    picks        `interventions.pick_features` / `pick_context_features` on those numbers
Codes are cached by object identity: do not change an SAE's weights after encoding it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from helpers.analysis.baselines import Concentration, token_concentration
from helpers.analysis.contexts import TopActivations, TopActivationTracker
from helpers.analysis.crosscoders import top_examples
from helpers.analysis.evaluate import sae_stats
from helpers.analysis.interventions import mean_nonzero, pick_context_features, pick_features
from helpers.analysis.similarity import topk_cosine
from helpers.data.massive import DEFAULT_RATIO, massive_threshold, token_norms
from helpers.training.experiments import EXCLUDE_POSITIONS, excluded_tokens

N_EVAL_SHARDS = 1  # the last shard of every store is held out (store.split)
ROWS = 4096  # rows per encode batch and per dense block of rows
LATENTS = 256  # latents per dense block of columns (per-latent statistics on [N, LATENTS] blocks)


@dataclass(frozen=True)
class SparseCodes:
    """An SAE's codes on the N held-out rows, kept as their nonzero entries (sorted by row)."""

    rows: torch.Tensor  # [nnz] int64, ascending
    cols: torch.Tensor  # [nnz] int64 latent ids
    vals: torch.Tensor  # [nnz] float32
    n_rows: int
    d_sae: int

    def columns(self, latents) -> torch.Tensor:
        """Dense [N, len(latents)] float32 values of the given latents (zeros included)."""
        latents = torch.as_tensor(np.asarray(latents), dtype=torch.int64).reshape(-1)
        uniq, inv = torch.unique(latents, return_inverse=True)
        where = torch.full((self.d_sae,), -1, dtype=torch.int64)
        where[uniq] = torch.arange(len(uniq))
        sel = where[self.cols] >= 0
        out = torch.zeros(self.n_rows, len(uniq))
        out[self.rows[sel], where[self.cols[sel]]] = self.vals[sel]
        return out[:, inv]

    def row_block(self, start: int, stop: int) -> torch.Tensor:
        """Dense [stop - start, d_sae] codes of rows start..stop-1."""
        lo, hi = (int(torch.searchsorted(self.rows, v)) for v in (start, stop))
        out = torch.zeros(stop - start, self.d_sae)
        out[self.rows[lo:hi] - start, self.cols[lo:hi]] = self.vals[lo:hi]
        return out

    def dense(self) -> torch.Tensor:
        """All codes, dense [N, d_sae] float32 (N x d_sae x 4 bytes: prefer the methods above)."""
        return self.row_block(0, self.n_rows)

    def fire_counts(self) -> torch.Tensor:
        """[d_sae] int64: rows where each latent is > 0."""
        return torch.bincount(self.cols[self.vals > 0], minlength=self.d_sae)


@dataclass
class LatentStats:
    """Every latent's held-out numbers (one SAE on one HeldOut view)."""

    density: np.ndarray  # [d_sae] fraction of held-out rows where it is > 0
    typical: np.ndarray  # [d_sae] mean nonzero value (NaN: never fired)
    share: np.ndarray  # [d_sae] proxy: share of its top-n_top rows that are one token (NaN: unscored)
    top_token: np.ndarray  # [d_sae] that token id (-1: unscored)
    n_tokens: int


@dataclass
class Picked:
    """The features the stated rules pick on a HeldOut view (never picked by hand)."""

    token: list[int]  # rule 1, `interventions.pick_features`: seed-stable single-token features
    context: list[int]  # rule 2, `interventions.pick_context_features`, without rule 1's picks
    twin_cos: np.ndarray  # [d_sae] each latent's best decoder cosine in the seed twin

    @property
    def all(self) -> list[int]:
        return self.token + self.context


class HeldOut:
    """The held-out rows of `store` at `layer` (an int, or a tuple of layers side by side for a crosscoder)
    under the lab's one token policy (module docstring). `massive_ratio=None` keeps the massive tokens:
    only to show what the cut changes (e.g. FVU with them), never for a per-latent number."""

    def __init__(self, store, layer: int | Sequence[int], massive_ratio: float | None = DEFAULT_RATIO):
        self.store = store
        self.layer = layer if isinstance(layer, int) else tuple(int(v) for v in layer)
        self.layers = (layer,) if isinstance(layer, int) else self.layer
        self.shards = tuple(store.split(N_EVAL_SHARDS)[1])
        self.exclude_positions = tuple(EXCLUDE_POSITIONS)
        self.exclude_tokens = tuple(excluded_tokens(store))
        self.massive_ratio = massive_ratio
        cuts = (
            None
            if massive_ratio is None
            else [massive_threshold(store, v, massive_ratio) for v in self.layers]
        )
        self.max_norm = None if cuts is None else cuts[0] if isinstance(layer, int) else tuple(cuts)
        x, ids, seq, pos = store.token_rows(
            self.layer,
            self.shards,
            self.exclude_positions,
            self.exclude_tokens,
            self.max_norm,
            positions=True,
        )
        self.x: torch.Tensor = x  # [N, d] (or [N, n_layers * d]) float32
        self.token_ids: torch.Tensor = ids  # [N] int64
        self.seq_ids: np.ndarray = seq.astype(np.int64)  # [N] store-wide sequence ids
        self.positions: np.ndarray = pos.astype(np.int64)  # [N]
        first, last = (
            store.request.shard_rows(self.shards[0])[0],
            store.request.shard_rows(self.shards[-1])[1],
        )
        self.sequence_ids = np.arange(first, last)  # the held-out sequences (contiguous: the last shards)
        self.n_massive = self._count_massive(cuts)
        self._codes: dict[int, tuple[object, SparseCodes]] = {}
        self._derived: dict[tuple, object] = {}
        self._store_tokens = None

    def _count_massive(self, cuts) -> int:
        if cuts is None:
            return 0
        toks = self.sequence_tokens
        kept = ~np.isin(toks, np.asarray(self.exclude_tokens, dtype=toks.dtype))
        kept[:, list(self.exclude_positions)] = False
        above = np.zeros(toks.shape, dtype=bool)
        for v, cut in zip(self.layers, cuts):
            above |= token_norms(self.store, v, self.shards) > cut
        return int((above & kept).sum())

    # --- facts ---
    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def sequence_tokens(self) -> np.ndarray:
        """[n_held_seq, T] int64 token ids of the held-out sequences, every position (for model text)."""
        return np.concatenate([self.store.shard_tokens(s) for s in self.shards]).astype(np.int64)

    def describe(self) -> str:
        """The policy in one line, with the counts it gave."""
        cut = (
            "massive tokens kept"
            if self.massive_ratio is None
            else f"{self.n_massive} massive tokens (norm > {self.massive_ratio:g}x the median) left out"
        )
        return (
            f"held-out shard(s) {list(self.shards)} of {self.store.request.corpus}, layer(s) "
            f"{list(self.layers)}: {self.n_tokens:,} tokens (positions {list(self.exclude_positions)}, "
            f"token ids {list(self.exclude_tokens)} and {cut})"
        )

    def __repr__(self) -> str:
        return f"HeldOut({self.describe()})"

    # --- codes, encoded once per SAE ---
    @torch.no_grad()
    def codes(self, sae) -> SparseCodes:
        """`sae.encode` of every held-out row, computed on the first call for this SAE object and cached."""
        hit = self._codes.get(id(sae))
        if hit is not None:
            return hit[1]
        rows, cols, vals = [], [], []
        d_sae = None
        for start in range(0, self.n_tokens, ROWS):
            c = sae.encode(self.x[start : start + ROWS]).float()
            d_sae = c.shape[1]
            r, k = c.nonzero(as_tuple=True)
            rows.append(r + start)
            cols.append(k)
            vals.append(c[r, k])
        if d_sae is None:
            raise ValueError(f"no held-out tokens left in {self.describe()}; collect more tokens")
        out = SparseCodes(torch.cat(rows), torch.cat(cols), torch.cat(vals), self.n_tokens, d_sae)
        self._codes[id(sae)] = (sae, out)  # the reference keeps id(sae) from being reused
        return out

    def values(self, sae, latents) -> torch.Tensor:
        """[N, len(latents)] the latents' values at every held-out row, zeros included (e.g. the pool
        of mean / resample ablation)."""
        return self.codes(sae).columns(latents)

    def grid(self, sae, latents) -> np.ndarray:
        """[n_held_seq, T, len(latents)] the latents' values laid out on the held-out sequences
        (`sequence_tokens`), 0 at the tokens the policy leaves out."""
        return self.layout(self.values(sae, latents))

    def layout(self, values_NL) -> np.ndarray:
        """[n_held_seq, T, L] per-row values [N, L] (e.g. a baseline direction's codes of `x`) laid out on
        the held-out sequences, 0 at the tokens the policy leaves out."""
        v = np.asarray(values_NL, dtype=np.float32)
        if v.ndim != 2 or len(v) != self.n_tokens:
            raise ValueError(
                f"values have shape {v.shape}; pass one row per held-out token ({self.n_tokens})"
            )
        out = np.zeros((len(self.sequence_ids), self.store.seq_len, v.shape[1]), dtype=np.float32)
        out[self.seq_ids - self.sequence_ids[0], self.positions] = v
        return out

    def _cached(self, sae, name: str, make):
        key = (id(sae), name)
        if key not in self._derived:
            self.codes(sae)  # holds the reference that keeps id(sae) unique
            self._derived[key] = make()
        return self._derived[key]

    def _by_latent_block(self, sae, fn) -> list:
        c = self.codes(sae)
        return [fn(c.columns(range(b, min(b + LATENTS, c.d_sae)))) for b in range(0, c.d_sae, LATENTS)]

    # --- per-latent numbers ---
    def density(self, sae) -> np.ndarray:
        """[d_sae] fraction of held-out rows where each latent is > 0 (fire count / N, float64)."""
        return self._cached(
            sae, "density", lambda: self.codes(sae).fire_counts().double().numpy() / self.n_tokens
        )

    def typical(self, sae) -> np.ndarray:
        """[d_sae] each latent's typical activation: its mean nonzero value on the held-out rows (NaN
        where it never fired), `interventions.mean_nonzero`."""
        return self._cached(sae, "typical", lambda: np.concatenate(self._by_latent_block(sae, mean_nonzero)))

    def concentration(self, sae, n_top: int = 20) -> Concentration:
        """The single-token proxy (`baselines.token_concentration`) of every latent on the held-out rows."""

        def make():
            parts = self._by_latent_block(sae, lambda c: token_concentration(c, self.token_ids, n_top))
            return Concentration(
                *(np.concatenate([getattr(p, f) for p in parts]) for f in ("share", "top_token", "scored"))
            )

        return self._cached(sae, f"concentration/{n_top}", make)

    def stats(self, sae, n_top: int = 20) -> LatentStats:
        """Density, typical activation and proxy of every latent, from the one cached encoding."""
        share, top_token = self.concentration(sae, n_top).per_direction()
        return LatentStats(self.density(sae), self.typical(sae), share, top_token, self.n_tokens)

    def top_activations(self, sae, n_top: int = 20, hist_edges=None) -> TopActivations:
        """Each latent's top-n_top held-out rows (`contexts.TopActivations`, store-wide sequence ids and
        positions: show them with `contexts.top_contexts` / `CardSource` on `store.tokens()`)."""

        def make():
            c = self.codes(sae)
            tracker = TopActivationTracker(c.d_sae, n_top, hist_edges)
            for s in range(0, self.n_tokens, ROWS):
                e = min(s + ROWS, self.n_tokens)
                tracker.update(c.row_block(s, e), self.seq_ids[s:e], self.positions[s:e])
            return tracker.result()

        edges = None if hist_edges is None else tuple(np.asarray(hist_edges, dtype=np.float64).tolist())
        return self._cached(sae, f"top/{n_top}/{edges}", make)

    def examples(self, sae, latent: int, decode, n: int = 3, before: int = 8) -> list[str]:
        """`crosscoders.top_examples` of one latent on the held-out rows: its n top tokens in context."""
        if self._store_tokens is None:
            self._store_tokens = self.store.tokens()
        vals = self.values(sae, [latent])
        return top_examples(vals, 0, self.seq_ids, self.positions, self._store_tokens, decode, n, before)

    def pick(self, sae, twin, n_token: int = 4, n_context: int = 2, n_top: int = 20, **rule) -> Picked:
        """The stated rules on this view: rule 1 (`interventions.pick_features`, n_token single-token
        features) and rule 2 (`interventions.pick_context_features`, up to n_context features whose top
        tokens spread, rule 1's picks left out); stability = best decoder cosine in the seed `twin`.
        `rule`: the rules' shared keywords (density_range, min_twin_cos)."""
        s = self.stats(sae, n_top)
        twin_cos = topk_cosine(twin.W_dec.detach(), sae.W_dec.detach(), 1)[0][:, 0].numpy()
        token = pick_features(s.share, s.density, twin_cos, n=n_token, **rule)
        context = pick_context_features(s.share, s.density, twin_cos, n=n_context, **rule)
        return Picked(token, [f for f in context if f not in token], twin_cos)

    def reconstruction(self, sae, batch_size: int = ROWS) -> dict[str, float]:
        """`evaluate.sae_stats` (FVU, L0, median relative error, ...) of `sae` on the held-out rows."""
        return sae_stats(sae, torch.split(self.x, batch_size))
