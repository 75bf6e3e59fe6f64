"""Trainer: config defaults and errors, schedule, re-chunking, several SAEs on one stream,
NaN handling, and resume after a real SIGKILL giving bit-identical weights."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.data.toy import TensorBatches, ToyStream, make_superposition_data
from helpers.sae import SAEError, load_sae
from helpers.sae.metrics import fvu
from helpers.training.config import TrainConfig
from helpers.training.stream import rechunk
from helpers.training.train import NonFiniteError, batch_variance, train_sae, train_saes

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> TrainConfig:
    base = dict(
        d_in=16,
        architecture="topk",
        d_sae=64,
        k=4,
        lr=3e-3,
        batch_size=64,
        total_tokens=64 * 40,
        warmup_steps=5,
        norm_estimate_tokens=256,
    )
    return TrainConfig(**(base | kw))


# ---------------------------------------------------------------------------- config
def test_train_config__defaults_scale_with_width_and_run_length():
    c = TrainConfig(d_in=576, d_sae=2**14)
    assert c.lr == pytest.approx(3e-4)
    assert TrainConfig(d_in=576, d_sae=2**16).lr == pytest.approx(1.5e-4), "lr ~ 1/sqrt(d_sae/2^14)"
    assert TrainConfig(d_in=576).d_sae == 4608
    assert TrainConfig(d_in=576, total_tokens=10_000_000).dead_window == 2_000_000
    assert TrainConfig(d_in=576, total_tokens=500_000_000).dead_window == 10_000_000
    assert c.sae_config().metadata["hook_name"] is None
    assert (
        TrainConfig(d_in=8, d_sae=16, k=2, layer=3).sae_config().metadata["hook_name"]
        == "blocks.3.hook_resid_pre"
    )
    c2 = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert c2 == c, "to_dict/from_dict must round-trip through JSON (betas tuple)"


def test_train_config__one_line_errors():
    with pytest.raises(SAEError, match=r"k=65 must be in \[1, d_sae=64\]"):
        TrainConfig(d_in=16, d_sae=64, k=65)
    with pytest.raises(SAEError, match="relu: ReluOptions.l1 must be positive"):
        TrainConfig(d_in=16, architecture="relu", options={"l1": 0.0})
    with pytest.raises(SAEError, match="jumprelu: JumpReLUOptions.l0 must be positive"):
        TrainConfig(d_in=16, architecture="jumprelu", options={"l0": -1.0})
    with pytest.raises(SAEError, match="valid: geometric_median, mean, zeros"):
        TrainConfig(d_in=16, b_dec_init="median")


def test_lr_schedule__linear_warmup_then_linear_decay_over_last_fifth():
    c = TrainConfig(d_in=8, d_sae=16, k=2, lr=1.0, batch_size=1, total_tokens=100, warmup_steps=5)
    assert [c.lr_at(s) for s in (0, 4, 50, 79)] == pytest.approx([0.2, 1.0, 1.0, 1.0])
    assert [c.lr_at(s) for s in (80, 90, 99)] == pytest.approx([1.0, 0.5, 0.05])
    assert TrainConfig(
        d_in=8, d_sae=16, k=2, lr=1.0, batch_size=1, total_tokens=100, warmup_steps=1000
    ).lr_at(0) == pytest.approx(0.1), "warm-up capped at a tenth of the run"


def test_rechunk__exact_batches_from_ragged_pieces_with_skip():
    rows = torch.arange(40.0).reshape(20, 2)
    pieces = [rows[:3], rows[3:8], rows[8:15], rows[15:16], rows[16:]]
    out = list(rechunk(iter(pieces), 4))
    assert len(out) == 5 and torch.equal(torch.cat(out), rows)
    out = list(rechunk(iter(pieces), 4, skip=6))
    assert torch.equal(torch.cat(out), rows[6:18]), "skip drops rows, then chunks; the tail < 4 is held back"


# ---------------------------------------------------------------------------- training runs
def test_train_saes__several_saes_on_one_stream_equal_separate_runs(tmp_path):
    X, _ = make_superposition_data(32, 16, 4000, 0.1, seed=0)
    X = X * 40 + 3  # far from unit scale: the saved SAE must still take raw activations
    cfgs = [
        small(seed=1, options={"auxk_coef": 0.1}, dead_window_tokens=256),
        small(architecture="relu", seed=2, options={"l1": 1.0}),
        small(architecture="batchtopk", seed=3, b_dec_init="mean"),
    ]
    dirs = [tmp_path / f"s{i}" for i in range(3)]
    saes = train_saes(cfgs, TensorBatches(X, 50, seed=0), dirs, progress=False)
    alone = train_sae(cfgs[1], TensorBatches(X, 50, seed=0), tmp_path / "alone", progress=False)
    assert torch.equal(saes[1].W_dec, alone.W_dec), (
        "each SAE must see the same batches and its own RNG/optimiser"
    )
    for d, sae, c in zip(dirs, saes, cfgs):
        names = {p.name for p in d.iterdir()}
        assert {"cfg.json", "sae_weights.safetensors", "training_log.jsonl", "eval_summary.json"} <= names
        assert not any(n.startswith("ckpt_") for n in names), "checkpoints are removed after a finished run"
        log = [json.loads(ln) for ln in (d / "training_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(40)) and log[-1]["tokens"] == 64 * 40
        summary = json.loads((d / "eval_summary.json").read_text())
        loaded = load_sae(d, c.architecture)
        x = X[:500]
        assert torch.allclose(loaded(x), sae(x), atol=1e-4)
        assert float(fvu(x, loaded(x))) < 0.8 and summary["eval"]["fvu"] < 0.8, (
            "saved SAE must take raw inputs"
        )
        assert summary["eval"]["fvu"] == pytest.approx(log[-1]["fvu"], abs=0.25)
    assert json.loads((dirs[0] / "cfg.json").read_text())["metadata"]["train_config"]["seed"] == 1


@pytest.mark.parametrize("arch", ["jumprelu", "gated", "batchtopk"])
def test_training__lowers_fvu(arch, tmp_path):
    X, _ = make_superposition_data(32, 16, 4000, 0.1, seed=0)
    sae = train_sae(
        small(architecture=arch, total_tokens=64 * 60, options={"l1": 0.5, "l0": 0.1}),
        TensorBatches(X, 64),
        tmp_path,
        progress=False,
    )
    log = [json.loads(ln) for ln in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["fvu"] < 0.5 * log[0]["fvu"], f"{arch} is not learning"
    if arch == "batchtopk":
        assert (
            float(sae.topk_threshold) > 0 and 0 < float((sae.encode(X[:256]) > 0).sum(1).float().mean()) < 16
        )


def test_nan_batch__raises_with_step_and_source_and_keeps_last_good_checkpoint(tmp_path):
    class Poisoned(ToyStream):
        def batch(self, i):
            b = super().batch(i)
            return b * float("nan") if i == 12 else b

    src = Poisoned(32, 16, batch_size=64, p_active=0.1, seed=0)
    with pytest.raises(NonFiniteError, match=r"step 12 .*\(toy batch 12\) contains NaN/inf"):
        train_sae(small(), src, tmp_path, progress=False)
    blob = torch.load(tmp_path / "ckpt_000000011.pt", weights_only=False)
    assert blob["step"] == 11 and all(torch.isfinite(v).all() for v in blob["model"].values())


def test_batch_variance__matches_the_centred_sum_where_the_mean_dominates_and_flags_nan_and_inf():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 64, generator=g) + 10 * torch.randn(64, generator=g)  # ||mean||^2 ~ 100 x var
    exact = float((x.double() - x.double().mean(0)).pow(2).sum(1).mean())
    assert abs(exact - 64) < 3  # unit variance per dimension
    assert batch_variance(x) == pytest.approx(exact, rel=1e-4)  # the residual stream's ratio is ~1
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[5, 7] = bad
        assert not math.isfinite(batch_variance(y))


def test_resume__into_another_architecture_names_both(tmp_path):
    src = ToyStream(32, 16, batch_size=64, p_active=0.1, seed=0, n_batches=30)
    with pytest.raises(NonFiniteError):

        class Stop(ToyStream):
            def batch(self, i):
                return super().batch(i) * (float("inf") if i == 20 else 1.0)

        train_sae(small(), Stop(32, 16, batch_size=64, p_active=0.1, seed=0), tmp_path, progress=False)
    with pytest.raises(SAEError, match=r"checkpoint .* is a 'topk' SAE but the config asks for 'relu'"):
        train_sae(small(architecture="relu"), src, tmp_path, progress=False, resume=True)


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from helpers.data.toy import ToyStream
from helpers.training.config import TrainConfig
from helpers.training.train import train_sae
cfg = TrainConfig(**{cfg!r})
train_sae(cfg, ToyStream(32, 16, batch_size=48, p_active=0.1, seed=5, delay={delay}), sys.argv[1],
progress=False,
          resume=True)
"""


