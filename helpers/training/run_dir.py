"""What a training directory holds, and reading it back (helpers.training.train writes it).

<out_dir>/
  train_config.json          the TrainConfig it was (or is being) trained with (CONFIG_NAME)
  training_log.jsonl         one row per logged step (LOG_NAME; load_training_log)
  eval_summary.json          written when training completes (SUMMARY_NAME; load_eval_summary)
  snapshots/W_dec_<tokens>.safetensors   decoder snapshots, 0 = the init (snapshot_tokens, load_snapshot)
  ckpt_<step>.pt             the newest checkpoint while training (deleted when it completes)
  cfg.json + sae_weights.safetensors     the SAE itself (helpers.sae.save_sae)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from helpers.sae import SAEError

if TYPE_CHECKING:
    from helpers.training.config import TrainConfig

LOG_NAME, SUMMARY_NAME, SNAPSHOT_DIR = "training_log.jsonl", "eval_summary.json", "snapshots"
CONFIG_NAME = "train_config.json"  # the TrainConfig a directory's SAE was (or is being) trained with


def config_json(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict()))


def reset_if_config_changed(cfg: TrainConfig, out_dir: Path, progress: bool) -> None:
    """Resume only what the same config trained: where `out_dir` holds a finished SAE or checkpoints
    of another TrainConfig, drop them (the summary and checkpoints; the new run overwrites the rest)
    and say which fields changed."""
    path = out_dir / CONFIG_NAME
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), config_json(cfg)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return
    if "architecture" in changed:  # another SAE altogether: a mistaken out_dir, not a new budget
        raise SAEError(
            f"checkpoint in {out_dir} is a {old['architecture']!r} SAE but the config asks for "
            f"{new['architecture']!r}; use another out_dir or resume=False"
        )
    if progress:
        what = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed[:4])
        print(f"{out_dir.name}: config changed ({what}): training it afresh")
    (out_dir / SUMMARY_NAME).unlink(missing_ok=True)
    for ckpt in out_dir.glob("ckpt_*.pt"):
        ckpt.unlink()
    shutil.rmtree(out_dir / SNAPSHOT_DIR, ignore_errors=True)  # snapshots of the old run's schedule


def load_training_log(out_dir: str | Path) -> list[dict[str, float]]:
    """The per-step rows of out_dir/training_log.jsonl (step, tokens, lr, loss, mse, l0, fvu, ...)."""
    return [json.loads(ln) for ln in (Path(out_dir) / LOG_NAME).read_text().splitlines() if ln]


def load_eval_summary(out_dir: str | Path) -> dict[str, Any]:
    """out_dir/eval_summary.json: architecture, tokens, speed and the "eval" metrics block."""
    return json.loads((Path(out_dir) / SUMMARY_NAME).read_text())


def snapshot_tokens(sae_dir: str | Path) -> list[int]:
    """Token counts at which `sae_dir` has a decoder snapshot (0 = the initial decoder)."""
    return sorted(
        int(p.stem.split("_")[-1]) for p in (Path(sae_dir) / SNAPSHOT_DIR).glob("W_dec_*.safetensors")
    )


def load_snapshot(sae_dir: str | Path, tokens: int) -> torch.Tensor:
    """W_dec [d_sae, d_in] of `sae_dir` after `tokens` training tokens."""
    path = Path(sae_dir) / SNAPSHOT_DIR / f"W_dec_{tokens:012d}.safetensors"
    if not path.exists():
        have = snapshot_tokens(sae_dir)
        raise FileNotFoundError(
            f"no decoder snapshot at {tokens} tokens in {sae_dir} (have {have}); "
            "set TrainConfig.snapshot_tokens and train again"
        )
    return load_file(str(path))["W_dec"]
