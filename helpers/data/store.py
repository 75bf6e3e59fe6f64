"""A sharded on-disk activation store: write atomically, resume after a kill, stream batches.

Layout of one store directory:
    manifest.json               request, model facts, package versions, completed shards
    tokens_00000.npy            [n_seq, T] int32 token ids of shard 0 (position = column)
    acts_L12_00000.npy          [n_seq, T, d] activations of layer 12 for shard 0
A store holds one hook kind (request.hook, SAELens-named: resid_pre, what notebook 01 collects, or
attn_out / mlp_out / mlp.hook_post, notebook 09) at each of its layers; d_model is that hook's width.
Each shard file is written to `*.tmp` and renamed into place; a shard counts only once the
manifest (itself replaced atomically) lists it with its byte sizes and sha256. A run killed at any
point resumes from the last listed shard and ends with byte-identical files.

Each shard file's sha256 is checked on its first read in a process (helpers.data.shard_files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helpers.checks import load_npy, read_json, require_keys
from helpers.data.batches import BatchStream
from helpers.data.shard_files import (  # noqa: F401  (StoreError, forget_verified: part of this module's API)
    StoreError,
    _save_npy_atomic,
    check_sha256,
    forget_verified,
    write_json_atomic,
)

FORMAT = "sae-lab-activations/1"


_SHARD_FIX = "delete the store and collect again (notebook 01)"


def acts_name(layer: int, shard: int) -> str:
    return f"acts_L{layer}_{shard:05d}.npy"


def tokens_name(shard: int) -> str:
    return f"tokens_{shard:05d}.npy"


@dataclass(frozen=True)
class StoreRequest:
    """What a store holds; a store on disk must match the request that resumes it."""

    model: str
    corpus: str
    layers: tuple[int, ...]
    seq_len: int
    n_seq: int
    dtype: str = "float16"
    seed: int = 0
    shard_seqs: int = 64
    precision: str = "float32"  # the model's matmul precision while collecting (helpers.precision)
    corpus_source: str | None = None  # where `corpus`'s text is, if not the built-in corpus of that name
    hook: str = "hook_resid_pre"  # the hook kind at every layer (helpers.model.hooks.KINDS)

    def to_dict(self) -> dict:
        source = {"corpus_source": self.corpus_source} if self.corpus_source is not None else {}
        if (
            self.hook != "hook_resid_pre"
        ):  # stores of resid_pre (notebook 01) keep their manifests as they were
            source["hook"] = self.hook
        return {
            "model": self.model,
            "corpus": self.corpus,
            "layers": list(self.layers),
            "seq_len": self.seq_len,
            "n_seq": self.n_seq,
            "dtype": self.dtype,
            "seed": self.seed,
            "shard_seqs": self.shard_seqs,
            "precision": self.precision,
        } | source

    @classmethod
    def from_dict(cls, d: dict) -> StoreRequest:
        return cls(**{**d, "layers": tuple(d["layers"])})

    @property
    def n_shards(self) -> int:
        return -(-self.n_seq // self.shard_seqs)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_seqs
        return start, min(start + self.shard_seqs, self.n_seq)


class StoreWriter:
    """Appends complete shards to a store directory; see module docstring."""

    def __init__(self, path: Path, request: StoreRequest, meta: dict):
        self.path = Path(path)
        self.request = request
        manifest_path = self.path / "manifest.json"
        if manifest_path.exists():
            manifest = read_json(manifest_path, "store manifest", _SHARD_FIX, StoreError)
            have = manifest["request"]
            if have != request.to_dict():
                diff = "; ".join(
                    f"{k}: stored {have.get(k)!r}, asked {v!r}"
                    for k, v in request.to_dict().items()
                    if have.get(k) != v
                )
                raise StoreError(
                    f"the store at {self.path} holds a different request ({diff}); "
                    f"use another directory or delete this one (rm -r {self.path})"
                )
            self.manifest = manifest
            for entry in self.manifest["shards"]:  # cheap check that listed shards are intact
                for name, info in entry["files"].items():
                    check_size(self.path / name, info)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT,
                "request": request.to_dict(),
                **meta,
                "shards": [],
                "complete": False,
            }
            write_json_atomic(manifest_path, self.manifest)

    @property
    def next_shard(self) -> int:
        return len(self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def write_shard(self, shard: int, tokens: np.ndarray, acts: dict[int, np.ndarray]) -> None:
        if shard != self.next_shard:
            raise StoreError(f"shard {shard} written out of order (next is {self.next_shard})")
        self.manifest["shards"].append(save_shard_files(self.path, self.request, shard, tokens, acts))
        self.manifest["complete"] = len(self.manifest["shards"]) == self.request.n_shards
        write_json_atomic(self.path / "manifest.json", self.manifest)


def save_shard_files(
    path: Path, request: StoreRequest, shard: int, tokens: np.ndarray, acts: dict[int, np.ndarray]
) -> dict:
    """Write one shard's files atomically; returns its manifest entry (also used by the
    sharded collection in helpers.data.collect, so both write identical entries)."""
    files = {tokens_name(shard): _save_npy_atomic(path / tokens_name(shard), tokens.astype(np.int32))}
    for layer in request.layers:
        name = acts_name(layer, shard)
        files[name] = _save_npy_atomic(path / name, acts[layer])
    return {"index": shard, "n_seq": int(tokens.shape[0]), "files": files}


def check_size(path: Path, info: dict) -> None:
    if not path.exists():
        raise StoreError(f"shard file {path} is missing; re-run the collection to rebuild it")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise StoreError(
            f"shard file {path} is corrupt ({size} bytes, manifest says "
            f"{info['bytes']}); delete it and its manifest entry, or the store, "
            f"and collect again"
        )


class ActivationStore:
    """Read side of a store. `verify="size"` (default) checks every listed file's size when
    opening; `verify="full"` also checks every sha256 checksum up front. Whatever `verify` says, each
    shard file's sha256 is checked the first time this process reads it (module docstring)."""

    def __init__(self, path, verify: str = "size"):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise StoreError(
                f"no activation store at {self.path}; collect one first "
                "(notebook 01 or helpers.data.collect.collect_store)"
            )
        self.manifest = read_json(manifest_path, "store manifest", _SHARD_FIX, StoreError)
        require_keys(
            self.manifest,
            ("format", "request", "complete", "shards", "d_model"),
            manifest_path,
            "store manifest",
            _SHARD_FIX,
            StoreError,
        )
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path} is not a {FORMAT} manifest")
        self.request = StoreRequest.from_dict(self.manifest["request"])
        self._files = {name: info for e in self.manifest["shards"] for name, info in e["files"].items()}
        if not self.manifest["complete"]:
            raise StoreError(
                f"the store at {self.path} is incomplete "
                f"({len(self.manifest['shards'])}/{self.request.n_shards} shards); "
                "re-run the collection to resume it"
            )
        if verify not in ("size", "full", "none"):
            raise ValueError(f"verify must be 'size', 'full' or 'none', not {verify!r}")
        if verify != "none":
            self.verify(full=verify == "full")

    # --- facts ---
    @property
    def layers(self) -> tuple[int, ...]:
        return self.request.layers

    @property
    def seq_len(self) -> int:
        return self.request.seq_len

    @property
    def n_seq(self) -> int:
        return self.request.n_seq

    @property
    def n_tokens(self) -> int:
        return self.n_seq * self.seq_len

    @property
    def n_shards(self) -> int:
        return self.request.n_shards

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    def __repr__(self) -> str:
        r = self.request
        return (
            f"ActivationStore({r.model} on {r.corpus}: layers {list(r.layers)}, "
            f"{self.n_seq} x {self.seq_len} tokens, {r.dtype}, {self.path})"
        )

    def verify(self, full: bool = True) -> None:
        for entry in self.manifest["shards"]:
            for name, info in entry["files"].items():
                check_size(self.path / name, info)
                if full:
                    check_sha256(self.path / name, info)

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise StoreError(
                f"layer {layer} is not in the store at {self.path}; it holds layers {list(self.layers)}"
            )

    # --- raw access ---
    def _load(self, name: str) -> np.ndarray:
        """The one place shard files are read: memory-mapped, after the sha256 check of this process's
        first read of the file (so every reader below sees only checked bytes)."""
        array = load_npy(self.path / name, _SHARD_FIX, error=StoreError)
        if name in self._files and os.environ.get("SAE_LAB_STORE_SHA256") != "0":
            check_sha256(self.path / name, self._files[name])
        return array

    def shard_tokens(self, shard: int) -> np.ndarray:
        return self._load(tokens_name(shard))

    def shard_acts(self, shard: int, layer: int) -> np.ndarray:
        self._check_layer(layer)
        return self._load(acts_name(layer, shard))

    def tokens(self) -> np.ndarray:
        """All token ids [n_seq, T] (int32); row = sequence id."""
        return np.concatenate([self.shard_tokens(s) for s in range(self.n_shards)])

    def position_norms(self, layer: int) -> np.ndarray:
        """Mean L2 norm of the residual at each position, [T] float64, one pass over shards."""
        total = np.zeros(self.seq_len)
        for s in range(self.n_shards):
            acts = np.asarray(self.shard_acts(s, layer), dtype=np.float32)
            total += np.linalg.norm(acts, axis=-1).sum(0)
        return total / self.n_seq

    def acts_for(self, layer: int, seq_ids) -> np.ndarray:
        """Activations [len(seq_ids), T, d] (float32) of the given sequence ids, any order."""
        seq_ids = np.asarray(seq_ids, dtype=np.int64).reshape(-1)
        if seq_ids.size and not (0 <= seq_ids.min() and seq_ids.max() < self.n_seq):
            raise StoreError(f"sequence ids must be in 0..{self.n_seq - 1}")
        out = np.empty((len(seq_ids), self.seq_len, self.d_model), dtype=np.float32)
        shard_of, row_of = np.divmod(seq_ids, self.request.shard_seqs)
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            out[where] = self.shard_acts(int(shard), layer)[row_of[where]]
        return out

    # --- streams ---
    def sequences(self, layer: int, device: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens [n, T] LongTensor, acts [n, T, d] float32) per shard, in order."""
        self._check_layer(layer)
        for s in range(self.n_shards):
            yield (
                torch.from_numpy(np.asarray(self.shard_tokens(s), dtype=np.int64)),
                torch.from_numpy(np.array(self.shard_acts(s, layer), dtype=np.float32)).to(device),
            )

    def batches(
        self,
        layer: int | Sequence[int],
        batch_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        exclude_positions: Sequence[int] = (),
        epochs: int | None = 1,
        buffer_shards: int = 4,
        device: str = "cpu",
        shards: Sequence[int] | None = None,
        exclude_tokens: Sequence[int] = (),
        max_norm: float | Sequence[float] | None = None,
    ) -> BatchStream:
        """Shuffled float32 [B, d] batches of one layer, or [B, len(layer) * d] of several layers side by
        side (a crosscoder's input; `max_norm` then one cut per layer). See BatchStream."""
        layers = [layer] if isinstance(layer, int) else list(layer)
        for lay in layers:
            self._check_layer(lay)
        if not isinstance(layer, int):
            layer = tuple(int(v) for v in layer)
            if max_norm is not None and len(np.atleast_1d(max_norm)) not in (1, len(layer)):
                raise StoreError(f"max_norm needs one cut per layer ({len(layer)}), got {max_norm}")
            max_norm = None if max_norm is None else tuple(np.broadcast_to(max_norm, (len(layer),)).tolist())
        if shards is not None:
            shards = [int(s) for s in shards]
            bad = [s for s in shards if not 0 <= s < self.n_shards]
            if bad or not shards:
                raise StoreError(f"shards {bad or shards} are not in 0..{self.n_shards - 1}")
        if not set(range(self.seq_len)) - {int(p) for p in exclude_positions}:
            raise StoreError("exclude_positions removes every position; exclude fewer")
        return BatchStream(
            self,
            layer,
            batch_size,
            shuffle,
            seed,
            tuple(exclude_positions),
            epochs,
            buffer_shards,
            device,
            shards,
            tuple(exclude_tokens),
            max_norm,
        )

    def token_rows(
        self,
        layer: int | Sequence[int],
        shards: Sequence[int],
        exclude_positions: Sequence[int] = (0,),
        exclude_tokens: Sequence[int] = (),
        max_norm: float | Sequence[float] | None = None,
        positions: bool = False,
    ):
        """(acts [N, d] float32, token ids [N] int64) of the given shards in store order, with the
        same exclusions as `batches`: for analyses that need each row's token. Several layers give
        [N, len(layer) * d] rows side by side, `max_norm` one cut per layer (a token above any is left
        out). With `positions`, also (sequence ids [N], positions [N]) of each row."""
        layers = [layer] if isinstance(layer, int) else list(layer)
        for lay in layers:
            self._check_layer(lay)
        cuts = (
            None
            if max_norm is None
            else np.broadcast_to(np.asarray(max_norm, dtype=np.float64), (len(layers),))
        )
        xs, ids, seqs, poss = [], [], [], []
        for s in shards:
            acts, toks = [self.shard_acts(int(s), lay) for lay in layers], self.shard_tokens(int(s))
            mask = np.ones(toks.shape, dtype=bool)
            mask[:, list(exclude_positions)] = False
            if len(exclude_tokens):
                mask &= ~np.isin(toks, np.asarray(exclude_tokens))
            rows = [np.array(a[mask], dtype=np.float32) for a in acts]
            keep = np.ones(len(rows[0]), dtype=bool)
            for r, cut in zip(rows, cuts if cuts is not None else ()):
                keep &= np.linalg.norm(r, axis=1) <= cut
            xs.append(np.concatenate([r[keep] for r in rows], axis=1))
            ids.append(toks[mask][keep].astype(np.int64))
            if positions:
                seq, pos = np.nonzero(mask)
                seqs.append(seq[keep] + self.request.shard_rows(int(s))[0])
                poss.append(pos[keep])
        out = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ids))
        return (*out, np.concatenate(seqs), np.concatenate(poss)) if positions else out

    def split(self, n_eval_shards: int = 1) -> tuple[list[int], list[int]]:
        """(train shards, held-out eval shards): the last `n_eval_shards` shards are held out."""
        if not 0 < n_eval_shards < self.n_shards:
            raise StoreError(
                f"cannot hold out {n_eval_shards} of {self.n_shards} shards; "
                "collect more tokens or hold out fewer"
            )
        cut = self.n_shards - n_eval_shards
        return list(range(cut)), list(range(cut, self.n_shards))
