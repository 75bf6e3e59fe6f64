"""README findings are rendered from recorded numbers, between markers."""

import pytest

from helpers.report import findings


def test_record_render_and_update_readme(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    findings.record("p", "factors", seed_floor=0.31, ranking="layer 5.0% > corpus 12.0%")
    findings.record("p", "convergence", line="Convergence verdict: CONVERGED: x")
    findings.record("p", "factors", seed_floor=0.32)  # merges, keeps the ranking
    f = findings.load("p")
    assert f["factors"] == {"seed_floor": 0.32, "ranking": "layer 5.0% > corpus 12.0%"}
    block = findings.render(f, {"01_a.ipynb": 120.0, "total": 120.0})
    assert "01 2.0 min" in block and "32.0%" in block and "layer 5.0% > corpus 12.0%" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{findings.START}\nold numbers\n{findings.END}\nrest\n")
    findings.update_readme(readme, block)
    text = readme.read_text()
    assert (
        "old numbers" not in text and text.startswith("intro\n") and text.endswith("rest\n") and block in text
    )
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="findings markers"):
        findings.update_readme(readme, block)
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        findings.load("other")


USING = {
    "features": [7, 9],
    "tokens": [" a", "0"],
    "effect_lift_a4": [141.8, 4.6],
    "lens_lift_a4": [0.29, 3.68],
    "kl_a4": [4.41, 1.16],
    "ablation_fired": [0.639, -0.163],
    "ablation_elsewhere": [0.01, 0.02],
    "k": 32,
    "fvu": {"SAE": 0.132, "PCA": 0.333},
    "mmcs": {"SAE": 1.0, "PCA": 0.2},
    "proxy_median": {"SAE": 0.4, "PCA": 0.15},
    "n_ica": 256,
    "ica_converged": False,
}


def test_render_states_the_using_features_numbers():
    block = findings.render({"using_features": USING})
    assert "7 (' a'), 9 ('0')" in block and "141.8x, 4.6x" in block and "+0.639, -0.163" in block
    assert "SAE 0.132; PCA 0.333" in block and "SAE 40%, PCA 15%" in block and "did not converge" in block


def test_render_states_cross_corpus_ablations_caa_and_context_features():
    f = {
        "cross_corpus": {
            "fvu_in": 0.13,
            "fvu_out": 0.52,
            "ce_in": 0.2,
            "ce_out": 0.9,
            "cells": {"a->a": {"fvu": 0.12, "delta_ce": 0.21, "dead": 0.0}},
        },
        "atlas": {"example": 5, "match": 0.97, "density": 0.002, "context": [11, 12]},
        "using_features": USING
        | {
            "features": [7, 11],
            "kinds": ["token", "context"],
            "ablation_mean_fired": [0.5, -0.1],
            "ablation_resample_fired": [0.6, -0.15],
            "caa": {
                "cos_best": 0.41,
                "latent": 3,
                "sentence": "At KL 1.00 nats/token X: CAA steers more cheaply.",
            },
        },
    }
    block = findings.render(f)
    assert "In-domain beats out-of-domain: mean held-out FVU 0.130" in block and "(4.0x)" in block
    assert "adds latents 11, 12" in block and "11 ('0', context)" in block
    assert "zero +0.639, -0.163; mean +0.500, -0.100; resample +0.600, -0.150" in block
    assert "best |cos| 0.41 with an SAE decoder row (latent 3). At KL 1.00" in block


def test_machine_summary__names_the_cpu_and_its_bf16_support():
    info = "processor: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    assert findings.machine_summary(info, 2) == "AMD EPYC, 2 cores, AVX512-BF16, no AMX"
    assert (
        findings.machine_summary("flags : amx_bf16 amx_tile", 4)
        == "unknown CPU, 4 cores, no AVX512-BF16, AMX-BF16"
    )
    assert "on AMD EPYC, 2 cores" in findings.render(
        {}, {"01_a.ipynb": 60.0, "total": 60.0}, "AMD EPYC, 2 cores"
    )
