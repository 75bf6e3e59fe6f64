"""Collect several hook points of one layer (attn_out, mlp_out, the MLP hidden activation) in ONE pass.

Each hook kind gets a store of its own, in the format of notebook 01's resid_pre stores (request.hook
names the kind, d_model is its width), beside them under the profile's store root
(helpers.paths.store_name: "<corpus>.<kind>"). The hooks are checked against the model before any
forward pass (helpers.model.hooks.check_hooks); one nnsight trace per batch reads all of them and stops
after the layer. Resumable as `collect` is: a killed run restarts from the first shard some store lacks,
and writes each shard only to the stores that do not have it yet.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.data.collect import (
    DTYPES,
    fits_dtype,
    make_request,
    on_collection_device,
    request_windows,
    store_meta,
)
from helpers.data.store import ActivationStore, StoreWriter
from helpers.model.hooks import HookPoint, check_hooks, hook_activations, hook_width
from helpers.model.models import spec_of
from helpers.paths import store_name
from helpers.profiles import Profile


def hook_requests(profile: Profile, spec, layer: int, kinds) -> dict:
    """{kind: StoreRequest} of the profile's main corpus at `layer`, `hook_tokens` tokens each."""
    base = make_request(
        spec,
        profile.main_corpus,
        (layer,),
        profile.hook_tokens,
        profile.seq_len,
        profile.dtype,
        0,
        profile.shard_seqs,
        profile.collect_precision,
        profile.corpus_source(profile.main_corpus),
    )
    return {kind: replace(base, hook=kind) for kind in kinds}


def collect_hooks(
    profile: Profile, store_root, model, layer: int, kinds, progress: bool = True
) -> dict[str, ActivationStore]:
    """{kind: finished store} of the hook kinds `kinds` at `layer` (collected here in one pass where any
    store is missing or unfinished)."""
    model = on_collection_device(model)
    spec = spec_of(model)
    points = check_hooks(model, spec, [HookPoint(layer, k) for k in kinds])
    requests = hook_requests(profile, spec, layer, kinds)
    writers = {}
    for p in points:
        meta = store_meta(spec) | {"d_model": hook_width(model, spec, p), "hook": p.name}
        writers[p.kind] = StoreWriter(
            Path(store_root) / store_name(profile.main_corpus, p.kind), requests[p.kind], meta
        )
    todo = [k for k, w in writers.items() if not w.complete]
    if todo:
        _collect(
            model, spec, requests[todo[0]], {k: writers[k] for k in todo}, layer, profile.batch_size, progress
        )
    return {k: ActivationStore(w.path) for k, w in writers.items()}


def _collect(model, spec, request, writers: dict, layer: int, batch_size: int, progress: bool) -> None:
    windows = request_windows(model, spec, request)
    first = min(w.next_shard for w in writers.values())
    points = [HookPoint(layer, k) for k in writers]
    widths = {p.kind: hook_width(model, spec, p) for p in points}
    total = request.n_seq * request.seq_len
    bar = tqdm(
        total=total,
        initial=request.shard_rows(first)[0] * request.seq_len,
        unit="tok",
        unit_scale=True,
        desc=f"{request.model} L{layer} hooks",
        disable=not progress,
    )
    start = time.perf_counter()
    for shard in range(first, request.n_shards):
        lo, hi = request.shard_rows(shard)
        acts = {
            k: np.empty((hi - lo, request.seq_len, w), dtype=DTYPES[request.dtype]) for k, w in widths.items()
        }
        for b in range(lo, hi, batch_size):
            e = min(b + batch_size, hi)
            out = hook_activations(model, torch.from_numpy(windows[b:e]).long(), points, request.precision)
            for p in points:
                acts[p.kind][b - lo : e - lo] = fits_dtype(out[p.name], request, p.name).numpy()
            bar.update((e - b) * request.seq_len)
        for kind, writer in writers.items():
            if shard >= writer.next_shard:
                writer.write_shard(shard, windows[lo:hi], {layer: acts[kind]})
    bar.close()
    if progress:
        elapsed = time.perf_counter() - start
        done = total - request.shard_rows(first)[0] * request.seq_len
        print(
            f"collected {done:,} tokens x {len(points)} hooks of layer {layer} in {elapsed:.1f} s "
            f"({done / max(elapsed, 1e-9):,.0f} tok/s)"
        )
