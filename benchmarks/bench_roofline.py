"""How near each part of the main job runs to this CPU's own limit, measured in one run.

    python benchmarks/bench_roofline.py                    # the offline profile's shapes, 3 rounds
    python benchmarks/bench_roofline.py --store data/activations/offline/kjv   # trainer on that store
    python benchmarks/bench_roofline.py --quick

The limit of a step is its dense GEMMs: at the precision "auto" picks here (helpers.precision), the
measured rate of x @ W at the step's shape (best of several, interleaved with the steps) bounds it at
    tokens/s <= rate / (n_gemm * 2 * d_in * d_sae)
with n_gemm 1 for the sparse steps (TopK, BatchTopK, the BatchTopK crosscoder: everything after the
encoder GEMM touches k latents per token) and 5 for the fused ReLU+L1 step while its codes are dense
(encoder, decode, code gradient, encoder and decoder weight gradients). Each step is timed as the
trainer runs it (`TrainingRun.step`: forward, backward, projection, clip, Adam, renorm, counters,
log), rounds interleaved with the GEMM timings so load from elsewhere hits both alike, on real rows of
the store (scaled as the trainer scales them; the crosscoder's three layers where the store has them,
else the main layer three times): Gaussian rows hide what uneven real rows cost BatchTopK's selection.

Trainer end to end: `train_saes` over a real store (the one given, else a small store collected here
from the offline model, which also times collection) with several SAEs on one stream as the main job
trains them; two runs of different lengths, so the steady-state rate is the difference (the input
scale and b_dec estimate are a fixed cost), against the same SAEs' steps alone.

Collection: tokens/s of `collect` against forward FLOPs per token (2 x the parameters of the blocks
up to the deepest layer collected, plus attention's 4 x T/2 x d per block) at the GEMM rate of the
model's MLP shape in the collection's precision.

Prints one table with every ratio, and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from helpers.data.store import ActivationStore
from helpers.precision import cpuinfo_field, resolve_precision
from helpers.profiles import get_profile
from helpers.training import experiments
from helpers.training.config import TrainConfig
from helpers.training.train import TrainingRun, train_saes

STEPS = {  # name: (architecture, d_in multiple, k multiple, dense GEMMs per step, options)
    "TopK": ("topk", 1, 1, 1, {}),
    "BatchTopK": ("batchtopk", 1, 1, 1, {}),
    "ReLU+L1 (dense phase)": ("relu", 1, None, 5, {}),
    "BatchTopK crosscoder (3 layers)": ("batchtopk_crosscoder", 3, 3, 1, {}),
}


def machine() -> str:
    flags = cpuinfo_field("flags").split()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (
        f"{cpuinfo_field('model name')} (family {cpuinfo_field('cpu family')} model "
        f"{cpuinfo_field('model')}; {', '.join(isa)}), torch threads {torch.get_num_threads()}"
    )


def gemm_seconds(rows: int, inner: int, cols: int, dtype: torch.dtype, reps: int = 5) -> float:
    """Best time of one [rows, inner] @ [inner, cols] product in dtype (2 untimed first)."""
    a, w = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    for _ in range(2):
        a @ w
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ w
        ts.append(time.perf_counter() - t)
    return min(ts)


def step_run(name: str, d: int, m: int, k: int, batch: int) -> tuple[TrainingRun, int]:
    arch, mult, kmult, _, opts = STEPS[name]
    layers = tuple(range(mult)) if mult > 1 else ()
    cfg = TrainConfig(
        d_in=d * mult,
        d_sae=m,
        architecture=arch,
        k=None if kmult is None else k * kmult,
        layers=layers,
        options=opts,
        batch_size=batch,
        total_tokens=10**10,
        warmup_steps=1,
    )
    run = TrainingRun(cfg, Path(tempfile.mkdtemp(prefix="roofline_")), torch.device("cpu"))
    run.open_log(None)
    return run, d * mult


def time_steps(run: TrainingRun, x: torch.Tensor, n: int, start: int) -> float:
    ts = []
    for i in range(n):
        t = time.perf_counter()
        run.step(x, 1.0, start + i, 0)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def real_rows(store: ActivationStore, layers: list[int], batch: int) -> torch.Tensor:
    """One shuffled batch of real rows ([batch, len(layers) * d], position 0 left out), scaled to mean
    norm sqrt(width) as the trainer scales its input. Real rows matter: their norms vary from token to
    token, and BatchTopK's selection pays for uneven rows (random rows hide it)."""
    x = next(
        iter(store.batches(tuple(layers) if len(layers) > 1 else layers[0], batch, exclude_positions=[0]))
    )
    return x * (x.shape[1] ** 0.5 / x.norm(dim=1).mean())


