"""`python -m helpers.compare`: a planted permutation is found, the random baseline is not."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.analysis import similarity as sim
from helpers.analysis.similarity import random_rotation
from helpers.report.compare import compare_saes, write_report
from helpers.sae import SAEError, make_sae, save_sae
from helpers.sae.base import SAEConfig


def _pair(tmp_path, noise=0.05):
    a = make_sae(SAEConfig("topk", 32, 96, k=4), seed=0)
    b = make_sae(SAEConfig("topk", 32, 96, k=4), seed=1)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[perm] + noise * torch.randn(96, 32, generator=torch.Generator().manual_seed(3)))
        b.W_enc.copy_(b.W_dec.T)
    return save_sae(a, tmp_path / "a"), save_sae(b, tmp_path / "b"), perm


def test_compare__finds_a_planted_permutation_and_the_baseline_does_not(tmp_path):
    pa, pb, perm = _pair(tmp_path)
    report = write_report(str(pa), str(pb), tmp_path / "out")
    assert report["schema_version"] == 1 and report["a"]["source"] == str(pa) and report["b"]["d_sae"] == 96
    assert report["shared_fraction"] == 1.0 and report["random_baseline_shared_fraction"] < 0.05
    assert report["mmcs"] > 0.95 and report["mean_matched_cos"] > 0.95
    assert all(m["a"] == int(perm[m["b"]]) for m in report["matches"]), (
        "each B latent matched to its source row"
    )
    on_disk = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert on_disk["shared_fraction"] == report["shared_fraction"]
    assert {"compare.html", "compare_decoder_topk.png", "compare_encoder_topk.png"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }


def test_compare__the_shared_fraction_is_notebook_04s_hungarian_number(tmp_path):
    pa, pb, _ = _pair(tmp_path, noise=0.13)  # a partial overlap
    from helpers.sae import load_sae

    A, B = load_sae(pa).W_dec.detach(), load_sae(pb).W_dec.detach()
    res, _, _, _ = compare_saes(load_sae(pa), load_sae(pb))
    assert 0.05 < res.shared_fraction < 0.95
    assert res.shared_fraction == sim.shared_fraction(sim.hungarian_match(A, B).similarities)


def test_compare__refuses_different_widths_in_one_line(tmp_path):
    save_sae(make_sae(SAEConfig("topk", 16, 32, k=2)), tmp_path / "narrow")
    save_sae(make_sae(SAEConfig("topk", 24, 32, k=2)), tmp_path / "wide")
    with pytest.raises(SAEError, match="different widths"):
        write_report(str(tmp_path / "narrow"), str(tmp_path / "wide"), tmp_path / "out")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.compare",
            str(tmp_path / "narrow"),
            str(tmp_path / "wide"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and res.stderr.strip().count("\n") == 0 and "d_in 16 vs 24" in res.stderr


def test_random_rotation__is_orthogonal():
    q = random_rotation(20, seed=4)
    torch.testing.assert_close(q @ q.T, torch.eye(20), rtol=0, atol=1e-5)


def test_null_shared_fraction__a_permuted_copy_is_all_shared_and_its_null_is_not():
    W = torch.randn(200, 48, generator=torch.Generator().manual_seed(0))
    W_perm = W[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    real = sim.shared_fraction(sim.hungarian_match(W, W_perm).similarities)
    null = sim.null_shared_fraction(W, W_perm)
    assert real == 1.0 and null < 0.02
    assert sim.null_shared_fraction(W, W_perm, seed=5) == sim.null_shared_fraction(W, W_perm, seed=5)
    a, b = (sim.rotate_rows(W_perm, seed=s) for s in (5, 6))
    assert torch.equal(a, sim.rotate_rows(W_perm, seed=5)) and not torch.allclose(a, b), (
        "one rotation per seed"
    )
    # the rotation keeps B's own geometry (its Gram matrix), destroying only the alignment with A
    torch.testing.assert_close(a @ a.T, W_perm @ W_perm.T, rtol=0, atol=1e-3)


def test_every_shared_fraction_baseline_is_the_one_null_model():
    from helpers.analysis import tied
    from helpers.analysis.stitching import null_stitching_split, stitching_split

    a = make_sae(SAEConfig("topk", 32, 96, k=4), seed=0)
    b = make_sae(SAEConfig("topk", 32, 96, k=4), seed=1)
    A, B = a.W_dec.detach(), b.W_dec.detach()
    res, _, _, _ = compare_saes(a, b, seed=3)
    assert res.random_baseline_shared_fraction == sim.null_shared_fraction(A, B, seed=3)
    assert tied.random_shared(a, b, seed=3) == sim.null_shared_fraction(A, B, seed=3)
    assert tied.random_shared(a) == sim.null_shared_fraction(A, A)
    null = null_stitching_split(A[:48], A, seed=3)
    assert null.kind.tolist() == stitching_split(sim.rotate_rows(A[:48], 3), A).kind.tolist()
    assert (null.kind == "novel").mean() > 0.9 > (stitching_split(A[:48], A).kind == "novel").mean()
    from helpers.analysis.crosscoders import match_layer_saes

    d = 3  # in 3 dimensions chance cosines above 0.7 are common: the null is far from 0 and seed-dependent
    cc = make_sae(SAEConfig("crosscoder", 2 * d, 40, n_layers=2), seed=2)
    saes = {
        4: make_sae(SAEConfig("topk", d, 40, k=2), seed=4),
        8: make_sae(SAEConfig("topk", d, 40, k=2), seed=5),
    }
    table = match_layer_saes(cc, saes, np.ones(40, dtype=bool), seed=3)
    blocks = cc.decoder_blocks().detach()
    want = [
        sim.null_shared_fraction(blocks[:, i], s.W_dec.detach(), seed=3) for i, s in enumerate(saes.values())
    ]
    assert table["random baseline shared"].tolist() == want and min(want) > 0.1
