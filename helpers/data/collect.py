"""Collect residual-stream activations of a model over a corpus into an ActivationStore.

    python -m helpers.data.collect --model tiny-llama --corpus synthetic-a --layers 0 2 \
        --tokens 8192 --seq-len 64 --out /tmp/store
    python -m helpers.data.collect --model EleutherAI/pythia-70m --corpus notes --corpus-source ~/notes/ \
        --layers 3 --tokens 65536 --out data/activations/mine/notes     # any causal LM, local text
    python -m helpers.data.collect --profile my-study.toml                 # every store of a profile

Re-running the same request is a no-op; a killed run resumes from its last complete shard.

The model's ModelSpec is resolved once, at the top (`collect_profile`, `main`, or `collect` when given
neither a model nor a spec), and passed along: `make_request`, `collect`, `collect_sharded` and what
they call take the ModelSpec (a model loaded by `load_model` carries its own, `spec_of`).

Sharded (`collect_sharded`): under `torchrun --standalone --nproc_per_node N -m helpers.data.collect ...`
rank r computes the shards s with s % world == r that are not done yet, writing each shard's
files atomically (`*.tmp` + rename, as a single process does) and then its own progress file
`manifest.rank{r}.json` (replaced atomically, listing the entries it finished). When every rank
is done (a gloo barrier), rank 0 merges the manifest's entries and all progress files in shard
order into `manifest.json`, marks it complete, and deletes the progress files. The finished
directory is byte-identical to `collect` of the same request: both read the same windows, compute
them in the same batches and build entries with `store.save_shard_files`. A killed rank (or job)
resumes: a re-run skips every shard listed in the manifest or in any progress file, whatever the
new world size. Only one node: every rank must see the same directory.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.cli import run_cli
from helpers.data.corpora import check_source, load_corpus, token_windows
from helpers.data.store import (
    ActivationStore,
    StoreError,
    StoreRequest,
    StoreWriter,
    check_size,
    save_shard_files,
    write_json_atomic,
)
from helpers.distributed import Dist, barrier, init_dist, launched_by_torchrun
from helpers.model.models import ModelSpec, RemoteUnavailableError, as_spec, check_layers, load_model, spec_of
from helpers.model.residuals import residuals
from helpers.precision import resolve_precision
from helpers.profiles import Profile

PROGRESS_GLOB = "manifest.rank*.json"

DTYPES = {"float16": np.float16, "float32": np.float32}


def _versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "nnsight", "datasets", "sae-lab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def make_request(
    model: str | ModelSpec,
    corpus: str,
    layers,
    n_tokens: int,
    seq_len: int,
    dtype: str = "float16",
    seed: int = 0,
    shard_seqs: int = 64,
    precision: str = "float32",
    corpus_source: str | None = None,
) -> StoreRequest:
    """Validate a collection request; every bad input gets one line naming the fix.

    `precision` "auto" resolves here (bf16 where measured faster, helpers.precision) so the manifest
    records what ran. `model`: a registry name, hub id or local folder, or its ModelSpec if resolved
    already (then nothing is resolved again)."""
    spec = as_spec(model)
    model = spec.name
    device = collection_device()
    shape = (2048, spec.d_model, 4 * spec.d_model)  # the blocks' MLP GEMM over a few batches of tokens
    precision = str(resolve_precision(precision, device, shape=shape)).removeprefix("torch.")
    layers = check_layers(spec, layers)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
    if seq_len > spec.n_ctx:
        raise ValueError(
            f"sequence length {seq_len} is beyond {model}'s context of "
            f"{spec.n_ctx} positions; use seq_len <= {spec.n_ctx}"
        )
    n_seq = n_tokens // seq_len
    if n_seq < 1:
        raise ValueError(
            f"tokens={n_tokens} is less than one sequence of {seq_len}; ask for at least {seq_len} tokens"
        )
    return StoreRequest(
        model, corpus, tuple(layers), seq_len, n_seq, dtype, seed, shard_seqs, precision, corpus_source
    )


def collection_device() -> str:
    """Where the model runs while collecting: the GPU when there is one (make_request resolves
    "auto" precision for the same device), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def on_collection_device(model):
    """The model moved to `collection_device()` (a no-op on CPU; NDIF-remote models stay put)."""
    if not getattr(model, "_sae_lab_remote", False):
        model._module.to(collection_device())
    return model


def store_meta(spec) -> dict:
    """The model facts and package versions a store's manifest records."""
    return {
        "d_model": spec.d_model,
        "bos_id": spec.bos_id,
        "bos_note": spec.bos_note,
        "hook": "resid_pre (input of block L = hidden_states[L])",
        "versions": _versions(),
    }


F16_MAX = float(np.finfo(np.float16).max)


