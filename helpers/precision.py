"""Which floating-point precision the heavy matrix work runs in: bf16 where it is measured faster here.

What: `resolve_precision(requested, device, shape=...)` ("auto" | "bfloat16" | "float32" -> a torch
dtype). "auto" picks bf16 only where the hardware has native bf16 (`bf16_is_fast`: a CUDA GPU with
bf16, an AMX-BF16 or AVX512-BF16 CPU) AND a short calibration at the run's GEMM shape
(`bf16_speedup`: best of 5 bf16 vs fp32 GEMMs after a warm-up) finds bf16 at least `MIN_SPEEDUP`x
faster. The ratio is measured once per machine, torch version, thread count and shape and cached
(SAE_LAB_PRECISION_CACHE, default ~/.cache/sae-lab/precision.json, beside the C kernels), and the
choice with its ratio is printed once per process. `autocast(precision, device)` runs matmuls in bf16
with fp32 everywhere else (or does nothing for fp32).
Why: native bf16 is not the same as fast bf16. On the AMD EPYC (Zen 4, AVX512-BF16, no AMX) CPUs this
lab now runs on, the TopK step's bf16 GEMMs ran 2.1x fp32 and collection 1.7x (benchmarks/bench_bf16.py);
where bf16 is emulated, or a kernel lacks a bf16 path, it is slower than fp32, and "auto" must then
stay in fp32. fp32 stays the reference: master weights, optimizer state, reductions and stored
activations never drop below it (stores stay fp16/fp32 as configured).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from pathlib import Path

import torch

PRECISIONS = ("auto", "bfloat16", "float32")
# (rows, inner, cols) of the calibration GEMM when a caller names none: the offline profile's SAE
# encoder GEMM (batch 2,048 x d_in 576 -> 2,304 latents).
CALIBRATION_SHAPE = (2048, 576, 2304)
MIN_SPEEDUP = 1.2  # "auto" takes bf16 only where it is at least this much faster than fp32
_announced: set[tuple[str, tuple[int, int, int]]] = set()


@functools.cache
def bf16_is_fast(device: str = "cpu") -> bool:
    """True where bf16 matmuls run natively: a CUDA device with bf16, or an AMX/AVX512-BF16 CPU."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        cpu = torch.cpu
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def _cache_path() -> Path:
    default = Path.home() / ".cache" / "sae-lab" / "precision.json"
    return Path(os.environ.get("SAE_LAB_PRECISION_CACHE", default))


def cpuinfo_field(name: str, cpuinfo: str | None = None) -> str:
    """The first `name` line's value in /proc/cpuinfo (or in the text given), "" where there is none."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    return next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith(name)), "")


def _machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def measure_bf16_speedup(device: str, shape: tuple[int, int, int], reps: int = 5) -> float:
    """fp32 time / bf16 time of an [m, k] @ [k, n] GEMM on `device`: best of `reps` after a warm-up."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g).to(device), torch.randn(k, n, generator=g).to(device)

    def best(x, y) -> float:
        x @ y  # warm-up (kernel selection, caches)
        times = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x @ y
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())


def bf16_speedup(device: str = "cpu", shape: tuple[int, int, int] = CALIBRATION_SHAPE) -> float:
    """The measured bf16-over-fp32 GEMM speed ratio at `shape`, from the per-machine cache when there."""
    key = (
        f"{_machine(device)} | torch {torch.__version__} | {torch.get_num_threads()} threads | {device} | "
        + ("x".join(map(str, shape)))
    )
    path = _cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure_bf16_speedup(device, shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    return float(cache[key])


@functools.cache
def _auto(device: str, shape: tuple[int, int, int]) -> tuple[torch.dtype, float | None]:
    if not bf16_is_fast(device):
        return torch.float32, None
    ratio = bf16_speedup(device, shape)
    return (torch.bfloat16 if ratio >= MIN_SPEEDUP else torch.float32), ratio


def resolve_precision(
    requested: str,
    device: str | torch.device = "cpu",
    note: bool = True,
    shape: tuple[int, int, int] | None = None,
) -> torch.dtype:
    """torch.bfloat16 or torch.float32 for a requested precision on `device`.

    "auto": bf16 where the hardware has it natively and the calibration at `shape` (rows, inner, cols
    of the run's big GEMM; default CALIBRATION_SHAPE) measured it >= MIN_SPEEDUP x fp32, else fp32.
    The choice and its ratio are printed once per process and shape (when `note`)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    dev = str(torch.device(device).type)
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    shape = tuple(int(x) for x in (shape or CALIBRATION_SHAPE))
    dtype, ratio = _auto(dev, shape)
    if note and (dev, shape) not in _announced:
        _announced.add((dev, shape))
        gemm = "x".join(map(str, shape))
        if ratio is None:
            print(f"precision auto on {dev}: fp32 (no native bf16: AMX/AVX512-BF16 or a bf16 GPU)")
        else:
            print(
                f"precision auto on {dev}: {'bf16' if dtype == torch.bfloat16 else 'fp32'} "
                f"(a {gemm} bf16 GEMM ran {ratio:.2f}x fp32 here; bf16 needs >= {MIN_SPEEDUP}x; "
                f"measured once, cached in {_cache_path()})"
            )
    return dtype


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """Matmuls in `dtype` (bf16) with fp32 elsewhere; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
