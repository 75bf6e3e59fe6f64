"""Nested prefixes on real-model SAEs (helpers.analysis.hierarchy): FVU of the first n latents against a
hand computation, prefixes found in narrow SAEs, and the pair match with its null model."""

import numpy as np
import pytest
import torch
from planted import identity_relu_sae

from helpers.analysis import hierarchy
from helpers.sae import SAEConfig, make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_prefix_fvu__equals_the_hand_computed_share_of_variance_left():
    # identity ReLU SAE on non-negative x: the first w latents decode x's first w dimensions exactly
    x = torch.rand(300, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 9)
    sae = identity_relu_sae(8)
    got = hierarchy.prefix_fvu(sae, x, [2, 5, 8], batch_size=64)
    total = float(((x - x.mean(0)) ** 2).sum())
    want = [float((x[:, w:] ** 2).sum()) / total for w in (2, 5, 8)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[-1] == pytest.approx(0.0, abs=1e-7)


def _sae_with_rows(rows: torch.Tensor):
    sae = make_sae(SAEConfig("topk", rows.shape[1], rows.shape[0], k=2), seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True))
    return sae


def test_prefix_vs_narrow__a_prefix_made_of_the_narrow_saes_rows_is_found_there():
    g = torch.Generator().manual_seed(1)
    narrow_rows = torch.randn(10, 32, generator=g)
    nested = torch.cat([narrow_rows[torch.randperm(10, generator=g)], torch.randn(30, 32, generator=g)])
    mat, flat = _sae_with_rows(nested), _sae_with_rows(torch.randn(40, 32, generator=g))
    table = hierarchy.prefix_vs_narrow(mat, flat, {10: _sae_with_rows(narrow_rows)})
    row = table.iloc[0]
    assert row["width"] == 10 and row["Matryoshka prefix"] == 1.0
    assert row["BatchTopK first latents"] == 0.0 and row["random rotation"] == 0.0


def test_pair_match__a_permuted_copy_shares_everything_and_the_null_does_not():
    rows = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    a, b = _sae_with_rows(rows), _sae_with_rows(rows[torch.randperm(64)])
    m = hierarchy.pair_match(a, b)
    assert m.shared == 1.0 and m.median_cos == pytest.approx(1.0, abs=1e-5)
    assert m.null < 0.1
