"""torch.distributed plumbing shared by sharded collection and distributed training.

What: `Dist` (this process's rank and world size), `init_dist()` (join the process group that
`torchrun` describes in the environment: gloo on CPU, NCCL when CUDA is available), and the few
collectives the lab needs (`barrier`, `all_reduce_sum_`, `all_reduce_mean_`).
Why: one place decides the backend and the device of each rank; a plain `python` run is a
world of one and every collective is a no-op, so the same code runs with or without torchrun.

    torchrun --standalone --nproc_per_node 2 -m helpers.data.collect ...   # CPU: 2 gloo ranks
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; `Dist()` is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment names a world of more than one process (torchrun sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(cuda: bool | None = None) -> str:
    """NCCL when CUDA is available (one GPU per rank), else gloo."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "nccl" if cuda else "gloo"


def init_dist(cpu_only: bool = False) -> Dist:
    """Join (or reuse) the process group torchrun set up; a world of one needs no group.

    `cpu_only` forces gloo (sharded collection only synchronises on CPU). With NCCL each rank
    takes GPU `LOCAL_RANK`, so `torch.device("cuda")` means its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {var} is not set; launch with `torchrun --nproc_per_node N -m ...`"
            )
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "gloo" if cpu_only else backend_for()
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return Dist(rank, world, local, tdist.get_backend())


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


def all_reduce_sum_(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum `t` over ranks, in place (every rank ends with the same bits)."""
    if dist.active:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_mean_(tensors: list[torch.Tensor], dist: Dist) -> None:
    """Average same-dtype tensors over ranks in place, with one collective (flattened)."""
    if not dist.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= dist.world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def destroy(dist: Dist) -> None:
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()