def steps_table(
    d: int, m: int, k: int, batch: int, rounds: int, n: int, real: dict[int, torch.Tensor] | None = None
) -> list[dict]:
    """Each step against its GEMM bound. `real`: {d_in: a batch of real rows}; else Gaussian rows."""
    torch.manual_seed(0)
    runs = {name: step_run(name, d, m, k, batch) for name in STEPS}
    xs = {name: (real or {}).get(d_in, torch.randn(batch, d_in) * 3) for name, (_, d_in) in runs.items()}
    step_s: dict[str, list[float]] = {name: [] for name in STEPS}
    gemm_s: dict[str, list[float]] = {name: [] for name in STEPS}
    for name, (run, _) in runs.items():  # warm-up; ReLU stays in its dense phase (fresh codes ~50%)
        time_steps(run, xs[name], 2, 0)
    for r in range(rounds):
        for name, (run, d_in) in runs.items():
            dtype = run.state.matmul_dtype
            gemm_s[name].append(gemm_seconds(batch, d_in, m, dtype))
            step_s[name].append(time_steps(run, xs[name], n, 10 + r * n))
    rows = []
    for name, (run, d_in) in runs.items():
        n_gemm = STEPS[name][3]
        rate = 2 * batch * d_in * m / min(gemm_s[name])
        bound = rate / (n_gemm * 2 * d_in * m)
        tps = batch / statistics.median(step_s[name])
        dtype = str(run.state.matmul_dtype).removeprefix("torch.")
        rows.append(dict(part=name, precision=dtype, gflops=rate / 1e9, bound=bound, measured=tps))
    return rows


def store_for_trainer(profile, tokens: int, out: Path) -> tuple[ActivationStore, float]:
    """A small real store of the main corpus at the main layer, collected now, and the collection's
    tokens/s (the forward passes and shard writes; the corpus's tokenisation is timed apart and left out)."""
    from helpers.data.collect import collect, make_request, request_windows
    from helpers.model.models import load_model, spec_of

    model = load_model(profile.model)
    spec = spec_of(model)
    req = make_request(
        spec, profile.main_corpus, [profile.main_layer], tokens, profile.seq_len, precision="auto"
    )
    t = time.perf_counter()
    request_windows(model, spec, req)
    windows_s = time.perf_counter() - t
    t = time.perf_counter()
    store = collect(req, out, model=model, progress=False, spec=spec)
    return store, store.n_tokens / (time.perf_counter() - t - windows_s)


def collection_bound(profile, seq_len: int) -> tuple[float, str]:
    """Forward FLOP-bound tokens/s of the offline model up to the main layer, in collection's precision."""
    from helpers.model.models import hf_blocks, load_model, spec_of

    model = load_model(profile.model)
    spec = spec_of(model)
    blocks = hf_blocks(model._module, spec)[: profile.main_layer]
    params = sum(p.numel() for b in blocks for p in b.parameters())
    d = spec.d_model
    flops = 2 * params + len(blocks) * 4 * (seq_len / 2) * d
    d_ff = max(p.shape[0] for b in blocks for p in b.parameters() if p.ndim == 2)
    dtype = resolve_precision("auto", "cpu", note=False, shape=(4096, d, d_ff))
    rate = 2 * 4096 * d * d_ff / gemm_seconds(4096, d, d_ff, dtype)
    return rate / flops, str(dtype).removeprefix("torch.")


