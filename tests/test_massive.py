"""Massive-activation tokens: detection by norm, exclusion from training streams and metrics."""

import numpy as np
import pytest
import torch

from helpers.analysis.evaluate import reconstruction_eval
from helpers.data.massive import (
    MassiveTokens,
    find_massive,
    first_token_ratio,
    late_token_ratio,
    massive_threshold,
    position_norm_summary,
)
from helpers.data.store import ActivationStore, StoreRequest, StoreWriter

D, T = 8, 16
PLANTED = [(0, 5, 40.0), (3, 11, 60.0), (4, 2, 25.0)]  # (seq, pos, norm multiple of a typical token)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """6 sequences x 16 tokens of N(0, 1) residuals (norm ~sqrt(8)), with three planted tokens
    whose norms are 25-60x a typical one; BOS (id 0) at position 0 is also large (a sink)."""
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((6, T, D)).astype(np.float32)
    toks = rng.integers(1, 50, (6, T)).astype(np.int32)
    toks[:, 0] = 0
    acts[:, 0] *= 30.0
    for s, p, mult in PLANTED:
        v = rng.standard_normal(D)
        acts[s, p] = (v / np.linalg.norm(v) * mult * np.sqrt(D)).astype(np.float32)
    req = StoreRequest("synthetic", "planted", (3,), T, 6, "float32", 0, 3)
    path = tmp_path_factory.mktemp("massive")
    w = StoreWriter(path, req, {"d_model": D, "bos_id": 0, "bos_note": ""})
    for shard in range(2):
        w.write_shard(shard, toks[3 * shard : 3 * shard + 3], {3: acts[3 * shard : 3 * shard + 3]})
    return ActivationStore(path), acts


def test_find_massive__finds_exactly_the_planted_tokens_not_the_excluded_bos(planted_store):
    store, acts = planted_store
    m = find_massive(store, 3, ratio=10.0, exclude_tokens=(0,))
    assert sorted(zip(m.seq.tolist(), m.pos.tolist())) == sorted((s, p) for s, p, _ in PLANTED)
    assert m.n_tokens == 6 * (T - 1)
    # variance share by hand over the non-BOS tokens
    x = acts[:, 1:].reshape(-1, D).astype(np.float64)
    mu = x.mean(0)
    ss = ((x - mu) ** 2).sum(1)
    planted = sum(((acts[s, p] - mu) ** 2).sum() for s, p, _ in PLANTED)
    assert m.variance_share == pytest.approx(planted / ss.sum(), rel=1e-5)
    assert m.variance_share > 0.9, "three 25-60x tokens must carry most of the variance"
    assert m.rows()[0]["pos"] == 11, "rows are sorted by norm, largest (60x) first"
    with_bos = find_massive(store, 3, ratio=10.0)
    assert with_bos.count == 3 + 6, "without exclude_tokens the six BOS sinks count too"


def test_batches_max_norm__drops_exactly_the_massive_tokens(planted_store):
    store, _ = planted_store
    thr = massive_threshold(store, 3, 10.0)
    rows = torch.cat(
        list(store.batches(3, batch_size=7, shuffle=False, exclude_positions=(0,), max_norm=thr))
    )
    assert len(rows) == 6 * (T - 1) - 3 and float(rows.norm(dim=1).max()) <= thr
    with pytest.raises(ValueError, match="ratio must be > 1"):
        massive_threshold(store, 3, 0.5)


def test_reconstruction_eval__fvu_over_typical_tokens_is_not_set_by_the_outliers(planted_store):
    store, acts = planted_store

    class Mean:  # an "SAE" that predicts the typical tokens' mean: FVU ~1 on typical tokens only
        def encode(self, x):
            return torch.zeros(x.shape[0], 1)

        def decode(self, c):
            return torch.zeros(c.shape[0], D)

    thr = massive_threshold(store, 3, 10.0)
    typical = reconstruction_eval(Mean(), store, 3, [0, 1], max_norm=thr)
    everything = reconstruction_eval(Mean(), store, 3, [0, 1])
    assert typical["n_tokens"] == 6 * (T - 1) - 3 and everything["n_tokens"] == 6 * (T - 1)
    x = acts[:, 1:].reshape(-1, D)
    keep = np.linalg.norm(x, axis=1) <= thr
    assert typical["median_relative_error"] == pytest.approx(1.0)
    xs = x[keep].astype(np.float64)
    assert typical["fvu"] == pytest.approx((xs**2).sum() / ((xs - xs.mean(0)) ** 2).sum(), rel=1e-6)


def _massive(token_ids, pos, norms, median=2.0):
    n = len(norms)
    return MassiveTokens(
        3, 10.0, median, 10.0 * median, 100, np.arange(n), np.asarray(pos), np.asarray(token_ids),
        np.asarray(norms, dtype=np.float64), 0.5,
    )  # fmt: skip


def test_most_common_and_top__group_by_token_and_position_most_frequent_first():
    m = _massive([5, 7, 5], [1, 3, 1], [60.0, 40.0, 100.0])
    which = m.most_common(lambda i: f"t{i}")
    assert list(which.index) == [("t5", 1), ("t7", 3)]
    assert which["count"].tolist() == [2, 1]
    assert which["median_x_median"].tolist() == [40.0, 20.0], "median of 30x and 50x the median norm"
    assert m.top(lambda i: f"t{i}") == "'t5' at position 1 (2 times)"
    assert m.max_x_median == 50.0
    none = _massive([], [], [])
    assert none.top(str) == "none" and none.most_common(str).empty and none.max_x_median == 0.0


def test_first_and_late_token_ratios__hand_values_and_their_summary():
    assert first_token_ratio(np.array([4.0, 1.0, 3.0])) == 2.0, "4 over the mean of 1 and 3"
    assert late_token_ratio(np.array([9.0, 1.0, 2.0, 3.0, 4.0]), n=2) == pytest.approx(3.5 / 1.5)
    with pytest.raises(ValueError, match="more than n=10 positions"):
        late_token_ratio(np.ones(5))
    norms = {0: np.array([1.0, 1.0, 1.0, 1.0]), 2: np.array([9.0, 2.0, 4.0, 3.0])}
    assert position_norm_summary(norms, n=1).splitlines() == [
        "Position 0's residual norm is 3.0x the mean of later positions at layer 2 (and > 2x at layers [2]); "
        "at layer 0 it is 1.00x.",
        "Norm of the last 1 positions over positions 1-1, per layer: L0 1.00, L2 1.50",
    ]
