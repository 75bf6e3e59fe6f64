"""Where a training step's time goes, against its GEMM bound: the profile bench_roofline.py points to.

    python benchmarks/profile_steps.py                  # TopK, BatchTopK, the BatchTopK crosscoder
    python benchmarks/profile_steps.py --steps TopK --n 20

For each step of bench_roofline.STEPS at the offline shape: torch.profiler over `n` trainer steps
(`TrainingRun.step`, after warm-up), the ops by self CPU time (C kernels called through ctypes show up
as the Python-side gap, "outside torch ops"), and the share of the step the encoder GEMM
(aten::mm / addmm) takes; the rest is what keeps the step from its bound.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_roofline import machine, step_run
from torch.profiler import ProfilerActivity, profile


def profile_step(name: str, d: int, m: int, k: int, batch: int, n: int, top: int) -> None:
    run, d_in = step_run(name, d, m, k, batch)
    x = torch.randn(batch, d_in) * 3
    for i in range(3):
        run.step(x, 1.0, i, 0)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(n):
            run.step(x, 1.0, 3 + i, 0)
    wall = (time.perf_counter() - t) / n
    events = prof.key_averages()
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    in_ops = sum(e.self_cpu_time_total for e in events) / n / 1e6
    print(f"\n--- {name}: {wall * 1e3:.1f} ms per step ({batch / wall:,.0f} tok/s), {batch} x {d_in} -> {m}")
    print(f"{'op':42s} {'ms/step':>8s} {'share':>6s} {'calls':>6s}")
    for e in rows[:top]:
        ms = e.self_cpu_time_total / n / 1e3
        print(f"{e.key[:42]:42s} {ms:8.2f} {ms / 1e3 / wall:6.1%} {e.count // n:6d}")
    gap = wall - in_ops
    print(f"{'outside torch ops (C kernels via ctypes, Python)':42s} {gap * 1e3:8.2f} {gap / wall:6.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", nargs="*", default=["TopK", "BatchTopK", "BatchTopK crosscoder (3 layers)"])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--top", type=int, default=14)
    a = p.parse_args()
    print(machine())
    for name in a.steps:
        profile_step(name, 576, 2304, 32, 2048, a.n, a.top)


if __name__ == "__main__":
    main()
