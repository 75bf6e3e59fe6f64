"""GPU training speed of our trainer against SAELens and eai-sparsify, on CUDA, timed in one process.

What: tokens/s of one full training step at d_in 768, d_sae 24,576, k 32, batch 4096 (--batch), for
TopK (AuxK silent, as in a fresh run), TopK with AuxK forced on with every latent dead (k_aux =
d_in / 2 = 384, every library's worst case) and BatchTopK (ours and SAELens; sparsify has none).
Ours: `TrainingRun.step` plus what `train_saes` runs around it per batch (finiteness check, batch
variance); the step's ops are helpers.sae.fast.ops's device-generic branch (no C kernels on CUDA),
precision "auto" (bf16 GEMMs where measured faster). SAELens 6.x: `training_forward_pass` plus the
body of `SAETrainer._train_step` (fp32, its default; "SL amp" adds its bf16 autocast option).
sparsify 1.3: `SparseCoder.forward` (its own bf16 autocast; its Triton decoder where Triton is
installed) plus the body of `Trainer.fit` (decoder projection, Adam, renorm, dead-latent counts).
Data: synthetic activations generated on the GPU, since the real model and stores cannot travel
to a lent device: sparse non-negative combinations of 32,768 random unit directions drawn with
power-law frequencies, plus a mean offset and noise; a pool of batches reused by every library.
Libraries take turns config by config in several rounds (medians over rounds).
Peers are imported by the python that runs this script; one that does not import is skipped with
a line naming what is missing (benchmarks/bench_gpu.sh says how to bring their wheels to a device
without internet). --ops times the device-generic primitives on both sides of ops.DENSE_ABOVE (and
torch.topk against the grouped top-k) at these shapes; --profile prints a CUDA profile of our step.

    benchmarks/bench_gpu.sh                       # the wrapper: threads, python, peers' wheels, a log
    python benchmarks/bench_gpu.py --quick        # 2 rounds x 5 steps
    python benchmarks/bench_gpu.py --ops          # the primitives only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's helpers, not an installed copy

D, M, K = 768, 24_576, 32
DEV = "cuda"  # --smoke: "cpu", with toy shapes and ops.GENERIC (checks this script's code paths only)
CONFIGS = ["topk", "topk_auxk", "batchtopk"]
LIBS = ["ours", "saelens", "saelens_amp", "sparsify"]
HEAD = {"ours": "ours", "saelens": "SAELens", "saelens_amp": "SL amp", "sparsify": "sparsify"}
Step = Callable[[torch.Tensor], None]


# ---------------------------------------------------------------------------- data
@torch.no_grad()
def synthetic_pool(n_batches: int, B: int, seed: int = 0, n_feat: int = 32_768, k_true: int = 24):
    """[n_batches] activation batches [B, D] on the GPU (see the module docstring)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    dirs = F.normalize(torch.randn(n_feat, D, device=DEV, generator=g), dim=1)
    probs = torch.arange(1, n_feat + 1, device=DEV, dtype=torch.float32).pow(-0.7)
    mean = torch.randn(D, device=DEV, generator=g) * 0.5
    pool = []
    for _ in range(n_batches):
        idx = torch.multinomial(probs, B * k_true, replacement=True, generator=g).view(B, k_true)
        mag = -torch.rand(B, k_true, device=DEV, generator=g).clamp_min(1e-6).log()  # Exp(1)
        x = F.embedding_bag(idx, dirs, per_sample_weights=mag, mode="sum")
        pool.append((x + mean + 0.05 * torch.randn(B, D, device=DEV, generator=g)).contiguous())
    return pool


# ---------------------------------------------------------------------------- the libraries
def make_ours(config: str, B: int, pool: list, precision: str, log_every: int) -> Step:
    from helpers.training.config import TrainConfig
    from helpers.training.train import TrainingRun

    arch = config.split("_")[0]
    cfg = TrainConfig(
        d_in=D, d_sae=M, k=K, architecture=arch, batch_size=B, total_tokens=10**12, warmup_steps=1,
        device=DEV, precision=precision, log_every=log_every,
    )  # fmt: skip
    run = TrainingRun(cfg, Path(tempfile.mkdtemp(prefix="bench_gpu_")), torch.device(DEV))
    run.open_log(None)
    run.scale = float(math.sqrt(D) / pool[0].norm(dim=1).mean())  # what train_saes estimates first
    counter = itertools.count(1000)

    def step(x: torch.Tensor) -> None:
        if config.endswith("auxk"):  # every latent dead: AuxK with k_aux = d_in / 2 on every token
            run.since_fired.fill_(10**12)
        if not bool(torch.isfinite(x).all()):  # train_saes's per-batch checks, as it runs them
            raise RuntimeError("non-finite batch")
        var_raw = float((x - x.mean(0)).pow(2).sum(1).mean())
        i = next(counter)
        run.step(x, var_raw, i, i * B)

    return step


