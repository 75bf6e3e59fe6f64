"""Which floating-point precision the heavy matrix work runs in: bf16 where the hardware is fast at it.

What: `bf16_is_fast(device)` (True on CUDA GPUs with bf16 and on CPUs with AMX-BF16 or
AVX512-BF16), `resolve_precision(requested, device)` ("auto" | "bfloat16" | "float32" -> a torch
dtype, with a one-line note when "auto" falls back to fp32), and `autocast(precision, device)`,
a context that runs matmuls in bf16 with fp32 everywhere else (or does nothing for fp32).
Why: at SAE shapes a bf16 GEMM ran ~3.7x faster than fp32 on this lab's AMX CPU; where bf16 is
emulated it is slower than fp32, so "auto" only picks it where it is native. fp32 stays the
reference: master weights, optimizer state, reductions and stored activations never drop below it
(stores stay fp16/fp32 as configured).
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "bfloat16", "float32")


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


def resolve_precision(requested: str, device: str | torch.device = "cpu", note: bool = True) -> torch.dtype:
    """torch.bfloat16 or torch.float32 for a requested precision on `device`.

    "auto": bf16 where `bf16_is_fast`, else fp32 with a one-line note (when `note`)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    dev = str(torch.device(device).type)
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if bf16_is_fast(dev):
        return torch.bfloat16
    if note:
        print(f"note: {dev} has no native bf16 (AMX/AVX512-BF16 or a bf16 GPU); running in fp32")
    return torch.float32


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """Matmuls in `dtype` (bf16) with fp32 elsewhere; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
