"""Memory / speed benchmark of the streaming per-position pass (helpers.analysis.positions, issue #4).

Acceptance: 1M tokens (sequences of 1024) through `PositionStats` with a 24576-latent SAE stay
under 4 GB peak RSS. Codes are synthetic but realistically sparse: latent frequencies follow a
Zipf-like law, values are log-normal with a per-latent scale, position 0 is a 50x "sink":
  topk : TopK k=32 in sparse form (values, indices) -> `update_sparse`
  relu : ~100 nonzeros per token in a DENSE [chunk, d_sae] float32 matrix -> `update`
         (what a ReLU SAE's encode() hands over; the dense chunk counts toward the peak)
  --encode: instead encode random activations x [chunk, d_in] with a random ReLU encoder
         (realistic but slow on CPU: 2 * d_in * d_sae FLOP per token).
The naive approach (a dense [tokens, d_sae] float32 matrix) is projected, never allocated.

    .venv/bin/python benchmarks/bench_positions_memory.py            # 1M tokens, both variants
    .venv/bin/python benchmarks/bench_positions_memory.py --quick    # 64k tokens
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import psutil
import torch

from helpers.analysis.position_features import position_feature_scores
from helpers.analysis.positions import PositionStats


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 2**30


def synthetic_chunks(variant, n_tokens, seq_len, chunk_tokens, d_sae, k, nnz, d_in, seed=0):
    """Yield (kind, payload) chunks of whole sequences: ('sparse', (values, indices)) [n_seq, T, k]
    or ('dense', codes) [n_seq, T, d_sae]."""
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 / (torch.arange(d_sae, dtype=torch.float64) + 10.0) ** 0.8  # Zipf-like
    freq = freq[torch.randperm(d_sae, generator=g)]
    scale = torch.exp(torch.randn(d_sae, generator=g) * 0.5).float()
    sink = torch.ones(seq_len)
    sink[0] = 50.0
    seqs = max(chunk_tokens // seq_len, 1)
    if variant == "encode":
        W = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
        b = torch.full((d_sae,), -2.3)  # ~1 % of N(0, 1) pre-acts positive
    total_seqs = -(-n_tokens // seq_len)  # whole sequences, >= n_tokens
    buf = None
    for s0 in range(0, total_seqs, seqs):
        n_seq = min(seqs, total_seqs - s0)
        n = n_seq * seq_len
        pos_scale = sink.repeat(n_seq)[:, None]  # [n, 1]
        if variant == "encode":
            x = torch.randn(n, d_in, generator=g) * pos_scale.sqrt()
            yield "dense", torch.relu(x @ W + b).view(n_seq, seq_len, d_sae)
            continue
        m = k if variant == "topk" else nnz
        idx = torch.multinomial(freq, n * m, replacement=True, generator=g).view(n, m)
        val = torch.exp(torch.randn(n, m, generator=g) * 0.8) * scale[idx] * pos_scale
        if variant == "topk":
            yield "sparse", (val.view(n_seq, seq_len, m), idx.view(n_seq, seq_len, m))
        else:
            if buf is None or buf.shape[0] < n:  # reused: no page faults per chunk
                buf = torch.zeros(n, d_sae)
            codes = buf[:n].zero_()
            codes.scatter_(1, idx, val)
            yield "dense", codes.view(n_seq, seq_len, d_sae)


def run(variant, args):
    acc = PositionStats(args.seq_len, args.d_sae)
    t0, done, in_acc = time.perf_counter(), 0, 0.0
    for kind, payload in synthetic_chunks(
        variant, args.tokens, args.seq_len, args.chunk_tokens, args.d_sae, args.k, args.nnz, args.d_in
    ):
        ta = time.perf_counter()
        if kind == "sparse":
            acc.update_sparse(*payload)
        else:
            acc.update(payload)
        in_acc += time.perf_counter() - ta
        done += args.seq_len * (payload[0] if kind == "sparse" else payload).shape[0]
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = acc.result()
    res.pos_mean, res.feature_stats(False)
    scores = position_feature_scores(res)
    analyse = time.perf_counter() - t1
    print(
        f"[{variant:6s}] {done:,} tokens in {wall:.1f} s = {done / wall:,.0f} tok/s (accumulator"
        f" alone {in_acc:.1f} s = {done / in_acc:,.0f} tok/s; rest = synthetic codes) | "
        f"analysis (result + stats + eta2 scores) {analyse:.1f} s | state "
        f"{acc.nbytes / 2**30:.3f} GB | RSS now {rss_gb():.2f} GB, peak so far "
        f"{peak_rss_gb():.2f} GB | nonzeros {int(res.pl_nnz.sum(dtype=np.int64)):,} | "
        f"eta2 finite for {int(scores.eta2.notna().sum())} latents"
    )
    return wall, done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=None, help="default 1M (64k with --quick)")
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--chunk-tokens", type=int, default=2048, help="tokens per update() call")
    ap.add_argument("--k", type=int, default=32, help="TopK k of the topk variant")
    ap.add_argument("--nnz", type=int, default=100, help="nonzeros per token of the relu variant")
    ap.add_argument("--d-in", type=int, default=768, help="model width for --encode")
    ap.add_argument("--variant", choices=["topk", "relu", "both"], default="both")
    ap.add_argument("--encode", action="store_true", help="random ReLU encoder instead (slow)")
    ap.add_argument("--quick", action="store_true", help="64k tokens")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; on a shared "
        "2-core box 2 threads were ~25x SLOWER than 1 (OpenMP barrier waits)",
    )
    args = ap.parse_args()
    if args.tokens is None:
        args.tokens = 65_536 if args.quick else 1_000_000
    torch.set_num_threads(args.threads)
    variants = ["encode"] if args.encode else (["topk", "relu"] if args.variant == "both" else [args.variant])
    naive = args.tokens * args.d_sae * 4
    print(
        f"tokens {args.tokens:,}  seq_len {args.seq_len}  d_sae {args.d_sae}  chunk "
        f"{args.chunk_tokens} tokens  threads {torch.get_num_threads()}"
    )
    print(f"baseline RSS after imports {rss_gb():.2f} GB (peak {peak_rss_gb():.2f} GB)")
    for v in variants:
        run(v, args)
    peak = peak_rss_gb()
    print(
        f"naive dense [tokens, d_sae] float32 (projected, not allocated): {naive / 1e9:.1f} GB"
        f" = {naive / 2**30:.1f} GiB"
    )
    print(
        f"peak RSS {peak:.2f} GiB -> naive / streaming = {naive / 2**30 / peak:.0f}x; "
        f"acceptance (< 4 GB): {'PASS' if peak * 2**30 < 4e9 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
