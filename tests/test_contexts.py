import numpy as np
import pytest
import torch

from helpers.analysis.contexts import (
    TopActivationTracker,
    context_windows,
    top_activations,
    top_contexts,
    window_activations,
)


def brute_force_top(codes, n_top):
    """Oracle: dense codes [n_seq, T, d_sae] -> per latent the first n_top positive entries by
    (value desc, seq asc, pos asc)."""
    n_seq, T, d_sae = codes.shape
    seq, pos = np.meshgrid(np.arange(n_seq), np.arange(T), indexing="ij")
    seq, pos, flat = seq.ravel(), pos.ravel(), codes.reshape(-1, d_sae)
    vals = np.full((d_sae, n_top), np.nan, dtype=np.float32)
    sids = np.full((d_sae, n_top), -1)
    poss = np.full((d_sae, n_top), -1)
    for f in range(d_sae):  # oracle only
        v = flat[:, f]
        keep = v > 0
        order = np.lexsort((pos[keep], seq[keep], -v[keep]))[:n_top]
        k = len(order)
        vals[f, :k], sids[f, :k], poss[f, :k] = v[keep][order], seq[keep][order], pos[keep][order]
    return vals, sids, poss


def make_codes(n_seq=11, T=7, d_sae=9, seed=0):
    """Sparse codes with many exact ties (values on a 0.5 grid), a dead latent (col 3) and a rare one
    (col 5)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_seq, T, d_sae, generator=g)
    codes = torch.where(x > 0.3, torch.round(x * 2) / 2, torch.zeros(()))
    codes[..., 3] = 0.0
    codes[..., 5] = 0.0
    codes[2, 4, 5], codes[9, 1, 5] = 1.5, 1.5  # fires twice, tied
    codes[..., 7] = 0.0
    codes[:, 0, 7] = 2.5  # position-0 latent: identical value in every sequence
    return codes


@pytest.mark.parametrize("chunk", [1, 3, 4, 11])
def test_streaming_top_n__equals_brute_force_for_uneven_chunks_and_ties(chunk):
    codes = make_codes()
    n_top = 5
    top = top_activations((codes[i : i + chunk] for i in range(0, len(codes), chunk)), d_sae=9, n_top=n_top)
    vals, sids, poss = brute_force_top(codes.numpy(), n_top)
    np.testing.assert_array_equal(top.values.numpy(), vals, err_msg="top values differ from brute force")
    np.testing.assert_array_equal(
        top.seq_ids.numpy(), sids, err_msg="sequence ids differ: tie-break must be earlier (seq, pos) first"
    )
    np.testing.assert_array_equal(top.positions.numpy(), poss, err_msg="positions differ from brute force")
    assert top.n_valid()[3] == 0 and torch.isnan(top.values[3]).all(), (
        "a dead latent must stay empty (nan / -1)"
    )
    assert top.n_valid()[5] == 2 and top.seq_ids[5, :2].tolist() == [2, 9]
    assert top.seq_ids[7].tolist() == [0, 1, 2, 3, 4], "tied position-0 latent: earliest sequences first"


def test_streaming_top_n__flattened_shuffled_chunks_give_same_result_as_3d():
    codes = make_codes(seed=1)
    n_seq, T, d_sae = codes.shape
    seq, pos = torch.meshgrid(torch.arange(n_seq), torch.arange(T), indexing="ij")
    flat, seq, pos = codes.reshape(-1, d_sae), seq.reshape(-1), pos.reshape(-1)
    perm = torch.randperm(len(flat))  # arrival order must not matter
    chunks = [
        (flat[perm[i : i + 13]], seq[perm[i : i + 13]], pos[perm[i : i + 13]])
        for i in range(0, len(flat), 13)
    ]
    top = top_activations(chunks, d_sae=d_sae, n_top=4)
    vals, sids, poss = brute_force_top(codes.numpy(), 4)
    np.testing.assert_array_equal(top.values.numpy(), vals)
    np.testing.assert_array_equal(
        top.seq_ids.numpy(), sids, err_msg="ties must follow (seq, pos), not arrival order"
    )
    np.testing.assert_array_equal(top.positions.numpy(), poss)


def test_tracker__counts_density_and_histogram_of_positive_values_only():
    codes = make_codes()
    codes[0, 0, 0] = -3.0  # negative: never counted
    edges = torch.tensor([0.0, 1.0, 2.0, 3.0])
    tr = TopActivationTracker(d_sae=9, n_top=3, hist_edges=edges)
    tr.update(codes[:6])
    tr.update(codes[6:], seq_ids=torch.arange(6, 11))
    top = tr.result()
    dense = codes.reshape(-1, 9).numpy()
    np.testing.assert_array_equal(top.fire_counts.numpy(), (dense > 0).sum(0))
    assert top.n_tokens == 11 * 7
    np.testing.assert_allclose(top.density.numpy(), (dense > 0).mean(0))
    for f in (0, 7):
        v = dense[:, f][dense[:, f] > 0]
        expect = np.histogram(np.clip(v, 0, 2.999), edges.numpy())[0]
        np.testing.assert_array_equal(
            top.hist_counts[f].numpy(),
            expect,
            err_msg="histogram must bin positive values with [lo, hi) bins, clipped",
        )


def test_tracker__rejects_bad_shapes_with_one_line_errors():
    tr = TopActivationTracker(d_sae=4, n_top=2)
    with pytest.raises(ValueError, match="d_sae"):
        tr.update(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="seq_ids"):
        tr.update(torch.zeros(6, 4))


def test_context_windows__pad_at_sequence_edges():
    tokens = torch.arange(20).reshape(2, 10)  # token id = 10 * seq + pos
    w = context_windows(tokens, [0, 1, 1], [1, 5, 9], before=2, after=1)
    assert w.tokens.tolist() == [[-1, 0, 1, 2], [13, 14, 15, 16], [17, 18, 19, -1]]
    assert w.positions.tolist() == [[-1, 0, 1, 2], [3, 4, 5, 6], [7, 8, 9, -1]]
    with pytest.raises(ValueError, match="positions"):
        context_windows(tokens, [0], [10])


def test_window_activations__reencode_only_windows_and_match_dense_codes():
    n_seq, T, d, d_sae = 5, 12, 6, 8
    acts = torch.randn(n_seq, T, d)
    W = torch.randn(d, d_sae)
    seen = []

    def encode_fn(x):
        seen.append(len(x))
        return torch.relu(x @ W)

    dense = torch.relu(acts @ W)  # [n_seq, T, d_sae]
    w = context_windows(torch.zeros(n_seq, T, dtype=torch.long), [4, 0], [0, 6], before=3, after=2)
    wa = window_activations(acts.numpy(), w, [2, 5], encode_fn)  # numpy source works too
    assert sum(seen) == int(w.valid.sum()), "encode_fn must see only the valid window tokens"
    assert torch.isnan(wa[0, :3]).all()
    torch.testing.assert_close(wa[0, 3:], dense[4, 0:3, 2])
    torch.testing.assert_close(wa[1], dense[0, 3:9, 5])


def test_top_contexts__anchor_activation_equals_tracked_value_and_mismatch_raises():
    n_seq, T, d, d_sae = 6, 9, 5, 7
    acts = torch.randn(n_seq, T, d)
    tokens = torch.randint(0, 50, (n_seq, T))
    W = torch.randn(d, d_sae)
    top = top_activations([torch.relu(acts[:4] @ W), torch.relu(acts[4:] @ W)], d_sae=d_sae, n_top=3)
    ctxs = top_contexts(top, 2, tokens, lambda seq: acts[seq], lambda x: torch.relu(x @ W), before=4, after=2)
    assert len(ctxs) == int(top.n_valid()[2])
    for c, v in zip(ctxs, top.values[2]):
        assert c.acts[c.target] == pytest.approx(float(v), rel=1e-5), (
            "target index must point at the anchor token"
        )
        assert c.tokens[c.target] == tokens[c.seq_id, c.position]
    with pytest.raises(ValueError, match="encode_fn"):
        top_contexts(top, 2, tokens, acts, lambda x: 2 * torch.relu(x @ W))
