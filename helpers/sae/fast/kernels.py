"""C kernels of the sparse training step (kernels.c), compiled on first use, each with a torch fallback.

What: `topk(pre, k, sorted)` (every row's k largest entries, fp32 or bf16: the same set as
torch.topk up to which entry of a tie is taken), `decode_sddmm` (x_hat - x, the codes' gradient,
sum ||e||^2 and the b_dec gradient in one pass per token), `sddmm` (<A[row], W[col]> with W fp32 or
bf16), `latent_order` (a counting sort by latent), `gather_sorted` (the gradient sums' inputs in
that order), `project_out_rows_` (the unit-norm decoder's gradient projection) and
`normalize_rows_` (unit-norm rows plus their bf16 copy). Each returns None/False where it does not
apply (not a contiguous CPU tensor, an unsupported dtype, no compiler); callers then run the torch
code they ran before (tests run the step both ways against the dense autograd reference).
CUDA (any non-CPU tensor): every wrapper declines before the library is built, so a GPU run never
compiles them; helpers.sae.fast.ops then runs its device-generic branch (tests/test_gpu_path.py).
Why: once the encoder GEMM ran in bf16, torch.topk (~4 ns per value ranked), the embedding-bag
decode plus sampled_addmm (fp32-only on CPU), a radix sort and a dozen elementwise passes were most
of a TopK step at d_in 576, d_sae 4608, batch 4096, and they capped what bf16 could gain
(benchmarks/bench_bf16.py: 2.07x before, 2.6-2.8x after).
fp32 runs the same kernels, so bf16/fp32 compares precisions, not code paths.
How: `gcc -O3 -march=native -fopenmp -shared` into a cache keyed by the source, the flags and the
CPU's feature flags (SAE_LAB_KERNEL_CACHE, default ~/.cache/sae-lab/kernels), built once per
machine in < 1 s and loaded with ctypes (no torch headers, no ninja). SAE_LAB_KERNELS=0 turns them
off; a failed build prints one line and training goes on in torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-fno-math-errno"]
if platform.machine().lower() in ("x86_64", "amd64"):
    FLAGS.append("-mprefer-vector-width=512")  # gcc's default of 256 left topk and sddmm ~20% slower here
_DTYPES = {torch.float32: 4, torch.bfloat16: 2}


def enabled() -> bool:
    return os.environ.get("SAE_LAB_KERNELS", "1") != "0"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    return Path(os.environ.get("SAE_LAB_KERNEL_CACHE", Path.home() / ".cache" / "sae-lab" / "kernels"))


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None (with a one-line note) if that fails."""
    if not enabled():
        return None
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        print(f"note: no C compiler ({cc}) found; the training step runs torch's topk/sampled_addmm instead")
        return None
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), cc, *FLAGS, _cpu_flags(), platform.machine()]).encode()
    )
    path = _cache_dir() / f"sae_kernels_{key.hexdigest()[:16]}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # atomic: parallel builders race safely
                out = Path(tmp) / path.name
                subprocess.run(
                    [cc, *FLAGS, str(SOURCE), "-o", str(out)], check=True, capture_output=True, text=True
                )
                os.replace(out, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(
            f"note: building {SOURCE.name} failed "
            f"({detail.strip().splitlines()[-1] if detail.strip() else e}); "
            "the training step runs torch's topk/sampled_addmm instead"
        )
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.topk_rows.argtypes = [ptr, i64, i64, i64, i64, cint, cint, ptr, ptr, cint]
    lib.sddmm_rows.argtypes = [ptr, ptr, cint, ptr, ptr, i64, i64, ptr, cint]
    lib.project_out_rows.argtypes = [ptr, ptr, i64, i64, cint]
    lib.decode_sddmm.argtypes = [
        ptr,
        ptr,
        ptr,
        ptr,
        cint,
        ptr,
        ptr,
        i64,
        i64,
        ctypes.c_float,
        ptr,
        ptr,
        ptr,
        ptr,
        cint,
    ]
    lib.latent_order.argtypes = [ptr, i64, i64, ptr, ptr]
    lib.normalize_rows.argtypes = [ptr, ptr, i64, i64, cint]
    lib.gather_sorted.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, ptr, cint, ptr, ptr, ptr, ptr, ptr]
    for f in (
        lib.topk_rows,
        lib.sddmm_rows,
        lib.project_out_rows,
        lib.decode_sddmm,
        lib.latent_order,
        lib.normalize_rows,
        lib.gather_sorted,
    ):
        f.restype = cint
    return lib


