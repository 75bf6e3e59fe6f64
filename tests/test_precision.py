"""Precision by measurement: "auto" takes bf16 only where a calibration GEMM shows it faster here."""

import json

import pytest
import torch

from helpers import precision as P


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty calibration cache and no choice remembered from earlier tests."""
    monkeypatch.setenv("SAE_LAB_PRECISION_CACHE", str(tmp_path / "precision.json"))
    P._auto.cache_clear()
    P._announced.clear()
    yield tmp_path / "precision.json"
    P._auto.cache_clear()
    P._announced.clear()


def test_auto__resolves_to_fp32_when_the_calibration_finds_bf16_slower(fresh, monkeypatch, capsys):
    monkeypatch.setattr(P, "bf16_is_fast", lambda device="cpu": True)  # native bf16, as on Zen 4
    monkeypatch.setattr(P, "measure_bf16_speedup", lambda device, shape, reps=5: 0.8)
    assert P.resolve_precision("auto", "cpu", shape=(64, 32, 128)) == torch.float32
    assert P.resolve_precision("bfloat16", "cpu") == torch.bfloat16, "an explicit request is obeyed"
    out = capsys.readouterr().out
    assert "precision auto on cpu: fp32 (a 64x32x128 bf16 GEMM ran 0.80x fp32 here; bf16 needs >= 1.2x" in out
    P.resolve_precision("auto", "cpu", shape=(64, 32, 128))
    assert capsys.readouterr().out == "", "the choice is printed once per process"


def test_auto__takes_bf16_where_measured_faster_and_caches_the_ratio_per_machine(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(P, "bf16_is_fast", lambda device="cpu": True)
    monkeypatch.setattr(P, "measure_bf16_speedup", lambda device, shape, reps=5: calls.append(shape) or 2.1)
    assert P.resolve_precision("auto", "cpu", shape=(64, 32, 128)) == torch.bfloat16
    P._auto.cache_clear()  # a new process: the ratio comes from the cache file, not a new measurement
    assert P.resolve_precision("auto", "cpu", shape=(64, 32, 128)) == torch.bfloat16
    assert calls == [(64, 32, 128)]
    ((key, ratio),) = json.loads(fresh.read_text()).items()
    assert ratio == 2.1 and key.endswith("| cpu | 64x32x128") and f"torch {torch.__version__}" in key


def test_auto__stays_fp32_without_native_bf16_and_measures_nothing(fresh, monkeypatch):
    monkeypatch.setattr(P, "bf16_is_fast", lambda device="cpu": False)
    monkeypatch.setattr(
        P, "measure_bf16_speedup", lambda *a, **k: pytest.fail("measured without native bf16")
    )
    assert P.resolve_precision("auto", "cpu") == torch.float32


def test_measure_bf16_speedup__is_a_finite_positive_ratio_on_this_machine():
    ratio = P.measure_bf16_speedup("cpu", (64, 64, 64), reps=2)
    assert 0 < ratio < 100