def fits_dtype(x: torch.Tensor, request: StoreRequest, where: str) -> torch.Tensor:
    """`x` itself, after checking that the store's dtype holds it: a float16 store cannot keep values past
    65,504 (Gemma 3's deep residual stream reaches them), which would be stored as inf."""
    if request.dtype == "float16":
        peak = float(x.abs().max()) if x.numel() else 0.0
        if peak > F16_MAX:
            raise StoreError(
                f"{request.model} {where} reaches |x| = {peak:,.0f}, past float16's {F16_MAX:,.0f}; "
                "collect this store with dtype='float32' (--dtype float32, or Profile.dtype)"
            )
    return x


def shard_activations(
    model, spec: ModelSpec, request: StoreRequest, windows: np.ndarray, shard: int, batch_size: int, bar=None
) -> dict[int, np.ndarray]:
    """{layer: [n, T, d]} activations of one shard's windows, `batch_size` sequences a pass."""
    lo, hi = request.shard_rows(shard)
    d_model = spec.d_model
    acts = {
        layer: np.empty((hi - lo, request.seq_len, d_model), dtype=DTYPES[request.dtype])
        for layer in request.layers
    }
    for b in range(lo, hi, batch_size):
        e = min(b + batch_size, hi)
        out = residuals(
            model, torch.from_numpy(windows[b:e]).long(), request.layers, precision=request.precision
        )
        for layer, x in out.items():
            acts[layer][b - lo : e - lo] = fits_dtype(x.float().cpu(), request, f"layer {layer}").numpy()
        if bar is not None:
            bar.update((e - b) * request.seq_len)
    return acts


def request_windows(model, spec: ModelSpec, request: StoreRequest) -> np.ndarray:
    """[n_seq, seq_len] token windows of the request's corpus, BOS first (helpers.data.corpora)."""
    texts = load_corpus(request.corpus, source=request.corpus_source)["text"]
    return token_windows(
        texts,
        model.tokenizer,
        request.seq_len,
        spec.bos_id,
        request.n_seq,
        request.seed,
        request.corpus,
    )


def _request_spec(request: StoreRequest, model, spec: ModelSpec | None) -> ModelSpec:
    """The request's ModelSpec: `spec` if given, else the model's (`spec_of`), else resolved from the
    request's model name (the only resolution of a collection given neither); checked against the
    request."""
    spec = spec or (spec_of(model) if model is not None else as_spec(request.model))
    if spec.name != request.model:
        raise ValueError(
            f"the model passed is {spec.name} but the request names "
            f"{request.model}; pass the matching model or none"
        )
    if model is not None and spec_of(model).name != spec.name:
        raise ValueError(
            f"the model passed is {spec_of(model).name} but the spec names {spec.name}; "
            "pass the matching model or none"
        )
    return spec


def collect(
    request: StoreRequest,
    out_dir,
    model=None,
    batch_size: int = 16,
    progress: bool = True,
    spec: ModelSpec | None = None,
) -> ActivationStore:
    """Run (or resume) a collection; returns the finished store. `spec`: the request's ModelSpec if
    resolved already (else the model's, else resolved here, once)."""
    out_dir = Path(out_dir)
    spec = _request_spec(request, model, spec)
    if not (out_dir / "manifest.json").exists():  # a new store: its corpus must be readable first
        check_source(request.corpus, request.corpus_source)
    writer = StoreWriter(out_dir, request, store_meta(spec))
    if writer.complete:
        if progress:
            print(
                f"reused {out_dir} (collected before for the same request: "
                f"{request.n_seq * request.seq_len:,} tokens x {len(request.layers)} layers)"
            )
        return ActivationStore(out_dir)
    model = on_collection_device(model or load_model(spec))
    windows = request_windows(model, spec, request)
    first = writer.next_shard
    done_tokens = request.shard_rows(first)[0] * request.seq_len
    bar = tqdm(
        total=request.n_seq * request.seq_len,
        initial=done_tokens,
        unit="tok",
        unit_scale=True,
        desc=f"{request.model} {request.corpus}",
        disable=not progress,
    )
    start = time.perf_counter()
    for shard in range(first, request.n_shards):
        lo, hi = request.shard_rows(shard)
        writer.write_shard(
            shard, windows[lo:hi], shard_activations(model, spec, request, windows, shard, batch_size, bar)
        )
    bar.close()
    elapsed = time.perf_counter() - start
    new_tokens = request.n_seq * request.seq_len - done_tokens
    if progress and elapsed > 0:
        print(
            f"collected {new_tokens:,} tokens x {len(request.layers)} layers in {elapsed:.1f} s "
            f"({new_tokens / elapsed:,.0f} tok/s)"
        )
    return ActivationStore(out_dir)


# ---------------------------------------------------------------------------- sharded over ranks
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
                check_size(out_dir / name, info)
            entries.setdefault(e["index"], e)
    return entries


