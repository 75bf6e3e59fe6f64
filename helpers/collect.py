"""Collect residual-stream activations of a model over a corpus into an ActivationStore.

    python -m helpers.collect --model tiny-llama --corpus synthetic-a --layers 0 2 \
        --tokens 8192 --seq-len 64 --out /tmp/store

Re-running the same request is a no-op; a killed run resumes from its last complete shard.
Under `torchrun --nproc_per_node N -m helpers.collect ...` the shards are split over N ranks
(helpers.collect_sharded); the finished store is byte-identical.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import residuals
from .corpora import load_corpus, token_windows
from .distributed import launched_by_torchrun
from .models import check_layers, get_spec, load_model, spec_of
from .precision import resolve_precision
from .profiles import Profile
from .store import ActivationStore, StoreRequest, StoreWriter

DTYPES = {"float16": np.float16, "float32": np.float32}


def _versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "nnsight", "datasets", "sae-lab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def make_request(model: str, corpus: str, layers, n_tokens: int, seq_len: int,
                 dtype: str = "float16", seed: int = 0, shard_seqs: int = 64,
                 precision: str = "float32") -> StoreRequest:
    """Validate a collection request; every bad input gets one line naming the fix.

    `precision` "auto" resolves here (bf16 where native, else fp32) so the manifest records what ran."""
    spec = get_spec(model)
    precision = str(resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")
                    ).removeprefix("torch.")
    layers = check_layers(spec, layers)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
    if seq_len > spec.n_ctx:
        raise ValueError(f"sequence length {seq_len} is beyond {model}'s context of "
                         f"{spec.n_ctx} positions; use seq_len <= {spec.n_ctx}")
    n_seq = n_tokens // seq_len
    if n_seq < 1:
        raise ValueError(f"tokens={n_tokens} is less than one sequence of {seq_len}; "
                         f"ask for at least {seq_len} tokens")
    return StoreRequest(model, corpus, tuple(layers), seq_len, n_seq, dtype, seed, shard_seqs, precision)


def store_meta(spec) -> dict:
    """The model facts and package versions a store's manifest records."""
    return {"d_model": spec.d_model, "bos_id": spec.bos_id, "bos_note": spec.bos_note,
            "hook": "resid_pre (input of block L = hidden_states[L])", "versions": _versions()}


def shard_activations(model, request: StoreRequest, windows: np.ndarray, shard: int,
                      batch_size: int, bar=None) -> dict[int, np.ndarray]:
    """{layer: [n, T, d]} activations of one shard's windows, `batch_size` sequences a pass."""
    lo, hi = request.shard_rows(shard)
    d_model = get_spec(request.model).d_model
    acts = {layer: np.empty((hi - lo, request.seq_len, d_model), dtype=DTYPES[request.dtype])
            for layer in request.layers}
    for b in range(lo, hi, batch_size):
        e = min(b + batch_size, hi)
        out = residuals(model, torch.from_numpy(windows[b:e]).long(), request.layers,
                        precision=request.precision)
        for layer, x in out.items():
            acts[layer][b - lo:e - lo] = x.float().numpy()
        if bar is not None:
            bar.update((e - b) * request.seq_len)
    return acts


def collect(request: StoreRequest, out_dir, model=None, batch_size: int = 16,
            progress: bool = True) -> ActivationStore:
    """Run (or resume) a collection; returns the finished store."""
    out_dir = Path(out_dir)
    spec = get_spec(request.model)
    if model is not None and spec_of(model).name != request.model:
        raise ValueError(f"the model passed is {spec_of(model).name} but the request names "
                         f"{request.model}; pass the matching model or none")
    writer = StoreWriter(out_dir, request, store_meta(spec))
    if writer.complete:
        return ActivationStore(out_dir)
    model = model or load_model(request.model)
    texts = load_corpus(request.corpus)["text"]
    windows = token_windows(texts, model.tokenizer, request.seq_len, spec.bos_id,
                            request.n_seq, request.seed, request.corpus)
    first = writer.next_shard
    done_tokens = request.shard_rows(first)[0] * request.seq_len
    bar = tqdm(total=request.n_seq * request.seq_len, initial=done_tokens, unit="tok",
               unit_scale=True, desc=f"{request.model} {request.corpus}", disable=not progress)
    start = time.perf_counter()
    for shard in range(first, request.n_shards):
        lo, hi = request.shard_rows(shard)
        writer.write_shard(shard, windows[lo:hi],
                           shard_activations(model, request, windows, shard, batch_size, bar))
    bar.close()
    elapsed = time.perf_counter() - start
    new_tokens = request.n_seq * request.seq_len - done_tokens
    if progress and elapsed > 0:
        print(f"collected {new_tokens:,} tokens x {len(request.layers)} layers in {elapsed:.1f} s "
              f"({new_tokens / elapsed:,.0f} tok/s)")
    return ActivationStore(out_dir)


def collect_profile(profile: Profile, store_root, model=None, progress: bool = True
                    ) -> dict[str, ActivationStore]:
    """The profile's stores: all `layers` on the main corpus, `main_layer` on the others."""
    stores = {}
    model = model or load_model(profile.model)
    for corpus in profile.corpora:
        main = corpus == profile.main_corpus
        req = make_request(profile.model, corpus,
                           profile.layers if main else (profile.main_layer,),
                           profile.tokens_main if main else profile.tokens_other,
                           profile.seq_len, profile.dtype, 0, profile.shard_seqs,
                           profile.collect_precision)
        stores[corpus] = collect(req, Path(store_root) / corpus, model, profile.batch_size,
                                 progress)
    return stores


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--layers", type=int, nargs="+", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-seqs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="float32", help="auto | bfloat16 | float32 (model matmuls)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    req = make_request(a.model, a.corpus, a.layers, a.tokens, a.seq_len, a.dtype, a.seed,
                       a.shard_seqs, a.precision)
    if launched_by_torchrun():  # torchrun --nproc_per_node N: each rank collects some shards
        from .collect_sharded import collect_sharded
        print(collect_sharded(req, a.out, batch_size=a.batch_size))
        return
    print(collect(req, a.out, batch_size=a.batch_size))


if __name__ == "__main__":
    main()
