"""Distributed SAE training under torchrun: data parallel (one large SAE) and SAE parallel (a plan).

    torchrun --standalone --nproc_per_node 2 -m helpers.training.train_dist --mode ddp \
        --store data/activations/tiny/synthetic-a --layer 2 --plan plan.json
    plan.json: [{"out_dir": "data/saes/a", "d_in": 64, "d_sae": 256, "k": 8, ...}, ...]
               (each object: an out_dir plus TrainConfig fields)

Both modes reuse `helpers.training.train.train_saes` unchanged: every rank iterates the SAME stream of
global batches (so the norm scale, b_dec init and eval batches are the single-process ones).

- `ddp` (data parallel): every rank holds every SAE of the plan; each global batch of B rows is
  cut into `world` equal slices, rank r runs the training step on slice r, and after backward
  (before the decoder projection and gradient clipping) the gradients are averaged over ranks
  with one all-reduce, as are the fired-latent counts (summed: dead-latent counters stay global),
  the logged loss terms and any buffers (BatchTopK's threshold). The trainer's custom sparse step
  attaches analytic gradients through an autograd Function, so this explicit all-reduce replaces
  DDP's bucket hooks. Rank 0 writes the SAE directories; other ranks train into a scratch
  directory (removed at the end) and on resume start from copies of rank 0's checkpoints.
  Exact (same weights as one process with the same global batch and seed, to float rounding):
  every loss that is a mean of per-token terms. Each architecture says which it is in its class
  attribute `data_parallel` (`exact_under_ddp()` lists them): AuxK is not exact once latents die
  (its normaliser is the residual's variance over the rank's slice, not the batch), nor is a
  batch-level top B*k selection (per slice; its threshold follows the slice minimum, and ranks
  average the threshold so they stay in step). Gradient clipping is exact: it sees the averaged
  gradient.
- `sae` (SAE parallel, sparsify's `--distribute_modules` idea): the plan's SAEs are dealt
  round-robin to ranks (SAE i on rank i % world); each rank trains its own SAEs on the full
  stream with no communication, writing their directories as one process would. Identical to
  training the plan in one process.

Gloo on CPU, NCCL with CUDA (one GPU per rank, see helpers.distributed). One node: ranks share
the filesystem.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from helpers.cli import run_cli
from helpers.data.store import ActivationStore
from helpers.distributed import Dist, all_reduce_mean_, all_reduce_sum_, barrier, destroy, init_dist
from helpers.sae import REGISTRY, SAE, SAEError, load_sae
from helpers.sae.step_types import StepState
from helpers.training.config import TrainConfig
from helpers.training.run_dir import SUMMARY_NAME
from helpers.training.train import TrainingRun, train_saes


def exact_under_ddp() -> dict[str, str]:
    """{architecture: whether its data-parallel step equals the one-process step} (SAE.data_parallel)."""
    return {arch: cls.data_parallel for arch, cls in REGISTRY.items()}


class DDPRun(TrainingRun):
    """One SAE's state on one rank: steps on its slice of the global batch, all-reduces after backward."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device, dist: Dist):
        super().__init__(cfg, out_dir, device)
        self.dist = dist
        full_forward = self.sae.train_forward

        def slice_forward(x: Tensor, state: StepState):  # x [B, d] -> this rank's [B/world, d]
            n = x.shape[0] // dist.world
            return full_forward(x[dist.rank * n : (dist.rank + 1) * n], state)

        self.sae.train_forward = slice_forward  # the instance attribute shadows the method

    def after_backward(self, out) -> None:
        grads = [p.grad for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
        for dtype in {g.dtype for g in grads}:
            all_reduce_mean_([g for g in grads if g.dtype == dtype], self.dist)
        all_reduce_sum_(out.fired, self.dist)  # latents that fired anywhere in the global batch
        logged = [out.loss.detach(), out.mse, out.sparsity, out.aux]
        all_reduce_mean_(logged, self.dist)  # per-token means: the global batch's values
        for b in self.sae.buffers():
            if b.is_floating_point():
                all_reduce_mean_([b], self.dist)


def scratch_dir(out_dirs: list[Path], rank: int) -> Path:
    """Where rank `rank` > 0 of a DDP run over `out_dirs` keeps its throwaway copies (the same path on
    re-runs)."""
    key = hashlib.sha1("\n".join(str(p.resolve()) for p in out_dirs).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sae-lab-ddp-{key}-rank{rank}"


def _finished(out_dirs: list[Path]) -> bool:
    return all(
        (p / SUMMARY_NAME).exists() and json.loads((p / SUMMARY_NAME).read_text()).get("completed")
        for p in out_dirs
    )


def train_ddp(
    configs: list[TrainConfig],
    batches: Iterable[Tensor],
    out_dirs: list[str | Path],
    dist: Dist | None = None,
    resume: bool = False,
    progress: bool = True,
    **kw: Any,
) -> list[SAE]:
    """`train_saes` data parallel over the ranks of `dist` (default: from torchrun's environment).

    Every rank must pass the same configs and an identical stream; each returns the final SAEs.
    A world of one is plain `train_saes`."""
    dist = dist or init_dist()
    out_dirs = [Path(p) for p in out_dirs]
    if not dist.active:
        return train_saes(configs, batches, out_dirs, progress=progress, resume=resume, **kw)
    bad = [c.batch_size for c in configs if c.batch_size % dist.world]
    if bad:
        raise SAEError(
            f"batch_size {bad[0]} is not divisible by the {dist.world} ranks; use a multiple of "
            f"{dist.world} so every rank gets an equal slice"
        )
    if resume and _finished(out_dirs):
        dev = configs[0].device or ("cuda" if torch.cuda.is_available() else "cpu")
        return [load_sae(p, c.architecture, device=dev) for c, p in zip(configs, out_dirs)]
    scratch = None
    dirs = out_dirs
    if not dist.is_main:
        scratch = scratch_dir(out_dirs, dist.rank)
        shutil.rmtree(scratch, ignore_errors=True)  # a killed rank's leftovers
        dirs = [scratch / str(i) for i in range(len(out_dirs))]
        for src, dst in zip(out_dirs, dirs):  # resume from rank 0's checkpoints (the only ones kept)
            dst.mkdir(parents=True)
            if resume:
                for ck in src.glob("ckpt_*.pt"):
                    shutil.copy2(ck, dst / ck.name)
    barrier(dist)  # copies done before rank 0 can write (and prune) a newer checkpoint
    try:
        saes = train_saes(
            configs,
            batches,
            dirs,
            progress=progress and dist.is_main,
            resume=resume,
            run_factory=lambda c, p, dev: DDPRun(c, p, dev, dist),
            **kw,
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    barrier(dist)
    return saes


def train_sae_parallel(
    configs: list[TrainConfig],
    batches: Iterable[Tensor],
    out_dirs: list[str | Path],
    dist: Dist | None = None,
    progress: bool = True,
    **kw: Any,
) -> list[SAE]:
    """Train SAE i on rank i % world (each rank reads the whole stream); returns all final SAEs."""
    dist = dist or init_dist()
    mine = list(range(dist.rank, len(configs), dist.world))
    if mine:
        train_saes(
            [configs[i] for i in mine],
            batches,
            [out_dirs[i] for i in mine],
            progress=progress and dist.is_main,
            **kw,
        )
    barrier(dist)
    dev = configs[0].device or ("cuda" if torch.cuda.is_available() else "cpu")
    return [load_sae(p, c.architecture, device=dev) for c, p in zip(configs, out_dirs)]


def read_plan(path: str | Path) -> tuple[list[TrainConfig], list[Path]]:
    """A plan file: a JSON list of {"out_dir": ..., **TrainConfig fields}; a missing or malformed one is
    one line naming the fix (the command's first check, before any store is read)."""
    path, fix = Path(path), "write a JSON list of objects, each with an out_dir and TrainConfig fields"
    if not path.is_file():
        raise SAEError(f"plan file {path} not found; {fix}")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise SAEError(f"plan file {path} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    if (
        not isinstance(items, list)
        or not items
        or not all(isinstance(it, dict) and "out_dir" in it for it in items)
    ):
        raise SAEError(f"plan file {path} is not a list of objects with an out_dir; {fix}")
    return (
        [TrainConfig.from_dict({k: v for k, v in it.items() if k != "out_dir"}) for it in items],
        [Path(it["out_dir"]) for it in items],
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--mode",
        choices=("ddp", "sae"),
        required=True,
        help="ddp: data parallel over the global batch; sae: the plan's SAEs spread over ranks",
    )
    p.add_argument("--store", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--seed", type=int, default=0, help="shuffling seed of the activation stream")
    p.add_argument("--exclude-positions", type=int, nargs="*", default=[0])
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    configs, out_dirs = read_plan(a.plan)
    store = ActivationStore(a.store)
    batches = store.batches(
        a.layer, configs[0].batch_size, seed=a.seed, exclude_positions=a.exclude_positions, epochs=None
    )
    dist = init_dist()
    if a.mode == "ddp":
        train_ddp(configs, batches, out_dirs, dist, resume=a.resume)
    else:
        train_sae_parallel(configs, batches, out_dirs, dist, resume=a.resume)
    if dist.is_main:
        print(
            f"trained {len(configs)} SAE(s) on {dist.world} rank(s) ({a.mode}): "
            + ", ".join(map(str, out_dirs))
        )
    destroy(dist)


if __name__ == "__main__":
    run_cli(main)
