"""The main job's plan: each notebook's estimated minutes on this machine before it starts, and the
estimate against the wall time after.

How: two calibrations of a few seconds, each at one fixed shape so that machines compare alike —
  step     median tokens/s of 12 steps of the trainer's own TopK step (`TrainingRun.step`, after 3
           untimed) at the offline shape (d 576, 2,304 latents, k 32, batch 2,048), in the precision
           "auto" picks here (~1 s on a Zen 3);
  forward  the best GFLOP/s of 9 GEMMs at the offline model's MLP shape (4,096 x 576 x 1,536), same
           precision;
then a reference run's wall time per notebook (the last run of the profile on this machine, else the
committed reference in eta_reference.json, measured on the CPU it names) scaled by how much slower
or faster this machine is: notebooks 02, 07, 08 and 09 (training) by the step's ratio, the others (the model's
forward passes and analyses) by the GEMM's.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from helpers.data.store import write_json_atomic
from helpers.precision import cpuinfo_field, resolve_precision

REFERENCE_PATH = Path(__file__).with_name("eta_reference.json")
TRAINING_STEPS = ("02", "07", "08", "09")  # scaled by the step calibration; every other step by the GEMM's
STEP_SHAPE = dict(d=576, m=2304, k=32, batch=2048)
GEMM_SHAPE = (4096, 576, 1536)


@dataclass(frozen=True)
class Calibration:
    """This machine's speed at the two fixed shapes (module docstring)."""

    step_tokens_per_s: float
    """Median tokens/s of TopK training steps at STEP_SHAPE."""
    gemm_gflops: float
    """Best GFLOP/s of a GEMM at GEMM_SHAPE."""
    precision: str
    """The matmul dtype "auto" picked for both."""
    cpu: str
    """The CPU they ran on."""


def _gemm_gflops(dtype: torch.dtype, reps: int = 9) -> float:
    rows, inner, cols = GEMM_SHAPE
    a, w = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    for _ in range(2):
        a @ w
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ w
        best = min(best, time.perf_counter() - t)
    return 2 * rows * inner * cols / best / 1e9


def _step_tokens_per_s(n: int = 12) -> float:
    from helpers.training.config import TrainConfig
    from helpers.training.train import TrainingRun

    s = STEP_SHAPE
    cfg = TrainConfig(
        d_in=s["d"], d_sae=s["m"], k=s["k"], batch_size=s["batch"], total_tokens=10**10, warmup_steps=1
    )
    with tempfile.TemporaryDirectory(prefix="sae-lab-eta-") as out:
        run = TrainingRun(cfg, Path(out), torch.device("cpu"))
        run.open_log(None)
        x = torch.randn(s["batch"], s["d"], generator=torch.Generator().manual_seed(0)) * 3
        times = []
        for i in range(n + 3):
            t = time.perf_counter()
            run.step(x, 1.0, i, 0)
            times.append(time.perf_counter() - t)
        run.log_f.close()
    return s["batch"] / statistics.median(times[3:])  # the first steps fill caches and buffers


def calibrate() -> Calibration:
    """A few seconds: the step and the GEMM at their fixed shapes (module docstring)."""
    from helpers.report.findings import machine_summary

    dtype = resolve_precision("auto", "cpu", note=False, shape=GEMM_SHAPE)
    return Calibration(
        step_tokens_per_s=round(_step_tokens_per_s(), 1),
        gemm_gflops=round(_gemm_gflops(dtype), 2),
        precision=str(dtype).removeprefix("torch."),
        cpu=f"{machine_summary()}, family {cpuinfo_field('cpu family')} model {cpuinfo_field('model')}",
    )


@dataclass(frozen=True)
class Reference:
    """Wall seconds per step of one finished run of a profile, and the calibration of its machine."""

    seconds: dict[str, float]
    """{step key ('01', ..., 'lab'): wall seconds}."""
    calibration: Calibration
    source: str
    """Where it comes from (this machine's last run, or the committed reference)."""


def reference_for(profile: str, local: Path | None = None) -> Reference | None:
    """This machine's last finished run of `profile` (`local`: its plan.json) if it has one, else the
    committed reference of that profile, else None."""
    if local is not None and Path(local).exists():
        raw = json.loads(Path(local).read_text())
        if raw.get("actual") and raw.get("calibration"):
            return Reference(raw["actual"], Calibration(**raw["calibration"]), "this machine's last run")
    refs = json.loads(REFERENCE_PATH.read_text()) if REFERENCE_PATH.exists() else {}
    if profile in refs:
        r = refs[profile]
        return Reference(
            r["seconds"], Calibration(**r["calibration"]), f"the reference run ({r['calibration']['cpu']})"
        )
    return None


def estimate(keys: list[str], ref: Reference | None, now: Calibration) -> dict[str, float | None]:
    """{step: estimated seconds here}: the reference's time scaled by the matching calibration ratio
    (TRAINING_STEPS by the step's, the rest by the GEMM's); None where the reference lacks the step."""
    if ref is None:
        return {k: None for k in keys}
    by_step = ref.calibration.step_tokens_per_s / now.step_tokens_per_s
    by_gemm = ref.calibration.gemm_gflops / now.gemm_gflops
    return {
        k: None if k not in ref.seconds else ref.seconds[k] * (by_step if k in TRAINING_STEPS else by_gemm)
        for k in keys
    }


@dataclass
class Plan:
    """data/executed/<profile>/plan.json: this run's calibration, estimates and, as steps finish, wall
    times (the next run's reference on this machine). Steps not run keep the last actual time."""

    calibration: Calibration
    predicted: dict[str, float | None]
    actual: dict[str, float]

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, asdict(self))


def write_reference(profile: str, plan_path: Path, path: Path = REFERENCE_PATH) -> dict:
    """Make a finished run's plan.json (every step's actual time) the committed reference of `profile`."""
    raw = json.loads(Path(plan_path).read_text())
    refs = json.loads(path.read_text()) if path.exists() else {}
    refs[profile] = {"seconds": raw["actual"], "calibration": raw["calibration"]}
    path.write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
    return refs[profile]


def fmt_minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"
