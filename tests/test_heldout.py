"""One held-out view per store and layer (helpers.analysis.heldout): its token policy, one density and
one typical activation per latent whichever notebook asks, and each SAE encoded once."""

import numpy as np
import pytest
import torch
from planted import identity_relu_sae

from helpers.analysis import baselines as B
from helpers.analysis import interventions as I
from helpers.analysis.contexts import top_activations
from helpers.analysis.heldout import HeldOut
from helpers.data.store import ActivationStore, StoreRequest, StoreWriter
from helpers.report.feature_card import CardSource
from helpers.sae import make_sae
from helpers.sae.base import SAEConfig

D, T, LAYER, BOS = 8, 16, 3, 0
# latent 0 of the planted SAE reads dimension 0 (elsewhere -1: silent). Where it fires, by (seq, pos):
HELD_FIRES = {(6, 3): 2.0, (7, 9): 4.0, (8, 2): 3.0}  # held-out shard (sequences 6-8), kept tokens
POS0 = (6, 0, 6.0)  # position 0 of a held-out sequence: left out by position
MID_BOS = (8, 7, 5.0)  # a BOS/separator id mid-sequence: left out by token id
MASSIVE = (7, 5, 200.0)  # a massive-norm token (~70x the median norm): left out by the cut
TRAIN = (1, 4, 10.0)  # a training-shard token: not held out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """9 sequences x 16 tokens in 3 shards of 3 (the last, sequences 6-8, is held out); layer 5 is
    layer 3 with one more massive token (2, 8 in sequence 6) of its own."""
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((9, T, D)).astype(np.float32)
    acts[..., 0] = -1.0
    toks = rng.integers(1, 50, (9, T)).astype(np.int32)
    toks[:, 0] = BOS
    toks[MID_BOS[0], MID_BOS[1]] = BOS
    for (s, p), v in HELD_FIRES.items():
        acts[s, p, 0] = v
    for s, p, v in (POS0, MID_BOS, MASSIVE, TRAIN):
        acts[s, p, 0] = v
    other = acts * 2.0
    other[6, 8] = 300.0
    req = StoreRequest("synthetic", "planted", (3, 5), T, 9, "float32", 0, 3)
    path = tmp_path_factory.mktemp("heldout")
    w = StoreWriter(path, req, {"d_model": D, "bos_id": BOS, "bos_note": ""})
    for shard in range(3):
        rows = slice(3 * shard, 3 * shard + 3)
        w.write_shard(shard, toks[rows], {3: acts[rows], 5: other[rows]})
    return ActivationStore(path), acts, toks


def test_view__keeps_only_held_out_tokens_after_positions_separators_and_massive_tokens(planted):
    store, acts, toks = planted
    held = HeldOut(store, LAYER)
    assert held.shards == (2,) and held.exclude_positions == (0,) and held.exclude_tokens == (BOS,)
    kept = {(int(s), int(p)) for s, p in zip(held.seq_ids, held.positions)}
    assert held.n_tokens == 3 * (T - 1) - 2 == len(kept), "45 non-first tokens minus one BOS and one massive"
    assert {s for s, _ in kept} == {6, 7, 8}, "only the held-out shard's sequences"
    assert not {(s, p) for s, p, _ in (POS0, MID_BOS, MASSIVE, TRAIN)} & kept
    assert set(HELD_FIRES) <= kept and held.n_massive == 1
    np.testing.assert_array_equal(held.x.numpy(), acts[held.seq_ids, held.positions])
    np.testing.assert_array_equal(held.token_ids.numpy(), toks[held.seq_ids, held.positions])
    assert "1 massive tokens" in held.describe()
    assert HeldOut(store, LAYER, massive_ratio=None).n_tokens == held.n_tokens + 1, "the cut drops one token"
    both = HeldOut(store, (3, 5))  # a crosscoder's view: one cut per layer, a token above any is out
    assert both.x.shape == (held.n_tokens - 1, 2 * D) and both.n_massive == 2
    assert (6, 8) not in set(zip(both.seq_ids.tolist(), both.positions.tolist()))


def test_one_typical_activation_and_density_in_the_paths_of_notebooks_05_and_06(planted):
    """Notebook 05 (feature pages) and notebook 06 (using features) each build their own view and read
    the same numbers: density and typical activation from the held-out rows with the massive token cut."""
    store, _, _ = planted
    sae = identity_relu_sae(D)
    # notebook 05: top contexts -> the feature card (its density), typical activation -> the effects
    nb05 = HeldOut(store, LAYER)
    top = nb05.top_activations(sae, n_top=20)
    card = CardSource(
        "base", sae.W_dec.detach(), top, store.tokens(), lambda ids: store.acts_for(LAYER, ids), sae.encode
    )
    card_density = card.card(0, effects=False).density
    scale_05 = nb05.typical(sae)[0]
    pick_05 = nb05.pick(sae, sae, n_top=3, density_range=(0.0, 0.1))
    # notebook 06: the stats table, the steering unit and the same picking rules
    nb06 = HeldOut(store, LAYER)
    stats = nb06.stats(sae)
    pick_06 = nb06.pick(sae, sae, n_top=3, density_range=(0.0, 0.1))
    n = 3 * (T - 1) - 2
    assert card_density == stats.density[0] == pytest.approx(3 / n, abs=1e-15)
    assert scale_05 == stats.typical[0] == pytest.approx(3.0, rel=1e-6), "mean of the kept 2, 4, 3"
    assert np.array_equal(nb05.density(sae), stats.density)
    assert np.array_equal(nb05.typical(sae), stats.typical, equal_nan=True)
    assert pick_05.token == pick_06.token and pick_05.context == pick_06.context
    assert pick_05.token[0] == 0, "latent 0 is the only one in the density band"
    # the old notebook-05 rule (held shard, position 0 dropped, separators and massive tokens kept)
    # gave another typical activation: (2 + 4 + 3 + 5 + 200) / 5
    old = I.mean_nonzero(torch.relu(torch.tensor(store.shard_acts(2, LAYER)[:, 1:]).reshape(-1, D)))
    assert old[0] == pytest.approx(42.8) and old[0] != stats.typical[0]
    ctx = card.card(0, effects=False).contexts
    assert [(c.seq_id, c.position, c.value) for c in ctx] == [(7, 9, 4.0), (8, 2, 3.0), (6, 3, 2.0)]


def test_codes_are_encoded_once_per_sae_and_equal_the_dense_numbers(planted):
    store, _, _ = planted
    held = HeldOut(store, LAYER)
    sae = make_sae(SAEConfig("topk", D, 32, k=4), seed=3)
    calls = []
    encode = sae.encode
    sae.encode = lambda x: calls.append(len(x)) or encode(x)
    codes = held.codes(sae)
    assert calls == [held.n_tokens] and codes.vals.numel() == 4 * held.n_tokens, "TopK: k entries per row"
    dense = encode(held.x).detach()
    (
        held.density(sae),
        held.typical(sae),
        held.stats(sae),
        held.top_activations(sae),
        held.pick(sae, sae, n_top=2),
    )
    held.grid(sae, [1, 2]), held.values(sae, [5]), held.codes(sae)
    assert calls == [held.n_tokens], "every number after the first comes from the cache"
    torch.testing.assert_close(codes.dense(), dense, rtol=0, atol=0)
    torch.testing.assert_close(held.values(sae, [7, 2, 7]), dense[:, [7, 2, 7]], rtol=0, atol=0)
    np.testing.assert_allclose(held.typical(sae), I.mean_nonzero(dense), rtol=1e-6)
    np.testing.assert_array_equal(held.density(sae), (dense > 0).double().mean(0).numpy())
    conc, want = held.concentration(sae, 5), B.token_concentration(dense, held.token_ids, 5)
    np.testing.assert_array_equal(conc.share, want.share)
    np.testing.assert_array_equal(conc.scored, want.scored)
    top, ref = held.top_activations(sae, 5), top_activations([(dense, held.seq_ids, held.positions)], 32, 5)
    assert torch.equal(top.seq_ids, ref.seq_ids) and torch.equal(top.positions, ref.positions)
    g = held.grid(sae, [2])
    assert g.shape == (3, T, 1)
    np.testing.assert_array_equal(g[held.seq_ids - 6, held.positions, 0], dense[:, 2].numpy())
    other = make_sae(SAEConfig("topk", D, 32, k=4), seed=3)  # equal weights, another object: its own entry
    held.codes(other)
    assert calls == [held.n_tokens] and len(held._codes) == 2
