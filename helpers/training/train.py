"""Train several SAEs from one stream of activation batches, with checkpoints and resume.

What: `train_saes(configs, batches, out_dirs)` (all
SAEs step on the same batches in one pass; each has its own seeded init, Adam, dead-latent
counters and log), `train_sae` (one SAE). Outputs per SAE directory: cfg.json +
sae_weights.safetensors (SAELens format, input scale folded in: takes raw activations),
training_log.jsonl (one line per step), eval_summary.json, and decoder snapshots
(snapshots/W_dec_<tokens>.safetensors, read back by `load_snapshot`). Settings: `TrainConfig`
(helpers.training.config); the step itself: helpers.sae.fast.step.
Why: the analysis needs many SAEs (seeds x corpora x architectures) over the same activations.

Batch source: any iterable of float tensors [n, d_in] (any n: the trainer re-chunks to
batch_size). Resume (`resume=True`) continues from the newest checkpoint all SAEs share; the
stream must then start where that checkpoint stopped: if the source has `skip_tokens(n)` the
trainer calls it with the rows already trained on and iterates it afresh; otherwise it
re-iterates the source and discards those rows (so the source must replay the same order).
If the source has a `current_source` attribute (e.g. a shard name), errors quote it.
Input scale: s = sqrt(d_in) / mean ||x|| over the first `norm_estimate_tokens` rows; b_dec is
initialised from those rows (geometric median / mean / zeros) in the scaled space.
Schedule: Adam, lr warms up linearly over warmup_steps (at most a tenth of the run) and decays
linearly to 0 over the last decay_fraction of steps. Unit-norm decoders (all but relu) get the
decoder-gradient component parallel to each row removed, then rows renormalised after the step.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from helpers.data.store import write_json_atomic
from helpers.precision import resolve_precision
from helpers.sae import SAE, SAEError, get_sae_class, load_sae, save_sae
from helpers.sae.base import init_b_dec
from helpers.sae.fast.step import normalize_decoder_for_step, project_decoder_grad_
from helpers.sae.metrics import ReconstructionStats
from helpers.sae.step_types import StepState
from helpers.training.config import TrainConfig
from helpers.training.run_dir import (
    CONFIG_NAME,
    LOG_NAME,
    SNAPSHOT_DIR,
    SUMMARY_NAME,
    config_json,
    reset_if_config_changed,
)
from helpers.training.stream import chain, norm_scale, rechunk, scale_blocks


class NonFiniteError(SAEError):
    """A batch or a loss held NaN/inf; training stopped after saving the last good state."""


def _clip_grad_norm(params: list[Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ that leaves the gradients alone when their norm is within
    max_norm (the usual case after warm-up) instead of scaling every one by 1.0, a full pass."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if float(norm) + 1e-6 > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)


# ---------------------------------------------------------------------------- one SAE's run
class TrainingRun:
    """The mutable training state of one SAE: its weights, Adam, dead-latent counters, log and step state."""

    after_backward = (
        None  # distributed hook (helpers.training.train_dist): called as hook(out) after backward
    )

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        sae_cfg = cfg.sae_config()
        sae_cfg.device = str(device)
        self.sae: SAE = get_sae_class(cfg.architecture)(sae_cfg).init_weights(self.gen)
        self.sae.init_training(cfg.options)
        params = [p for p in self.sae.parameters() if p.requires_grad]
        try:
            self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, foreach=True)
        self.since_fired = torch.zeros(self.sae.cfg.d_sae, dtype=torch.int64, device=device)
        self.scale: float | Tensor = 1.0  # a crosscoder's: one per layer block [n_blocks]
        self.state = StepState(
            matmul_dtype=resolve_precision(
                cfg.precision, device, shape=(cfg.batch_size, cfg.d_in, cfg.d_sae)
            ),
            sparse=cfg.sparse,
            options=cfg.options,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_f = None
        self.last: dict[str, float] = {}

    def open_log(self, upto_step: int | None) -> None:
        path = self.out_dir / LOG_NAME
        lines = []
        if upto_step is not None and path.exists():  # resume: keep the steps the checkpoint covers
            lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= upto_step]
        path.write_text("".join(ln + "\n" for ln in lines))
        self.log_f = open(path, "a")

    def step(self, x_raw: Tensor, var_raw: float, step: int, tokens: int) -> None:
        cfg, sae = self.cfg, self.sae
        x = self.scaled(x_raw)
        lr = cfg.lr_at(step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.state.dead = self.since_fired >= cfg.dead_window
        out = sae.train_forward(x, self.state)
        if not torch.isfinite(out.loss):
            raise NonFiniteError(
                f"loss became {float(out.loss.detach())} at step {step} for {self.out_dir.name}; "
                "lower lr or check the batch"
            )
        out.loss.backward()
        if self.after_backward is not None:  # helpers.training.train_dist: all-reduce grads before clipping
            self.after_backward(out)
        sae.tie_grads_()  # tied SAEs: W_enc's gradient joins W_dec's
        if sae.unit_norm_decoder:
            with torch.no_grad():
                project_decoder_grad_(sae.W_dec)
        if cfg.grad_clip:
            _clip_grad_norm([p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if sae.unit_norm_decoder:
            normalize_decoder_for_step(sae, self.state)  # and next step's bf16 decoder, in the same pass
        sae.sync_tied_()
        self.since_fired += x.shape[0]
        self.since_fired.masked_fill_(out.fired > 0, 0)
        if step % cfg.log_every == 0 or step == cfg.total_steps - 1:
            mse = float(out.mse)
            var = var_raw * self.scale**2 if isinstance(self.scale, float) else batch_variance(x)
            self.last = {
                "step": step,
                "tokens": tokens,
                "lr": lr,
                "loss": float(out.loss.detach()),
                "mse": mse,
                "sparsity_loss": float(out.sparsity),
                "aux_loss": float(out.aux),
                "l0": float(out.fired.sum()) / x.shape[0],
                "fvu": mse / var,
                "dead_fraction": float((self.since_fired >= cfg.dead_window).float().mean()),
            }
            self.log_f.write(json.dumps(self.last) + "\n")

    def scaled(self, x_raw: Tensor) -> Tensor:
        """x in the training space: x_raw * scale (a crosscoder: each layer block by its own)."""
        if isinstance(self.scale, float):
            return x_raw * self.scale if self.scale != 1.0 else x_raw
        return scale_blocks(x_raw, self.scale)

    def snapshot(self, tokens: int) -> None:
        """W_dec [d_sae, d_in] after `tokens` training tokens -> snapshots/W_dec_<tokens>.safetensors
        (rows in the raw activation space: folding the input scale leaves W_dec unchanged)."""
        path = self.out_dir / SNAPSHOT_DIR / f"W_dec_{tokens:012d}.safetensors"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"W_dec": self.sae.W_dec.detach().float().cpu().contiguous()}, str(tmp))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ checkpoints
    def ckpt_steps(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.out_dir.glob("ckpt_*.pt"))

    def save_ckpt(self, step: int, tokens: int) -> Path:
        path = self.out_dir / f"ckpt_{step:09d}.pt"
        blob = {
            "model": self.sae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": step,
            "tokens_seen": tokens,
            "since_fired": self.since_fired,
            "scale": self.scale,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "architecture": self.cfg.architecture,
            "config": self.cfg.to_dict(),
        }
        self.log_f.flush()  # the log must cover every step the checkpoint does (resume trims the rest)
        os.fsync(self.log_f.fileno())
        tmp = path.with_suffix(".pt.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        for old in self.ckpt_steps():
            if old < step:
                (self.out_dir / f"ckpt_{old:09d}.pt").unlink(missing_ok=True)
        return path

    def load_ckpt(self, step: int) -> tuple[int, int]:
        blob = torch.load(
            self.out_dir / f"ckpt_{step:09d}.pt", map_location=self.since_fired.device, weights_only=False
        )
        if blob["architecture"] != self.cfg.architecture:
            raise SAEError(
                f"checkpoint in {self.out_dir} is a {blob['architecture']!r} SAE but the config asks "
                f"for {self.cfg.architecture!r}; use another out_dir or resume=False"
            )
        self.sae.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["optimizer"])
        self.since_fired.copy_(blob["since_fired"])
        self.scale = blob["scale"]
        self.gen.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        return blob["step"], blob["tokens_seen"]

    def finish(self, eval_x: list[Tensor], seconds: float, tokens: int) -> SAE:
        self.log_f.close()
        if hasattr(self.sae, "calibrate_threshold") and eval_x:
            self.sae.calibrate_threshold([self.scaled(x) for x in eval_x])
        final = self.sae.fold_norm_scale(self.scale) if not _is_one(self.scale) else self.sae
        final.cfg.metadata["norm_scale_folded"] = _jsonable(self.scale)
        final.cfg.metadata["training_tokens"] = tokens
        save_sae(final, self.out_dir)
        stats = ReconstructionStats()
        with torch.no_grad():
            for x in eval_x:
                x_hat, codes = final(x, return_codes=True)
                stats.update(x, x_hat, codes)
        summary = {
            "architecture": self.cfg.architecture,
            "d_sae": final.cfg.d_sae,
            "k": final.cfg.k,
            "precision": str(self.state.matmul_dtype).removeprefix("torch."),
            "eval_tokens": "the last training batches (train split, excluded tokens left out)",
            "tokens_trained": tokens,
            "steps": tokens // self.cfg.batch_size,
            "seconds": seconds,
            "tokens_per_second": tokens / max(seconds, 1e-9),
            "norm_scale": _jsonable(self.scale),
            "eval": stats.result() if eval_x else None,
            "final_step": self.last,
            "completed": True,
        }
        (self.out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
        for s in self.ckpt_steps():
            (self.out_dir / f"ckpt_{s:09d}.pt").unlink(missing_ok=True)
        return final


def train_saes(
    configs: list[TrainConfig],
    batches: Iterable[Tensor],
    out_dirs: list[str | Path],
    progress: bool = True,
    resume: bool = False,
    eval_batches: Iterable[Tensor] | None = None,
    n_eval_batches: int = 8,
    run_factory: Callable[[TrainConfig, Path, torch.device], TrainingRun] = TrainingRun,
) -> list[SAE]:
    """Train one SAE per config on the same stream; returns the final SAEs (taking raw activations).

    All configs must share d_in, batch_size and total_tokens. eval_batches (default: the last
    n_eval_batches training batches) feed eval_summary.json. `run_factory` builds each SAE's
    TrainingRun (helpers.training.train_dist passes one that steps on this rank's slice).
    Each out_dir keeps its TrainConfig (train_config.json): with `resume`, a finished SAE of the same
    config is read back and the run says "reused"; one trained with another config trains afresh.
    """
    if len(configs) != len(out_dirs) or not configs:
        raise SAEError(
            f"need one out_dir per config; got {len(configs)} configs and {len(out_dirs)} out_dirs"
        )
    c0 = configs[0]
    for c in configs[1:]:
        if (c.d_in, c.batch_size, c.total_tokens) != (c0.d_in, c0.batch_size, c0.total_tokens):
            raise SAEError(
                "configs trained together must share d_in, batch_size and total_tokens; "
                "train the others in another call"
            )
    if len({str(Path(p).resolve()) for p in out_dirs}) != len(out_dirs):
        raise SAEError("out_dirs must be distinct")
    dev = torch.device(c0.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    B, n_steps, d_in = c0.batch_size, c0.total_steps, c0.d_in
    if resume:
        for c, p in zip(configs, out_dirs):
            reset_if_config_changed(c, Path(p), progress)
    if resume and all((Path(p) / SUMMARY_NAME).exists() for p in out_dirs):
        if all(json.loads((Path(p) / SUMMARY_NAME).read_text()).get("completed") for p in out_dirs):
            if progress:
                names = ", ".join(Path(p).name for p in out_dirs)
                print(f"reused (trained before with the same config): {names}")
            return [load_sae(p, c.architecture, device=dev) for c, p in zip(configs, out_dirs)]
    for c, p in zip(configs, out_dirs):
        Path(p).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(p) / CONFIG_NAME, config_json(c))
    runs = [run_factory(c, Path(p), dev) for c, p in zip(configs, out_dirs)]
    step = tokens = 0
    common = set.intersection(*(set(r.ckpt_steps()) for r in runs)) if resume else set()
    if common:
        for r in runs:
            step, tokens = r.load_ckpt(max(common))
        step += 1
        if hasattr(batches, "skip_tokens"):
            batches.skip_tokens(tokens)
            stream = rechunk(iter(batches), B, d_in=d_in)
        else:
            stream = rechunk(iter(batches), B, skip=tokens, d_in=d_in)
    else:
        stream = rechunk(iter(batches), B, d_in=d_in)
    for r in runs:
        r.open_log(step - 1 if common else None)
    first: list[Tensor] = []
    if not common:  # estimate the input scale and init b_dec from the first rows
        while sum(len(b) for b in first) < min(c0.norm_estimate_tokens, n_steps * B):
            nxt = next(stream, None)
            if nxt is None:
                break
            first.append(nxt)
        if not first:
            raise SAEError("the batch source yielded no full batch; check it is not empty or exhausted")
        rows = torch.cat(first)[:65_536].to(dev, torch.float32)
        b_decs: dict[tuple, Tensor] = {}  # SAEs of one stream share the scale, so b_dec is computed once
        for r in runs:
            if r.cfg.normalize_activations:
                r.scale = norm_scale(first, d_in, r.cfg.n_blocks)
                r.scale = r.scale if isinstance(r.scale, float) else r.scale.to(dev)
            key = (r.cfg.b_dec_init, str(_jsonable(r.scale)))
            if key not in b_decs:
                init_b_dec(r.sae, r.scaled(rows), r.cfg.b_dec_init)
                b_decs[key] = r.sae.b_dec.detach().clone()
            with torch.no_grad():
                r.sae.b_dec.copy_(b_decs[key])
    if not common:  # the initial decoder, for drift-from-init (helpers.analysis.convergence)
        for r in runs:
            r.snapshot(0)
    tail: deque[Tensor] = deque(maxlen=n_eval_batches)
    bar = tqdm(
        total=n_steps * B,
        initial=tokens,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"training {len(runs)} SAE{'s' * (len(runs) > 1)}",
    )
    t0, t_post = time.perf_counter(), 0.0
    source = lambda: getattr(batches, "current_source", None)  # noqa: E731
    for x_raw in chain(first, stream):
        if step >= n_steps:
            break
        x_raw = x_raw.to(dev, torch.float32, non_blocking=True)
        var_raw = batch_variance(x_raw)  # also the finite check: NaN/inf anywhere makes it non-finite
        if not math.isfinite(var_raw) and not bool(torch.isfinite(x_raw).all()):
            paths = [r.save_ckpt(step - 1, tokens) for r in runs] if step > 0 else []
            where = f" ({source()})" if source() else ""
            raise NonFiniteError(
                f"batch at step {step} (tokens {tokens}..{tokens + B}){where} contains NaN/inf; "
                f"stopped; last good checkpoint: {paths[0].parent if paths else 'none (step 0)'}"
            )
        if not math.isfinite(var_raw):  # finite rows whose squares overflow float32
            var_raw = _var(x_raw.double())
        tokens += B
        for r in runs:
            r.step(x_raw, var_raw, step, tokens)
        if eval_batches is None:
            tail.append(x_raw)
        for r in runs:
            if any(tokens - B < t <= tokens for t in r.cfg.snapshot_tokens):
                r.snapshot(tokens)
        every = c0.checkpoint_every_tokens
        if every and tokens // every != (tokens - B) // every and step < n_steps - 1:
            for r in runs:
                r.save_ckpt(step, tokens)
        bar.update(B)
        if progress and time.perf_counter() - t_post > max(0.5, bar.mininterval):
            t_post = time.perf_counter()
            # refresh=False: shown at the bar's next refresh. Forcing one here printed a line every
            # 0.5 s, and in the headless main job streaming them stalled the 2-thread step ~2x
            bar.set_postfix_str(
                " | ".join(
                    f"loss {r.last.get('loss', 0):.3g} L0 {r.last.get('l0', 0):.1f} "
                    f"FVU {r.last.get('fvu', 0):.3f} dead {r.last.get('dead_fraction', 0):.2f}"
                    for r in runs[:3]
                ),
                refresh=False,
            )
        step += 1
    bar.close()
    if step < n_steps:
        warnings.warn(
            f"the batch source ran out after {tokens} of {n_steps * B} tokens; saving what was trained",
            stacklevel=2,
        )
    seconds = time.perf_counter() - t0
    eval_x = (
        list(tail)
        if eval_batches is None
        else [torch.as_tensor(b).to(dev, torch.float32) for b in eval_batches]
    )
    return [r.finish(eval_x, seconds, tokens) for r in runs]


def _var(x: Tensor) -> float:
    return float((x - x.mean(0)).pow(2).sum(1).mean())


def batch_variance(x: Tensor) -> float:
    """The total variance of the rows of x [B, d] (mean squared distance to the mean row: what FVU divides
    by), non-finite where x holds NaN/inf. ||x||_F^2 / B - ||mean||^2 from two BLAS passes and no [B, d]
    temporary (the centred form took ~3 ms a step, 4% of a TopK step). Its relative error grows as
    ~1e-7 x ||mean||^2 / variance: ~1e-5 on SmolLM2's residual stream (ratio 0.1-1.1), and it only
    touches the logged FVU."""
    flat = x.reshape(-1)
    mean = x.mean(0)
    return float(torch.dot(flat, flat)) / x.shape[0] - float(torch.dot(mean, mean))


def _is_one(s: float | Tensor) -> bool:
    return s == 1.0 if isinstance(s, float) else bool((s == 1).all())


def _jsonable(s: float | Tensor) -> float | list[float]:
    return s if isinstance(s, float) else [float(v) for v in s]


def train_sae(config: TrainConfig, batches: Iterable[Tensor], out_dir: str | Path, **kw: Any) -> SAE:
    """`train_saes` for one SAE."""
    return train_saes([config], batches, [out_dir], **kw)[0]
