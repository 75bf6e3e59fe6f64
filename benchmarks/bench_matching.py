"""Speed / memory benchmark of feature matching (helpers.analysis.matching, issue #5).

Two 16384 x 576 dictionaries (SmolLM2-135M width, 16384 latents): B is a noisy permuted partial
copy of A - 60% of its rows are A rows plus noise (cosine ~0.93), 40% are random - so the
matching is realistic (an easy planted part plus a hard random assignment block).
Targets on 2 cores (torch 2 threads): topk_cosine k=4 < 5 s, one-to-one matching < 30 s.
Baselines measured in the same run:
  topk_naive  : the full [n, n] float32 cosine matrix + one torch.topk
  match_naive : the full cosine matrix (float64) + scipy linear_sum_assignment, run with a
                timeout (default 60 s) and reported as skipped past it; also run at --n-small
                where it finishes, to give a measured ratio and an optimality cross-check.
Each step runs in its own subprocess so its time and peak RSS (ru_maxrss) are its own.
"cpu/thread" = process CPU seconds / threads: roughly the wall time on otherwise idle cores
(the shared 2-core box is often oversubscribed; compare wall times only within one run).

    .venv/bin/python benchmarks/bench_matching.py               # full run (~2-4 min)
    .venv/bin/python benchmarks/bench_matching.py --n 4096      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

STEPS = ("topk", "topk_naive", "match", "match_naive")


def make_pair(n: int, d: int, shared: float, seed: int = 0):
    """A [n, d], B [n, d] and truth [n] (the A row each B row was copied from, -1 if random)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g)
    n_sh = int(shared * n)
    src = torch.randperm(n, generator=g)[:n_sh]
    copies = A[src] / A[src].norm(dim=1, keepdim=True) + 0.4 / d**0.5 * torch.randn(n_sh, d, generator=g)
    B = torch.cat([copies, torch.randn(n - n_sh, d, generator=g)])
    truth = torch.cat([src, torch.full((n - n_sh,), -1)])
    order = torch.randperm(n, generator=g)
    return A, B[order], truth[order]


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_step(step: str, n: int, d: int, shared: float, threads: int, k: int) -> dict:
    """Runs inside the child process; returns one JSON-able record."""
    import psutil
    import torch

    from helpers.analysis import similarity as S

    torch.set_num_threads(threads)
    A, B, truth = make_pair(n, d, shared)
    base = psutil.Process().memory_info().rss
    out: dict = {}
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    if step == "topk":
        vals, idx = S.topk_cosine(A, B, k)
        out["top1_ratio@0.7"] = float((vals[:, 0] > 0.7).double().mean())
    elif step == "topk_naive":
        S = (B / B.norm(dim=1, keepdim=True)) @ (A / A.norm(dim=1, keepdim=True)).T  # [n, n]
        vals, idx = torch.topk(S, k, dim=1)
        out["top1_ratio@0.7"] = float((vals[:, 0] > 0.7).double().mean())
    elif step == "match":
        res = S.hungarian_match(A, B)
        sims, ra, rb = res.similarities, res.rows_A, res.rows_B
        out.update(method=res.method, exact=res.exact, rounds=res.rounds)
    else:
        S = ((A / A.norm(dim=1, keepdim=True)) @ (B / B.norm(dim=1, keepdim=True)).T).double().numpy()
        from scipy.optimize import linear_sum_assignment

        ra, rb = linear_sum_assignment(S, maximize=True)
        sims = torch.as_tensor(S[ra, rb])
        ra, rb = torch.as_tensor(ra), torch.as_tensor(rb)
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    if step.startswith("match"):
        planted = truth[rb] >= 0
        out["total_similarity"] = float(sims.double().sum())
        out["planted_recovered"] = float((ra[planted] == truth[rb][planted]).double().mean())
        out["shared@0.7"] = float((sims > 0.7).double().mean())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(
        step=step,
        n=n,
        seconds=seconds,
        cpu_per_thread=cpu / threads,
        peak_rss_mb=peak / 2**20,
        step_rss_mb=(peak - base) / 2**20,
        **out,
    )


def spawn(step: str, n: int, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--step",
        step,
        "--n",
        str(n),
        "--d",
        str(args.d),
        "--shared",
        str(args.shared),
        "--threads",
        str(args.threads),
        "--k",
        str(args.k),
    ]
    env = os.environ | {
        v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    limit = args.naive_timeout if step.endswith("naive") else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env, check=True)
    except subprocess.TimeoutExpired:
        return dict(step=step, n=n, skipped=f"did not finish within {limit} s")
    except subprocess.CalledProcessError as err:
        return dict(step=step, n=n, skipped=f"failed: {err.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--n-small", type=int, default=4096, help="size where the naive LSA baseline also runs")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--shared", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--naive-timeout", type=float, default=60.0)
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.n, args.d, args.shared, args.threads, args.k)))
        return

    print(
        f"feature matching: {args.n} x {args.d} vs {args.n} x {args.d}, {args.shared:.0%} shared rows, "
        f"{args.threads} threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    plan = [("topk", args.n), ("topk_naive", args.n), ("match", args.n), ("match_naive", args.n)]
    if args.n_small and args.n_small < args.n:
        plan += [("match", args.n_small), ("match_naive", args.n_small)]
    recs = {}
    print(
        f"{'step':<12} {'n':>6} {'seconds':>8} {'cpu/thread':>10} {'peak RSS MB':>12} {'step RSS MB':>12}  "
        "notes"
    )
    for step, n in plan:
        r = recs[step, n] = spawn(step, n, args)
        if "skipped" in r:
            print(f"{step:<12} {n:>6} {'-':>8} {'-':>10} {'-':>12} {'-':>12}  skipped: {r['skipped']}")
            continue
        notes = {
            key: (round(v, 4) if isinstance(v, float) else v)
            for key, v in r.items()
            if key not in ("step", "n", "seconds", "cpu_per_thread", "peak_rss_mb", "step_rss_mb")
        }
        print(
            f"{step:<12} {n:>6} {r['seconds']:>8.2f} {r['cpu_per_thread']:>10.2f} {r['peak_rss_mb']:>12.0f} "
            f"{r['step_rss_mb']:>12.0f}  {notes}"
        )

    def ratio(fast, slow, n):
        f, s = recs.get((fast, n), {}), recs.get((slow, n), {})
        if "seconds" not in f:
            return
        if "seconds" not in s:
            print(
                f"  {fast} vs {slow} (n={n}): naive skipped ({s.get('skipped')}): speed-up > "
                f"{args.naive_timeout / f['seconds']:.1f}x"
            )
            return
        print(
            f"  {fast} vs {slow} (n={n}): {s['seconds'] / f['seconds']:.2f}x faster, "
            f"step RSS {s['step_rss_mb'] / max(f['step_rss_mb'], 1):.2f}x smaller"
        )
        if "total_similarity" in f:
            print(
                f"    total similarity {f['total_similarity']:.4f} vs {s['total_similarity']:.4f} "
                f"(diff {f['total_similarity'] - s['total_similarity']:+.2e})"
            )

    print("ratios (same run):")
    ratio("topk", "topk_naive", args.n)
    for n in sorted({n for _, n in plan}):
        ratio("match", "match_naive", n)
    t, m = recs.get(("topk", args.n), {}), recs.get(("match", args.n), {})
    print(
        f"targets: topk {t.get('seconds', float('nan')):.2f} s (< 5 s), one-to-one "
        f"{m.get('seconds', float('nan')):.2f} s "
        f"(< 30 s); load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
