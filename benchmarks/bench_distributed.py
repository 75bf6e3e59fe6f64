"""Distributed training speed: tokens/s of 1 vs 2 torchrun ranks (gloo on CPU, NCCL on GPUs).

    python benchmarks/bench_distributed.py [--steps 40] [--d-in 256] [--d-sae 2048]

Launches `torchrun --standalone --nproc_per_node N` on this file for each setting and prints the
global training tokens/s rank 0 measured (train_saes' eval_summary.json):
  ddp: one TopK SAE (AuxK off), the global batch split over ranks, gradients all-reduced;
  sae: a plan of 4 TopK SAEs (4 seeds), SAE i on rank i % N; tokens/s counts each SAE's tokens.
CPU runs use one torch thread per rank, plus a one-rank two-thread run (the fair single-process
baseline on a 2-core machine). Every rank reads the same in-memory stream. Expect little gain on
2 shared cores: the ranks compete for the same cores the threads would use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(a) -> None:
    import torch

    from helpers.data.toy import TensorBatches
    from helpers.training.config import TrainConfig
    from helpers.training.train_dist import train_ddp, train_sae_parallel

    torch.set_num_threads(a.threads)
    X = torch.randn(a.batch * 8, a.d_in, generator=torch.Generator().manual_seed(0)) * 3
    n = 1 if a.mode == "ddp" else 4
    cfgs = [
        TrainConfig(
            d_in=a.d_in,
            d_sae=a.d_sae,
            k=32,
            batch_size=a.batch,
            total_tokens=a.batch * a.steps,
            options={"auxk_coef": 0.0},
            seed=s,
            warmup_steps=5,
            norm_estimate_tokens=a.batch,
        )
        for s in range(n)
    ]
    out = [Path(a.out) / f"sae{s}" for s in range(n)]
    fn = train_ddp if a.mode == "ddp" else train_sae_parallel
    fn(cfgs, TensorBatches(X, a.batch, seed=0), out, progress=False)


def run(mode: str, ranks: int, threads: int, a) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(ranks),
            __file__,
            "--worker",
            "--mode",
            mode,
            "--threads",
            str(threads),
            "--out",
            tmp,
            "--steps",
            str(a.steps),
            "--d-in",
            str(a.d_in),
            "--d-sae",
            str(a.d_sae),
            "--batch",
            str(a.batch),
        ]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
        sums = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("sae*/eval_summary.json"))]
        # SAE-parallel: the ranks run at once, so the plan's tokens/s is the sum over its SAEs' runs
        # divided by the slowest rank's time; each SAE's summary holds its own rank's wall time.
        tokens = sum(s["tokens_trained"] for s in sums)
        return tokens / max(s["seconds"] for s in sums)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--mode", default="ddp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1024)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    import torch

    gpus = torch.cuda.device_count()
    print(
        f"SAE d_in={a.d_in} d_sae={a.d_sae} k=32, global batch {a.batch}, {a.steps} steps; "
        f"{os.cpu_count()} CPU cores, {gpus} GPUs"
    )
    settings = [(1, 2), (1, 1), (2, 1)] if not gpus else [(1, 1)] + ([(2, 1)] if gpus > 1 else [])
    for mode in ("ddp", "sae"):
        base = None
        for ranks, threads in settings:
            tps = run(mode, ranks, threads, a)
            base = base or tps
            print(
                f"{mode:4s} {ranks} rank(s) x {threads} thread(s): {tps:12,.0f} tok/s  ({tps / base:.2f}x "
                "the first)"
            )


if __name__ == "__main__":
    main()