def collect_sharded(
    request: StoreRequest,
    out_dir,
    model=None,
    batch_size: int = 16,
    dist: Dist | None = None,
    progress: bool = True,
    spec: ModelSpec | None = None,
) -> ActivationStore:
    """Run (or resume) this rank's part of a collection; every rank returns the finished store.

    A world of one (no torchrun) is `collect`. `spec` as in `collect`."""
    dist = dist or init_dist(cpu_only=True)
    if not dist.active:
        return collect(request, out_dir, model, batch_size, progress, spec)
    out_dir = Path(out_dir)
    spec = _request_spec(request, model, spec)
    if not (out_dir / "manifest.json").exists():  # a new store: its corpus must be readable first
        check_source(request.corpus, request.corpus_source)
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
        model = on_collection_device(model or load_model(spec))
        windows = request_windows(model, spec, request)
        for shard in mine:
            lo, hi = request.shard_rows(shard)
            acts = shard_activations(model, spec, request, windows, shard, batch_size)
            own.append(save_shard_files(out_dir, request, shard, windows[lo:hi], acts))
            write_json_atomic(own_path, {"rank": dist.rank, "shards": own})
    if progress:
        n_tok = sum(request.shard_rows(s)[1] - request.shard_rows(s)[0] for s in mine) * request.seq_len
        print(
            f"rank {dist.rank}/{dist.world}: {len(mine)} shards, {n_tok:,} tokens in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
    barrier(dist)
    if dist.is_main:
        entries = _done_entries(out_dir, writer)
        missing = [s for s in range(request.n_shards) if s not in entries]
        if missing:
            raise RuntimeError(f"shards {missing[:5]} were not written by any rank; re-run the collection")
        writer.manifest["shards"] = [entries[s] for s in range(request.n_shards)]
        writer.manifest["complete"] = True
        write_json_atomic(out_dir / "manifest.json", writer.manifest)
        for p in out_dir.glob(PROGRESS_GLOB):
            p.unlink()
    barrier(dist)
    return ActivationStore(out_dir)


def collect_profile(
    profile: Profile, store_root, model=None, progress: bool = True
) -> dict[str, ActivationStore]:
    """The profile's stores: all `layers` on the main corpus, `main_layer` on the others. The model's
    ModelSpec is resolved once here (or read off `model`) and passed to every request and collection."""
    stores = {}
    model = model or load_model(profile.model)
    spec = spec_of(model)
    for corpus in profile.corpora:
        main = corpus == profile.main_corpus
        req = make_request(
            spec,
            corpus,
            profile.layers if main else (profile.main_layer,),
            profile.tokens_main if main else profile.tokens_other,
            profile.seq_len,
            profile.dtype,
            0,
            profile.shard_seqs,
            profile.collect_precision,
            profile.corpus_source(corpus),
        )
        stores[corpus] = collect(req, Path(store_root) / corpus, model, profile.batch_size, progress, spec)
    return stores


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", help="collect every store of a profile (a built-in name or a .toml file)")
    p.add_argument("--model", help="registry name, hub id or local model directory")
    p.add_argument("--corpus", help="store name; a built-in corpus unless --corpus-source says otherwise")
    p.add_argument(
        "--corpus-source", help="a .txt/.md/.rst/.py/.jsonl/.parquet file or folder, or hf:<dataset id>"
    )
    p.add_argument("--layers", type=int, nargs="+")
    p.add_argument("--tokens", type=int)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-seqs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="float32", help="auto | bfloat16 | float32 (model matmuls)")
    p.add_argument("--out", help="store directory (with --profile: the root of its stores)")
    a = p.parse_args(argv)
    if a.profile:
        from helpers.paths import store_root
        from helpers.profiles import get_profile

        profile = get_profile(a.profile)
        for store in collect_profile(profile, a.out or store_root(profile.name)).values():
            print(store)
        return
    missing = [f"--{k}" for k in ("model", "corpus", "layers", "tokens", "out") if getattr(a, k) is None]
    if missing:
        p.error(f"{', '.join(missing)} required (or --profile)")
    spec = as_spec(a.model)  # the one resolution of this collection
    req = make_request(
        spec,
        a.corpus,
        a.layers,
        a.tokens,
        a.seq_len,
        a.dtype,
        a.seed,
        a.shard_seqs,
        a.precision,
        a.corpus_source,
    )
    if launched_by_torchrun():  # torchrun --nproc_per_node N: each rank collects some shards
        print(collect_sharded(req, a.out, batch_size=a.batch_size, spec=spec))
        return
    print(collect(req, a.out, batch_size=a.batch_size, spec=spec))


if __name__ == "__main__":
    run_cli(main, extra=(RemoteUnavailableError,))