def _plain(*ts: Tensor) -> bool:
    """CPU and contiguous (the kernels read raw row-major memory; they are not differentiable). Checked
    before `library()` in every wrapper: CUDA tensors are declined without building anything."""
    return all(t.device.type == "cpu" and t.is_contiguous() for t in ts)


def n_groups(m: int, k: int) -> int:
    """Groups G of the top-k pass: 128 (G 96-256 ran within 10% of each other at m 4608, k 32;
    fewer groups leave more candidates, more make the bound's 16 counting passes longer), at least
    k, at most m."""
    return max(k, min(m, 128))


def topk(pre: Tensor, k: int, sorted: bool = False) -> tuple[Tensor, Tensor] | None:
    """(values [B, k] in pre's dtype, indices [B, k] int64) of every row's k largest entries, or None."""
    if pre.dim() != 2 or pre.dtype not in _DTYPES or not _plain(pre) or not 1 <= k <= pre.shape[1]:
        return None
    lib = library()
    if lib is None:
        return None
    B, m = pre.shape
    vals = torch.empty(B, k, dtype=pre.dtype)
    idx = torch.empty(B, k, dtype=torch.int64)
    rc = lib.topk_rows(
        pre.data_ptr(),
        B,
        m,
        k,
        n_groups(m, k),
        _DTYPES[pre.dtype],
        int(sorted),
        vals.data_ptr(),
        idx.data_ptr(),
        torch.get_num_threads(),
    )
    if rc:
        raise MemoryError("topk_rows could not allocate its row buffers")
    return vals, idx