def test_resume_after_sigkill__final_weights_identical_to_uninterrupted_run(tmp_path):
    # topk with AuxK firing (short dead window) so optimiser state, dead counters and scale all matter
    kw = dict(
        d_in=16,
        architecture="topk",
        d_sae=64,
        k=4,
        lr=3e-3,
        batch_size=64,
        total_tokens=64 * 80,
        warmup_steps=5,
        norm_estimate_tokens=256,
        dead_window_tokens=64 * 3,
        checkpoint_every_tokens=64 * 10,
        seed=7,
    )
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(cfg=kw, delay=0.03))
    run_dir = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env)
    t0 = time.time()
    while not list(run_dir.glob("ckpt_*.pt")):
        assert proc.poll() is None, "training subprocess exited before writing a checkpoint"
        assert time.time() - t0 < 60, "no checkpoint after 60 s"
        time.sleep(0.02)
    time.sleep(0.4)  # let it run past the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "eval_summary.json").exists(), (
        "run finished before the kill; the test proves nothing"
    )
    steps_done = len((run_dir / "training_log.jsonl").read_text().splitlines())
    assert 0 < steps_done < 80
    cfg = TrainConfig(**kw)
    resumed = train_sae(
        cfg, ToyStream(32, 16, batch_size=48, p_active=0.1, seed=5), run_dir, progress=False, resume=True
    )
    fresh = train_sae(
        cfg, ToyStream(32, 16, batch_size=48, p_active=0.1, seed=5), tmp_path / "fresh", progress=False
    )
    for name, p in fresh.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), f"{name} differs after resume"
    log = [json.loads(ln) for ln in (run_dir / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(80)), "the log must hold each step once after resume"
    again = train_sae(
        cfg, ToyStream(32, 16, batch_size=48, p_active=0.1, seed=5), run_dir, progress=False, resume=True
    )
    assert torch.equal(again.W_dec, resumed.W_dec), "resume=True on a finished run just loads it"


def test_training_plots__one_line_per_sae_and_one_point_per_sae(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from helpers.report.plots.training_curves import plot_dead_fraction, plot_l0_vs_fvu, plot_loss_curves
    from helpers.training.run_dir import load_eval_summary, load_training_log

    X, _ = make_superposition_data(32, 16, 2000, 0.1, seed=0)
    cfgs = [small(total_tokens=64 * 10), small(architecture="relu", total_tokens=64 * 10)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    train_saes(cfgs, TensorBatches(X, 64), dirs, progress=False)
    logs = {d.name: load_training_log(d) for d in dirs}
    sums = {d.name: load_eval_summary(d) for d in dirs}
    fig = plot_loss_curves(logs, architectures={"a": "topk", "b": "relu"})
    assert len(fig.axes) == 4 and all(len(ax.lines) == 2 for ax in fig.axes)
    fig = plot_l0_vs_fvu(sums)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 2
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"topk", "relu"}
    fig = plot_dead_fraction({n: s["eval"]["dead_fraction"] for n, s in sums.items()})
    assert len(fig.axes[0].patches) == 2


def test_train__activation_width_mismatch_names_the_fix(tmp_path):
    with pytest.raises(
        SAEError, match=r"width 768 but the SAE expects d_in=16; did you collect another model"
    ):
        train_sae(small(), [torch.randn(64, 768)], tmp_path, progress=False)


def test_resume__same_config_reused_other_budget_trained_afresh(tmp_path, capsys):
    """A finished SAE is read back when the config is the same ("reused"); a changed budget trains the
    directory afresh, saying which field changed, instead of handing back the old SAE."""
    src = lambda: ToyStream(32, 16, batch_size=64, p_active=0.1, seed=0)  # noqa: E731
    first = train_sae(small(), src(), tmp_path, progress=True, resume=True)
    capsys.readouterr()
    again = train_sae(small(), src(), tmp_path, progress=True, resume=True)
    assert "reused (trained before with the same config)" in capsys.readouterr().out
    assert torch.equal(first.W_dec, again.W_dec)
    longer = train_sae(small(total_tokens=64 * 60), src(), tmp_path, progress=True, resume=True)
    out = capsys.readouterr().out
    assert "config changed (total_tokens 2560 -> 3840" in out and "reused" not in out
    assert json.loads((tmp_path / "eval_summary.json").read_text())["tokens_trained"] == 64 * 60
    assert not torch.equal(first.W_dec, longer.W_dec)