def make_saelens(config: str, B: int, amp: bool) -> Step:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    kw = dict(d_in=D, d_sae=M, k=K, aux_loss_coefficient=1 / 32, device=DEV)
    if config.startswith("batchtopk"):
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**kw))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**kw))
    sae.to(DEV)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    coefs = {
        k: (v.value if isinstance(v, TrainCoefficientConfig) else v)
        for k, v in sae.get_coefficients().items()
    }
    since = torch.zeros(M, device=DEV)
    dead = torch.full((M,), config.endswith("auxk"), dtype=torch.bool, device=DEV)
    names = {f.name for f in dataclasses.fields(TrainStepInput)}
    autocast = torch.autocast(DEV, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    counter = itertools.count(1000)

    def step(x: torch.Tensor) -> None:  # the body of sae_lens.training.sae_trainer.SAETrainer._train_step
        sae.train()
        i = next(counter)
        inp = dict(
            sae_in=x, dead_neuron_mask=dead, coefficients=coefs, n_training_steps=i, is_logging_step=False
        )
        with autocast:
            o = sae.training_forward_pass(
                step_input=TrainStepInput(**{k: v for k, v in inp.items() if k in names})
            )
            with torch.no_grad():
                firing = o.feature_acts.bool().float()
                did_fire = firing.sum(-2).bool()
                if did_fire.is_sparse:
                    did_fire = did_fire.to_dense()
                since.add_(1)
                since[did_fire] = 0
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def make_sparsify(config: str, B: int) -> Step | None:
    if config.startswith("batchtopk"):
        return None  # sparsify 1.3 trains TopK (and groupmax) coders only
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D, SparseCoderConfig(num_latents=M, k=K), device=DEV, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (M / 2**14) ** 0.5)  # its "adam" choice and lr rule
    auxk = config.endswith("auxk")
    since = torch.zeros(M, dtype=torch.long, device=DEV)
    did_fire = torch.zeros(M, dtype=torch.bool, device=DEV)

    def step(x: torch.Tensor) -> None:  # the body of sparsify.trainer.Trainer.fit for one batch (fvu loss)
        sae.set_decoder_norm_to_unit_norm()
        if auxk:
            since.fill_(10**12)  # every latent dead, as for the others
        dead_mask = (since > 10_000_000) if auxk else None  # its dead_feature_threshold default
        out = sae(x, dead_mask=dead_mask, total_variance=(x - x.mean(0)).pow(2).sum())
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # its per-step running mean of the loss (a host sync, as in fit)
        loss = out.fvu + (1 / 32 if auxk else 0.0) * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since.add_(x.shape[0])
            since[did_fire] = 0
            did_fire.zero_()

    return step


def build(lib: str, config: str, B: int, pool: list, args) -> Step | None:
    if lib == "ours":
        return make_ours(config, B, pool, args.precision, args.log_every)
    if lib.startswith("saelens"):
        return make_saelens(config, B, amp=lib == "saelens_amp")
    return make_sparsify(config, B)


def peer_available(name: str) -> str | None:
    """None if the peer imports, else the reason (one line)."""
    module = {"saelens": "sae_lens.saes.topk_sae", "sparsify": "sparsify"}[name]
    try:
        __import__(module)
    except Exception as e:  # noqa: BLE001 (a version clash can raise anything at import)
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


# ---------------------------------------------------------------------------- timing
def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Step, pool: list, n: int, start: int = 0) -> float:
    sync()
    t = time.perf_counter()
    for i in range(n):
        step(pool[(start + i) % len(pool)])
    sync()
    return (time.perf_counter() - t) / n