def trainer_table(
    store: ActivationStore, layer: int, d: int, m: int, k: int, batch: int, n_saes: int, n_steps: int
):
    """SAE-tokens/s of train_saes with n_saes TopK SAEs on one stream (steady state) vs their steps alone."""

    def train(steps: int) -> float:
        cfgs = [
            TrainConfig(
                d_in=d,
                d_sae=m,
                k=k,
                batch_size=batch,
                total_tokens=steps * batch,
                seed=s,
                warmup_steps=1,
                norm_estimate_tokens=4 * batch,  # the same fixed cost in both runs: the difference is steps
            )
            for s in range(n_saes)
        ]
        outs = [Path(tempfile.mkdtemp(prefix="roofline_train_")) for _ in cfgs]
        batches = store.batches(layer, batch, exclude_positions=[0], seed=0, epochs=None)
        t = time.perf_counter()
        train_saes(cfgs, batches, outs, progress=False)
        return time.perf_counter() - t

    short, long = train(max(2, n_steps // 4)), train(n_steps)
    steady = n_saes * (n_steps - max(2, n_steps // 4)) * batch / (long - short)
    run, _ = step_run("TopK", d, m, k, batch)
    x = torch.randn(batch, d) * 3
    time_steps(run, x, 2, 0)
    alone = batch / time_steps(run, x, 5, 10)
    return dict(part=f"trainer, {n_saes} TopK SAEs on one stream", measured=steady, bound=alone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="offline")
    ap.add_argument(
        "--store", type=Path, help="a store holding the profile's main layer (else one is collected)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round")
    ap.add_argument("--collect-tokens", type=int, default=65_536)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    prof = get_profile(a.profile)
    rounds, n = (1, 2) if a.quick else (a.rounds, a.steps)
    store, collect_tps = None, None
    tmp = Path(tempfile.mkdtemp(prefix="roofline_store_"))
    if a.store is not None:
        store = ActivationStore(a.store)
    else:
        store, collect_tps = store_for_trainer(prof, a.collect_tokens, tmp / "store")
    d = store.d_model
    m, k, batch = prof.expansion_factor * d, prof.k, prof.train_batch_size
    print(f"machine: {machine()}")
    print(f"shapes: d {d}, d_sae {m}, k {k}, batch {batch} (profile {prof.name})")
    have = set(store.layers)
    cc_layers = [lay for lay in experiments.crosscoder_layers(prof) if lay in have]
    cc_layers = cc_layers if len(cc_layers) == 3 else [prof.main_layer] * 3  # the main layer thrice
    real = {d: real_rows(store, [prof.main_layer], batch), 3 * d: real_rows(store, cc_layers, batch)}
    print(f"step inputs: real rows of layer {prof.main_layer}; the crosscoder's of layers {cc_layers}")
    rows = steps_table(d, m, k, batch, rounds, n, real)
    tr = trainer_table(store, prof.main_layer, d, m, k, batch, n_saes=4, n_steps=8 if a.quick else 24)
    print(
        f"\n{'part':44s} {'precision':>9s} {'GEMM GFLOP/s':>12s} {'bound tok/s':>12s} "
        f"{'measured':>10s} {'ratio':>6s}"
    )
    for r in rows:
        print(
            f"{r['part']:44s} {r['precision']:>9s} {r['gflops']:12.0f} {r['bound']:12,.0f} "
            f"{r['measured']:10,.0f} {r['measured'] / r['bound']:6.0%}"
        )
    print(
        f"{tr['part']:44s} {'':>9s} {'':>12s} {tr['bound']:12,.0f} {tr['measured']:10,.0f} "
        f"{tr['measured'] / tr['bound']:6.0%}   (bound: the same step alone; SAE-tokens/s)"
    )
    if collect_tps is not None:
        bound, dtype = collection_bound(prof, prof.seq_len)
        print(
            f"{'collection, main layer only':44s} {dtype:>9s} {'':>12s} {bound:12,.0f} {collect_tps:10,.0f} "
            f"{collect_tps / bound:6.0%}   ({store.n_tokens:,} tokens)"
        )
    print("\ntargets (issue: near this CPU's own limit): steps >= 70%, trainer >= 85%, collection >= 70%")


if __name__ == "__main__":
    main()
