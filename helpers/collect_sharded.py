"""Sharded collection: the shards of one store request split over torchrun ranks.

    torchrun --standalone --nproc_per_node 2 -m helpers.collect --model tiny-llama \
        --corpus synthetic-a --layers 0 2 --tokens 8192 --seq-len 64 --out /tmp/store

Rank r computes the shards s with s % world == r that are not done yet, writing each shard's
files atomically (`*.tmp` + rename, as a single process does) and then its own progress file
`manifest.rank{r}.json` (replaced atomically, listing the entries it finished). When every rank
is done (a gloo barrier), rank 0 merges the manifest's entries and all progress files in shard
order into `manifest.json`, marks it complete, and deletes the progress files.

The finished directory is byte-identical to `helpers.collect.collect` of the same request in the
same environment (same files, same manifest, versions included): shards are cut from the same
windows and computed in the same batches, and both paths build entries with
`store.save_shard_files`. A killed rank (or job) resumes: a re-run skips every shard listed in
the manifest or in any progress file, whatever the new world size. Only one node: every rank
must see the same directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .collect import collect, shard_activations, store_meta
from .corpora import load_corpus, token_windows
from .distributed import Dist, barrier, init_dist
from .models import get_spec, load_model
from .store import ActivationStore, StoreRequest, StoreWriter, _check_size, _write_json_atomic, save_shard_files

PROGRESS_GLOB = "manifest.rank*.json"


def progress_name(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def rank_shards(n_shards: int, rank: int, world: int, done: set[int]) -> list[int]:
    """The shards rank `rank` computes: every world-th shard from `rank`, minus those done."""
    return [s for s in range(rank, n_shards, world) if s not in done]


def _done_entries(out_dir: Path, writer: StoreWriter) -> dict[int, dict]:
    """Entries of finished shards: the manifest's and every rank's progress file's (size-checked)."""
    entries = {e["index"]: e for e in writer.manifest["shards"]}
    for path in sorted(out_dir.glob(PROGRESS_GLOB)):
        for e in json.loads(path.read_text())["shards"]:
            for name, info in e["files"].items():
                _check_size(out_dir / name, info)
            entries.setdefault(e["index"], e)
    return entries


def collect_sharded(request: StoreRequest, out_dir, model=None, batch_size: int = 16,
                    dist: Dist | None = None, progress: bool = True) -> ActivationStore:
    """Run (or resume) this rank's part of a collection; every rank returns the finished store.

    A world of one (no torchrun) is `helpers.collect.collect`."""
    dist = dist or init_dist(cpu_only=True)
    if not dist.active:
        return collect(request, out_dir, model, batch_size, progress)
    out_dir = Path(out_dir)
    spec = get_spec(request.model)
    if dist.is_main:  # create (or check) the manifest before anyone reads it
        StoreWriter(out_dir, request, store_meta(spec))
    barrier(dist)
    writer = StoreWriter(out_dir, request, store_meta(spec))  # raises on another request
    if writer.complete:
        barrier(dist)  # nobody may read progress files rank 0 is about to delete
        if dist.is_main:
            for p in out_dir.glob(PROGRESS_GLOB):  # left by a kill after the merge
                p.unlink()
        return ActivationStore(out_dir)
    done = _done_entries(out_dir, writer)
    mine = rank_shards(request.n_shards, dist.rank, dist.world, set(done))
    own_path = out_dir / progress_name(dist.rank)
    own = json.loads(own_path.read_text())["shards"] if own_path.exists() else []
    start = time.perf_counter()
    if mine:
        model = model or load_model(request.model)
        texts = load_corpus(request.corpus)["text"]
        windows = token_windows(texts, model.tokenizer, request.seq_len, spec.bos_id,
                                request.n_seq, request.seed, request.corpus)
        for shard in mine:
            lo, hi = request.shard_rows(shard)
            acts = shard_activations(model, request, windows, shard, batch_size)
            own.append(save_shard_files(out_dir, request, shard, windows[lo:hi], acts))
            _write_json_atomic(own_path, {"rank": dist.rank, "shards": own})
    if progress:
        n_tok = sum(request.shard_rows(s)[1] - request.shard_rows(s)[0] for s in mine) * request.seq_len
        print(f"rank {dist.rank}/{dist.world}: {len(mine)} shards, {n_tok:,} tokens in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    barrier(dist)
    if dist.is_main:
        entries = _done_entries(out_dir, writer)
        missing = [s for s in range(request.n_shards) if s not in entries]
        if missing:
            raise RuntimeError(f"shards {missing[:5]} were not written by any rank; re-run the collection")
        writer.manifest["shards"] = [entries[s] for s in range(request.n_shards)]
        writer.manifest["complete"] = True
        _write_json_atomic(out_dir / "manifest.json", writer.manifest)
        for p in out_dir.glob(PROGRESS_GLOB):
            p.unlink()
    barrier(dist)
    return ActivationStore(out_dir)