def cuda_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """Median milliseconds of fn on the GPU (CUDA events) after 3 warm-up calls."""
    for _ in range(3):
        fn()
    if DEV != "cuda":
        return 1e3 * min(seconds_per_step(lambda _: fn(), [None], 1) for _ in range(3))
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def gemm_tflops(B: int) -> float:
    a = torch.randn(B, D, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(D, M, device=DEV, dtype=torch.bfloat16)
    return 2 * B * D * M / cuda_ms(lambda: a @ w) / 1e9


def ops_bench(B: int, k_aux: int) -> None:
    """The device-generic primitives at the benchmark's shapes, gathers vs dense, in bf16."""
    from helpers.sae.fast import ops

    lp, g = torch.bfloat16, torch.Generator(device=DEV).manual_seed(0)
    pre = torch.randn(B, M, device=DEV, generator=g).to(lp)
    W = F.normalize(torch.randn(M, D, device=DEV, generator=g), dim=1).to(lp)
    A = torch.randn(B, D, device=DEV, generator=g)
    s = ops._group_size(M, K)
    print(f"\nprimitives at B {B}, d {D}, m {M}, bf16 (median ms, CUDA events)")
    print(f"  top-{K}: torch.topk {cuda_ms(lambda: torch.topk(pre, K, dim=1, sorted=False)):.3f}", end="")
    if s is not None:
        print(f", grouped (s {s}) {cuda_ms(lambda: ops._grouped_topk(pre, K, s, False)):.3f}", end="")
    print(f", top-{k_aux} {cuda_ms(lambda: torch.topk(pre, k_aux, dim=1, sorted=False)):.3f}")
    # encoder_preacts rides b_enc in the GEMM as row d of the weight: K = d + 1 = 769 leaves the bf16
    # rows 1,538 bytes long, off the 16-byte alignment cuBLAS's fastest kernels want
    x1, w1 = torch.randn(B, D + 1, device=DEV).to(lp), torch.randn(D + 1, M, device=DEV).to(lp)
    x8, w8 = torch.randn(B, D + 8, device=DEV).to(lp), torch.randn(D + 8, M, device=DEV).to(lp)
    bias = torch.randn(M, device=DEV).to(lp)
    print(
        f"  encoder GEMM: K {D + 1} (bias row) {cuda_ms(lambda: x1 @ w1):.3f}, K {D} addmm "
        f"{cuda_ms(lambda: torch.addmm(bias, x1[:, :D], w1[:D])):.3f}, K {D + 8} (padded) "
        f"{cuda_ms(lambda: x8 @ w8):.3f}"
    )
    saved = ops.DENSE_ABOVE
    print(f"  {'k':>5} {'density':>8} {'side':>8} {'decode':>8} {'sddmm':>8} {'bag_sum':>8}")
    try:
        for kk in (K, k_aux):
            _time_primitives(ops.topk_selection(pre, kk), kk, W, A)
    finally:
        ops.DENSE_ABOVE = saved
    print(f"  ops.DENSE_ABOVE = {saved:.2%}: selections denser than this take the dense side")


def _time_primitives(sel, k: int, W: torch.Tensor, A: torch.Tensor) -> None:
    """One row per side of DENSE_ABOVE: decode, sampled product and one gradient sum of `sel`."""
    from helpers.sae.fast import ops

    lp = W.dtype
    acts = sel.vals.float().clamp_min(0)
    order, offsets = ops.latent_major(sel.cols, M)
    rows, w, table = ops.entry_rows(sel)[order], acts.to(lp)[order], A.to(lp)
    for side, thr in (("gathers", 1.0), ("dense", 0.0)):
        ops.DENSE_ABOVE = thr
        t = [
            cuda_ms(lambda: ops.sparse_decode(sel, acts.to(lp), W)),
            cuda_ms(lambda: ops.sddmm(sel.crow, sel.cols, A, W, k)),
            cuda_ms(lambda: ops.bag_sum(rows, w, offsets, table)),
        ]
        print(f"  {k:>5} {k / M:>8.2%} {side:>8}" + "".join(f"{v:>8.3f}" for v in t))


def profile(config: str, pool: list, args) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    step = make_ours(config, args.batch, pool, args.precision, args.log_every)
    seconds_per_step(step, pool, 3)
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        seconds_per_step(step, pool, 5)
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=30))


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4096, help="tokens per step (default 4096)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated of {CONFIGS}")
    ap.add_argument("--peers", default="saelens,sparsify", help="comma-separated; '' for ours only")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 5 timed steps")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default 10, quick 5)")
    ap.add_argument("--precision", default="auto", help="ours: auto | bfloat16 | float32")
    ap.add_argument(
        "--log-every", type=int, default=1, help="ours: log row every N steps (trainer default 1)"
    )
    ap.add_argument("--ops", action="store_true", help="time the device-generic primitives and exit")
    ap.add_argument("--profile", choices=CONFIGS, help="print a CUDA profile of our step and exit")
    ap.add_argument(
        "--smoke", action="store_true", help="check the code paths on CPU at toy shapes (no timing)"
    )
    args = ap.parse_args()
    if args.smoke:
        smoke()
    elif not torch.cuda.is_available():
        print(
            f"bench_gpu: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False);"
            " run it on a GPU machine (benchmarks/bench_gpu.sh). CPU speed: benchmarks/bench_train.py",
            file=sys.stderr,
        )
        return 2
    if args.smoke:
        args.batch, args.steps, args.rounds, args.precision = 256, 2, 1, "float32"
    B = args.batch
    n, rounds = args.steps or (5 if args.quick else 10), args.rounds or (2 if args.quick else 3)
    configs = [c for c in args.configs.split(",") if c]
    if bad := set(configs) - set(CONFIGS):
        ap.error(f"unknown configs {sorted(bad)}; valid: {CONFIGS}")
    print(
        f"{torch.cuda.get_device_name() if DEV == 'cuda' else 'CPU smoke run'} | torch {torch.__version__}"
        f" | triton {'yes' if _imports('triton') else 'no'} | B {B}, d {D}, m {M}, k {K}",
        flush=True,
    )
    if args.ops:
        ops_bench(B, D // 2)
        return 0
    pool = synthetic_pool(8, B)
    if args.profile:
        profile(args.profile, pool, args)
        return 0
    libs = ["ours"]
    for peer in [p for p in args.peers.split(",") if p]:
        why = peer_available(peer)
        if why is not None:
            print(
                f"[skip] {peer}: not importable by {sys.executable} ({why}); "
                "see benchmarks/bench_gpu.sh for bringing its wheels"
            )
            continue
        libs += ["saelens", "saelens_amp"] if peer == "saelens" else [peer]
    steps: dict[tuple[str, str], Step | None] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for c in configs:
            for lib in libs:
                if (lib, c) not in steps:
                    steps[lib, c] = build(lib, c, B, pool, args)
                    if steps[lib, c] is not None:
                        seconds_per_step(steps[lib, c], pool, 3)  # warm-up: kernels, cuBLAS, Triton JIT
                if steps[lib, c] is not None:
                    times.setdefault((lib, c), []).append(seconds_per_step(steps[lib, c], pool, n, r * n))
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{c} {B / times['ours', c][-1]:,.0f}" for c in configs)
            + " tok/s (ours)",
            flush=True,
        )
    tf = gemm_tflops(B)
    print(
        f"\nbf16 GEMM [{B}x{D}]@[{D}x{M}]: {tf:.0f} TFLOP/s -> dense SAE step bound (6 GEMMs) "
        f"{tf * 1e12 / (6 * 2 * D * M):,.0f} tok/s"
    )
    tps = lambda c, lib: B / statistics.median(times[lib, c]) if (lib, c) in times else None  # noqa: E731
    peers = [lib for lib in libs if lib != "ours"]
    head = [HEAD[lib] for lib in libs] + [f"/{HEAD[p]}" for p in peers] + (["/best"] if peers else [])
    print("\n" + f"{'config':<12}" + "".join(f"{h:>12}" for h in head) + "   (tokens/s; /X = ours / X)")
    for c in configs:
        vals = [tps(c, lib) for lib in libs]
        ours = vals[0]
        ratios = [ours / v if v else None for v in vals[1:]]
        got = [v for v in vals[1:] if v]
        if peers:
            ratios.append(ours / max(got) if got else None)
        cells = [f"{v:>12,.0f}" if v else f"{'-':>12}" for v in vals]
        cells += [f"{x:>12.2f}" if x else f"{'-':>12}" for x in ratios]
        print(f"{c:<12}" + "".join(cells))
    print(
        "\nours: TrainingRun.step + train_saes's per-batch checks, precision "
        f"{args.precision}, log every {args.log_every} step(s); SAELens fp32 (its default), SL amp = its bf16"
        " autocast; sparsify: its bf16 autocast forward. Medians over rounds; - = not run (not importable,"
        " or no such architecture)."
    )
    if DEV == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


def smoke() -> None:
    """--smoke: toy shapes on CPU through the device-generic ops, so the script's paths (ours, the peers'
    steps, --ops) can be checked on a machine without a GPU; its numbers mean nothing."""
    global DEV, D, M, K
    from helpers.sae.fast import ops

    DEV, D, M, K = "cpu", 64, 512, 8
    ops.GENERIC = True
    torch.set_num_threads(1)


def _imports(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
