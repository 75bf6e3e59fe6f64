"""The planted-hierarchy benchmark: SAE architectures at matched width and L0, scored for absorption.

What: `run_hierarchy_benchmark(out_root, architectures, seeds, ...)` trains, per seed, one SAE of each
architecture on one `make_hierarchy_data` stream (helpers.training.train.train_saes: all of a
seed's SAEs step on the same batches), scores each on held-out rows with
helpers.analysis.absorption.hierarchy_scores, and adds a random baseline (an untrained twin, row
"random <arch>") per architecture. Architectures with k (topk, batchtopk, matryoshka_batchtopk) take
k; "relu" (ReLU + L1) has no k, so a few l1 values train together on the same stream and the one
whose L0 on training rows is closest to k is kept (its `setting` says which, with every candidate's
L0). `hierarchy_table(scores)` is the pandas view (per SAE, or averaged over seeds).
Why: absorption depends on the sparsity pressure, so architectures compare only at the same width
and L0; the defaults run in well under a minute on two CPU cores (a notebook's time budget).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from helpers.analysis.absorption import HierarchyScores, hierarchy_scores, random_decoder_baseline
from helpers.data.toy import TensorBatches, make_hierarchy_data
from helpers.sae import get_sae_class
from helpers.sae.metrics import l0 as l0_of
from helpers.training.config import TrainConfig
from helpers.training.train import train_saes

ARCHITECTURES = ("topk", "batchtopk", "relu", "matryoshka_batchtopk")
ARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "matryoshka_batchtopk": {"group_fractions": [0.125, 0.125, 0.25, 0.5]},
}
"""TrainConfig options per architecture (Matryoshka: nested prefixes of 1/8, 1/4, 1/2 and all latents)."""
L1_GRID = (4.0, 5.0, 6.0)
"""ReLU + L1 candidates: at the defaults (relu_lr 1e-2, 200k tokens) their L0 spans ~5.5 .. ~2.5."""
DATA_SEED = 100
"""Seed of the hierarchy: not an SAE seed, whose first randn rows would be the planted parents."""


def _configs(
    arch: str, seed: int, common: dict[str, Any], k: int, relu_lr: float, l1_grid: Sequence[float]
) -> list[TrainConfig]:
    if arch == "relu":
        return [
            TrainConfig(architecture="relu", options={"l1": l1}, seed=seed, **(common | {"lr": relu_lr}))
            for l1 in l1_grid
        ]
    opts = ARCH_OPTIONS.get(arch)
    return [TrainConfig(architecture=arch, k=k, options=opts, seed=seed, **common)]


def run_hierarchy_benchmark(
    out_root: str | Path,
    architectures: Sequence[str] = ARCHITECTURES,
    seeds: Sequence[int] = (0, 1),
    width: int = 128,
    k: int = 4,
    tokens: int = 200_000,
    batch_size: int = 512,
    lr: float = 3e-3,
    relu_lr: float = 1e-2,
    l1_grid: Sequence[float] = L1_GRID,
    data_kwargs: Mapping[str, Any] | None = None,
    n_train: int = 50_000,
    n_eval: int = 10_000,
    tau: float = 0.3,
    device: str = "cpu",
    threads: int | None = 1,
    progress: bool = True,
) -> list[HierarchyScores]:
    """Per seed, one SAE per architecture (width latents, L0 ~k) trained on the same hierarchy stream;
    returns their HierarchyScores on n_eval held-out rows, then one random baseline per architecture
    (an untrained twin of its first seed's SAE, architecture "random <arch>").

    Data: make_hierarchy_data(n_samples=n_train + n_eval, seed=DATA_SEED, **data_kwargs) (defaults:
    128 features in 48 dims, ~4.3 active); training cycles over the first n_train rows. SAE
    directories: out_root/<arch>-s<seed> (ReLU: out_root/relu-l1_<l1>-s<seed>). ReLU + L1: every
    l1 of l1_grid trains on the same stream and the one whose L0 on the last 10k training rows is
    closest to k is kept. torch runs on `threads` threads meanwhile (None: as set): these tiny steps
    ran 1.7x faster on one thread than on two shared cores. Measured at the defaults on 2 shared CPU
    cores, 1 thread (2 seeds x 4 architectures, 12 SAEs trained with the 3 l1 candidates): 12-14 s.
    """
    for arch in architectures:
        get_sae_class(arch)  # an unknown (or not yet registered) architecture fails before any training
    t0 = time.perf_counter()
    data = make_hierarchy_data(n_samples=n_train + n_eval, seed=DATA_SEED, **(data_kwargs or {}))
    train, held = data.rows(slice(0, n_train)), data.rows(slice(n_train, None))
    common = dict(
        d_in=data.X.shape[1],
        d_sae=width,
        lr=lr,
        batch_size=batch_size,
        total_tokens=tokens,
        warmup_steps=20,
        log_every=50,
        norm_estimate_tokens=4096,
        device=device,
    )
    scores: list[HierarchyScores] = []
    first_sae: dict[str, Any] = {}
    with _torch_threads(threads):
        for seed in seeds:
            per_arch = {a: _configs(a, seed, common, k, relu_lr, l1_grid) for a in architectures}
            cfgs = [c for a in architectures for c in per_arch[a]]
            dirs = [Path(out_root) / _dir_name(c, seed) for c in cfgs]
            saes = iter(
                train_saes(cfgs, TensorBatches(train.X, batch_size, seed=seed), dirs, progress=progress)
            )
            for arch in architectures:
                sae, setting = _pick(
                    per_arch[arch], [next(saes) for _ in per_arch[arch]], train.X[-10_000:], k
                )
                first_sae.setdefault(arch, sae)
                scores.append(hierarchy_scores(sae, held, tau, architecture=arch, seed=seed))
                scores[-1].setting = setting
                if progress:
                    print(_line(scores[-1]))
        for arch in architectures:
            scores.append(random_decoder_baseline(first_sae[arch], held, seed=seeds[0], tau=tau))
            scores[-1].setting = "untrained twin"
            if progress:
                print(_line(scores[-1]))
    if progress:
        print(
            f"hierarchy benchmark: {len(seeds)} seeds x {len(architectures)} architectures in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    return scores


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dir_name(cfg: TrainConfig, seed: int) -> str:
    if cfg.architecture == "relu":
        return f"relu-l1_{cfg.options.l1:g}-s{seed}"
    return f"{cfg.architecture}-s{seed}"


def _pick(cfgs: list[TrainConfig], saes: list[Any], rows: Tensor, k: int) -> tuple[Any, str]:
    """(the SAE to score, its setting): the only one, or of several l1 candidates the one whose L0 on
    `rows` is closest to k."""
    if len(saes) == 1:
        return saes[0], f"k={k}" if cfgs[0].sae_config().k else ""
    l0s = [float(l0_of(s.encode(rows))) for s in saes]
    best = min(range(len(l0s)), key=lambda i: abs(l0s[i] - k))
    cands = ", ".join(f"{c.options.l1:g}: {v:.2f}" for c, v in zip(cfgs, l0s))
    return saes[best], f"l1={cfgs[best].options.l1:g} (train L0 closest to k={k}; l1: L0 {cands})"


def _line(s: HierarchyScores) -> str:
    return (
        f"{s.architecture:>28} seed {s.seed}: L0 {s.l0:5.2f} FVU {s.fvu:.3f} MMCS parents "
        f"{s.parent_mmcs:.3f} children {s.child_mmcs:.3f} absorption {s.absorption:.3f} "
        f"parent miss {s.parent_miss:.3f} {s.setting}"
    )


def hierarchy_table(scores: Sequence[HierarchyScores], by_seed: bool = True) -> pd.DataFrame:
    """One row per SAE (index architecture, seed); by_seed=False: the mean over seeds per architecture
    (numbers only, with a column n_seeds)."""
    df = pd.DataFrame([asdict(s) for s in scores]).set_index(["architecture", "seed"])
    if by_seed:
        return df
    num = df.drop(columns="setting")
    out = num.groupby(level="architecture", sort=False).mean()
    out["n_seeds"] = num.groupby(level="architecture", sort=False).size()
    return out


def summary(scores: Sequence[HierarchyScores]) -> dict[str, dict]:
    """The fields of findings.ToyAbsorptionFindings: per trained architecture its absorption rate per seed,
    and the means over seeds of parent miss, child MMCS and L0; per untrained twin ("random <arch>") its
    absorption rate (mean over its rows)."""
    df = pd.DataFrame([asdict(s) for s in scores])
    twin = df.architecture.str.startswith("random ")
    trained = df[~twin].groupby("architecture", sort=False)
    rand = df[twin].assign(architecture=df[twin].architecture.str.removeprefix("random "))
    return {
        "absorption": {a: g["absorption"].astype(float).tolist() for a, g in trained},
        "random": {
            a: float(v) for a, v in rand.groupby("architecture", sort=False)["absorption"].mean().items()
        },
        "parent_miss": {a: float(v) for a, v in trained["parent_miss"].mean().items()},
        "child_mmcs": {a: float(v) for a, v in trained["child_mmcs"].mean().items()},
        "l0": {a: float(v) for a, v in trained["l0"].mean().items()},
    }