def sddmm(crow: Tensor, cols: Tensor, A: Tensor, W: Tensor) -> Tensor | None:
    """[nnz] fp32 values <A[row], W[col]> (A [B, d] fp32, W [m, d] fp32 or bf16), or None."""
    if (
        A.dtype != torch.float32
        or W.dtype not in _DTYPES
        or crow.dtype != torch.int64
        or cols.dtype != torch.int64
        or not _plain(crow, cols, A, W)
        or A.shape[1] != W.shape[1]
    ):
        return None
    lib = library()
    if lib is None:
        return None
    out = torch.empty(len(cols), dtype=torch.float32)
    lib.sddmm_rows(
        A.data_ptr(),
        W.data_ptr(),
        _DTYPES[W.dtype],
        crow.data_ptr(),
        cols.data_ptr(),
        A.shape[0],
        A.shape[1],
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def project_out_rows_(g: Tensor, W: Tensor) -> bool:
    """g[r] -= <g[r], W[r]> W[r] in place (fp32 [m, d]); False (g untouched) where it does not apply."""
    if (
        g.dtype != torch.float32
        or W.dtype != torch.float32
        or g.shape != W.shape
        or g.dim() != 2
        or not _plain(g, W)
    ):
        return False
    lib = library()
    if lib is None:
        return False
    lib.project_out_rows(g.data_ptr(), W.data_ptr(), g.shape[0], g.shape[1], torch.get_num_threads())
    return True


def decode_sddmm(
    crow: Tensor,
    cols: Tensor,
    acts: Tensor,
    W: Tensor,
    bias: Tensor | None,
    x: Tensor,
    scale: float,
    g_out: Tensor,
) -> tuple[Tensor, float, Tensor] | None:
    """The decoder forward and the gradients of L = (scale/2) sum ||x_hat - x||^2 in one pass: writes
    g = scale (x_hat - x) into g_out [B, d] and returns (gv [nnz] = <g[row], W[col]> where acts > 0,
    else 0; sum ||x_hat - x||^2; sum_r g[r] [d]), or None (g_out untouched) where it does not apply."""
    f32 = torch.float32
    if (
        crow.dtype != torch.int64
        or cols.dtype != torch.int64
        or acts.dtype != f32
        or x.dtype != f32
        or g_out.dtype != f32
        or W.dtype not in _DTYPES
        or g_out.shape != x.shape
        or W.shape[1] != x.shape[1]
        or (bias is not None and (bias.dtype != f32 or bias.shape != (x.shape[1],)))
        or not _plain(crow, cols, acts, W, x, g_out, *([] if bias is None else [bias]))
    ):
        return None
    lib = library()
    if lib is None:
        return None
    gv, sq, gsum = torch.empty(len(cols), dtype=f32), ctypes.c_double(), torch.empty(x.shape[1], dtype=f32)
    rc = lib.decode_sddmm(
        crow.data_ptr(),
        cols.data_ptr(),
        acts.data_ptr(),
        W.data_ptr(),
        _DTYPES[W.dtype],
        None if bias is None else bias.data_ptr(),
        x.data_ptr(),
        x.shape[0],
        x.shape[1],
        scale,
        g_out.data_ptr(),
        gv.data_ptr(),
        ctypes.byref(sq),
        gsum.data_ptr(),
        torch.get_num_threads(),
    )
    if rc:
        raise MemoryError("decode_sddmm could not allocate its row buffers")
    return gv, sq.value, gsum


def latent_order(cols: Tensor, m: int) -> tuple[Tensor, Tensor] | None:
    """(order [nnz] int64, offsets [m+1] int32): a stable counting sort of entries by latent, or None."""
    if cols.dtype != torch.int64 or cols.dim() != 1 or not _plain(cols) or len(cols) >= 2**31:
        return None
    lib = library()
    if lib is None:
        return None
    order = torch.empty(len(cols), dtype=torch.int64)
    offsets = torch.empty(m + 1, dtype=torch.int32)
    rc = lib.latent_order(cols.data_ptr(), len(cols), m, order.data_ptr(), offsets.data_ptr())
    if rc:
        raise ValueError(f"a latent id is outside [0, {m})" if rc == 1 else "latent_order could not allocate")
    return order, offsets


def normalize_rows_(W: Tensor, lp: Tensor | None = None) -> bool:
    """W[r] /= ||W[r]|| in place for rows of norm > 0 (fp32 [m, d]) and, if given, lp = W in bf16, in
    one pass; False (nothing written) where it does not apply."""
    if (
        W.dtype != torch.float32
        or W.dim() != 2
        or not _plain(W)
        or (lp is not None and (lp.dtype != torch.bfloat16 or lp.shape != W.shape or not _plain(lp)))
    ):
        return False
    lib = library()
    if lib is None:
        return False
    lib.normalize_rows(
        W.data_ptr(), None if lp is None else lp.data_ptr(), W.shape[0], W.shape[1], torch.get_num_threads()
    )
    return True


def gather_sorted(
    order: Tensor,
    offsets: Tensor,
    rows_d: Tensor,
    rows_e: Tensor,
    w_d: Tensor,
    w_e: Tensor,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
    """(rows_d[order], rows_e[order], w_d[order], w_e[order] (weights in `dtype`), per-latent sums of
    w_e [m] fp32) in one pass, for `latent_order`'s order and offsets; or None."""
    i32, f32 = torch.int32, torch.float32
    n, m = len(order), len(offsets) - 1
    if (
        order.dtype != torch.int64
        or offsets.dtype != i32
        or rows_d.dtype != i32
        or rows_e.dtype != i32
        or w_d.dtype != f32
        or w_e.dtype != f32
        or dtype not in _DTYPES
        or not n == len(rows_d) == len(rows_e) == len(w_d) == len(w_e)
        or not _plain(order, offsets, rows_d, rows_e, w_d, w_e)
    ):
        return None
    lib = library()
    if lib is None:
        return None
    out = (
        torch.empty(n, dtype=i32),
        torch.empty(n, dtype=i32),
        torch.empty(n, dtype=dtype),
        torch.empty(n, dtype=dtype),
        torch.empty(m, dtype=f32),
    )
    lib.gather_sorted(
        order.data_ptr(),
        offsets.data_ptr(),
        m,
        rows_d.data_ptr(),
        rows_e.data_ptr(),
        w_d.data_ptr(),
        w_e.data_ptr(),
        _DTYPES[dtype],
        *[t.data_ptr() for t in out],
    )
    return out
