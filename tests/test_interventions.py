"""Steering, clamping and ablation through nnsight (helpers.analysis.interventions) on tiny random models."""

import numpy as np
import pytest
import torch

from helpers.analysis import interventions as I
from helpers.model.models import load_model
from helpers.model.residuals import logits_with_resid, residuals
from helpers.sae import make_sae
from helpers.sae.base import SAEConfig

LAYER = 2


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture
def ids():
    ids = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 256
    return ids


def test_steering_with_alpha_zero_gives_the_clean_logits_bit_for_bit(tiny, ids):
    clean = I.intervened_logits(tiny, ids, LAYER)
    u = torch.randn(64)
    assert torch.equal(I.intervened_logits(tiny, ids, LAYER, I.Steer(u, 0.0)), clean)
    steered = I.intervened_logits(tiny, ids, LAYER, I.Steer(u, 4.0, from_position=6))
    assert torch.equal(steered[:, :6], clean[:, :6]), "positions before from_position see no edit"
    assert (steered[:, 6:] - clean[:, 6:]).abs().amax(-1).min() > 1e-3


def test_clamping_a_latent_to_its_own_value_leaves_the_logits_unchanged(tiny, ids):
    sae = make_sae(SAEConfig("topk", 64, 128, k=8), seed=0)
    clean = I.intervened_logits(tiny, ids, LAYER)
    codes = sae.encode(residuals(tiny, ids, [LAYER])[LAYER]).detach()
    f = int(codes[:, 1:].gt(0).sum((0, 1)).argmax())  # a latent that fires (so the clamp has work)
    assert codes[..., f].gt(0).any()
    torch.testing.assert_close(
        I.intervened_logits(tiny, ids, LAYER, I.Clamp(sae, f, scale=1.0)), clean, rtol=0, atol=0
    )
    # the SAE reconstructs poorly (random), so a model run on x_hat alone would differ: the error term matters
    spliced = logits_with_resid(tiny, ids, LAYER, replace=lambda x: sae(x), keep_positions=(0,))
    assert (spliced - clean).abs().max() > 1e-2
    doubled = I.intervened_logits(tiny, ids, LAYER, I.Clamp(sae, f, scale=2.0))
    assert (doubled - clean).abs().max() > 1e-3


def _planted_sae(x: torch.Tensor, u: torch.Tensor, b: int, t: int, code: float = 5.0):
    """A ReLU SAE whose latent 0 reads direction u and fires only at (b, t), the token with the
    largest projection on u, with activation `code` (latents 1-3 never fire)."""
    sae = make_sae(SAEConfig("relu", 64, 4), seed=0)
    proj = (x[:, 1:] @ u).flatten().sort(descending=True).values
    margin = float(proj[0] - proj[1]) / 2
    gain = code / margin
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = gain * u
        sae.b_enc.fill_(-1e6)
        sae.b_enc[0] = -gain * (float(x[b, t] @ u) - margin)
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.eye(4, 64))
        sae.W_dec[0] = u
    return sae


def _planted(tiny, ids):
    """(x, u, b, t, sae): resid_pre of ids, a random unit direction u, and a planted SAE whose
    latent 0 fires only at (b, t), the largest projection on u among positions >= 1."""
    x = residuals(tiny, ids, [LAYER])[LAYER]
    u = torch.nn.functional.normalize(torch.randn(64), dim=0)
    proj = x[:, 1:] @ u
    b, t = divmod(int(proj.argmax()), proj.shape[1])
    return x, u, b, t + 1, _planted_sae(x, u, b, t + 1)


def test_ablating_a_planted_latent_changes_exactly_the_logits_it_should(tiny, ids):
    x, u, b, t, sae = _planted(tiny, ids)
    codes = sae.encode(x)[..., 0].detach()
    assert codes.gt(0).sum() == 1 and codes[b, t] == pytest.approx(5.0, rel=1e-3)
    clean = I.intervened_logits(tiny, ids, LAYER)
    ablated = I.intervened_logits(tiny, ids, LAYER, I.ablate(sae, 0))
    other = [i for i in range(len(ids)) if i != b]
    assert torch.equal(ablated[other], clean[other]), "sequences where it never fires are untouched"
    assert torch.equal(ablated[b, :t], clean[b, :t]), "positions before the firing token are untouched"
    assert (ablated[b, t:] - clean[b, t:]).abs().amax(-1).min() > 1e-4, "it and every later position change"
    expected = logits_with_resid(tiny, ids, LAYER, replace=lambda r: r - sae.encode(r)[..., :1] * u)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-5)
    effect = I.ablation_effect(tiny, ids, LAYER, sae, 0)
    np.testing.assert_array_equal(effect.codes > 0, (codes > 0).numpy())
    assert np.all(effect.delta_ce[other] == 0) and np.all(effect.delta_ce[b, :t] == 0)
    assert np.abs(effect.delta_ce[b, t:]).min() > 0
    # a latent that never fires: ablation is a no-op
    assert torch.equal(I.intervened_logits(tiny, ids, LAYER, I.ablate(sae, 1)), clean)


def test_steered_generation_matches_recomputing_the_steered_prompt_token_by_token(tiny, ids):
    u = torch.randn(64)
    edit = I.Steer(u, 3.0, from_position=4)
    got = I.generate(tiny, ids[:1], LAYER, edit, max_new_tokens=5)
    seq = ids[:1]
    for _ in range(5):  # no KV cache: the whole sequence each step, so positions are known exactly
        nxt = I.intervened_logits(tiny, seq, LAYER, edit)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(got, seq[:, ids.shape[1] :])
    assert torch.equal(
        I.generate(tiny, ids[:1], LAYER, I.Steer(u, 0.0), 5),
        tiny._module.generate(ids[:1], max_new_tokens=5, do_sample=False)[:, ids.shape[1] :],
    )


def test_steering_curve_is_zero_kl_at_alpha_zero_and_raises_the_promoted_tokens(tiny, ids):
    W_U = tiny._module.lm_head.weight.detach()
    u = torch.nn.functional.normalize(W_U[65], dim=0)  # the unembedding row of token 65, 'A'
    curve = I.steering_curve(tiny, ids, LAYER, u, scale=1.0, alphas=[0, 2, 8], targets={"A": [65], "B": [66]})
    assert curve.kl[0] == 0
    assert np.all(np.diff(curve.kl) > 0)
    p = curve.target_prob["A"]
    assert p[2] > 2 * p[0], p
    assert curve.lift("A")[0] == 1.0 and curve.lift("A")[2] == pytest.approx(p[2] / p[0])
    # by hand: the mean over steered positions 1..T-2 of softmax(logits)[65] at alpha 8
    logits = I.intervened_logits(tiny, ids, LAYER, I.Steer(u, 8.0))
    assert p[2] == pytest.approx(float(torch.softmax(logits[:, 1:-1], -1)[..., 65].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="never fires"):
        I.steering_curve(tiny, ids, LAYER, u, scale=float("nan"), alphas=[0, 1], targets={"A": [65]})


def test_mean_nonzero__the_typical_activation_is_the_mean_of_the_nonzero_codes():
    sae = make_sae(SAEConfig("relu", 4, 3), seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[2.0, -1, 0, 0], [4.0, -3, 0, 0], [-1.0, 0, 0, 0]])
    with torch.no_grad():
        got = I.mean_nonzero(sae.encode(x)[:, [0, 1]])
    assert got[0] == pytest.approx(3.0) and np.isnan(got[1])


def test_pick_features_prefers_twin_found_then_concentrated_then_dense():
    share = np.array([1.0, 1.0, 0.5, np.nan, 1.0, 0.9])
    density = np.array([0.01, 0.015, 0.01, 0.01, 0.5, 0.001])
    twin = np.array([0.95, 0.5, 0.95, 0.99, 0.99, 0.95])
    # 3 unscored, 4 outside the density band; twin-found first (0, 2, 5) by share then density
    assert I.pick_features(share, density, twin, n=4) == [0, 5, 2, 1]
    assert I.pick_features(share, np.array([0.9, 0.9, 0.9, 0.9, 0.95, 0.9]), twin, n=2) == [4, 0], (
        "empty band: all scored"
    )
    # no proxy score (notebook 05): the band's latents by twin cosine; 3 is in the band now, 4 still is not
    assert I.pick_features(None, density, twin, n=3) == [3, 0, 2], "ties on twin cos broken by density"


def test_effect_targets_finds_the_token_a_planted_unembedding_direction_promotes(tiny, ids):
    W_U = tiny._module.lm_head.weight.detach()
    u = torch.nn.functional.normalize(W_U[65], dim=0)
    assert 65 in I.effect_targets(tiny, ids, 3, u, coef=20.0, n=3)


def test_feature_effects_ablates_where_it_fires_and_previews_clean_and_steered(tiny, ids):
    x, _, b, _, sae = _planted(tiny, ids)
    codes = sae.encode(x)[..., 0].detach().numpy()
    decode = lambda toks: ",".join(map(str, toks))  # noqa: E731
    eff = I.feature_effects(
        tiny,
        sae,
        LAYER,
        0,
        ids,
        codes,
        ids[:1, :5],
        scale=5.0,
        decode=decode,
        n_seq=1,
        length=10,
        alphas=(2,),
        new_tokens=3,
        n_rises=2,
    )
    assert eff.mean_fired != 0 and len(eff.rises) == 2
    clean = tiny._module.generate(ids[:1, :5], max_new_tokens=3, do_sample=False)[0, 5:].tolist()
    assert eff.steering[0] == ("clean", decode(clean)) and eff.steering[1][0] == "steer alpha 2"
    assert I.firing_sequences(codes, 1, 10)[0] == b


def test_mean_and_resample_ablation_change_exactly_the_firing_positions_on_by_hand_amounts(tiny, ids):
    x, u, b, t, sae = _planted(tiny, ids)
    codes = sae.encode(x)[..., 0].detach()  # fires only at (b, t), value ~5
    pool = torch.tensor([0.0, 0.0, 1.0, 3.0])  # the latent's values at held-out tokens: mean 1.0
    clean = I.intervened_logits(tiny, ids, LAYER)
    for mode in ("mean", "resample"):
        edit = I.ablation_edit(sae, 0, mode, pool, seed=3)
        v = torch.full_like(codes, 1.0) if mode == "mean" else I.resample_values(pool, codes.shape, seed=3)
        got = I.intervened_logits(tiny, ids, LAYER, edit)
        # by hand: resid_pre + (v - c) * u where the latent fires, nothing elsewhere
        hand = logits_with_resid(
            tiny,
            ids,
            LAYER,
            replace=lambda r, v=v: r + ((v - sae.encode(r)[..., 0]) * (codes > 0))[..., None] * u,
        )
        torch.testing.assert_close(got, hand, rtol=0, atol=1e-5)
        other = [i for i in range(len(ids)) if i != b]
        assert torch.equal(got[other], clean[other]), f"{mode}: sequences where it never fires are untouched"
        assert torch.equal(got[b, :t], clean[b, :t]), (
            f"{mode}: positions before the firing token are untouched"
        )
        assert (got[b, t:] - clean[b, t:]).abs().amax(-1).min() > 1e-5, (
            f"{mode}: it and every later position change"
        )
        eff = I.ablation_effect(tiny, ids, LAYER, sae, 0, mode=mode, pool=pool, seed=3)
        assert np.all(eff.delta_ce[other] == 0) and np.all(eff.delta_ce[b, :t] == 0)
    assert (
        I.resample_values(pool, (2, 3), seed=3).tolist() == I.resample_values(pool, (2, 3), seed=3).tolist()
    )
    assert set(I.resample_values(pool, (50,), seed=0).tolist()) <= {0.0, 1.0, 3.0}
    with pytest.raises(ValueError, match="needs pool"):
        I.ablation_edit(sae, 0, "mean")
    with pytest.raises(ValueError, match="valid: zero, mean, resample"):
        I.ablation_edit(sae, 0, "noise", pool)


def test_pick_context_features__stable_spread_out_latents_in_the_band_only():
    share = np.array([0.9, 0.2, 0.25, np.nan, 0.1, 0.3, 0.05])
    density = np.array([0.01, 0.01, 0.01, 0.01, 0.5, 0.01, 0.01])
    twin = np.array([0.99, 0.95, 0.97, 0.99, 0.99, 0.97, 0.5])
    # 0 is a token feature, 3 unscored, 4 outside the band, 6 not found by the twin
    assert I.pick_context_features(share, density, twin, n=3) == [2, 5, 1], "twin cos, then lower share"
    assert I.pick_context_features(share, density, twin, n=3, max_share=0.2) == [1]
    assert I.pick_context_features(share, density, twin, max_share=0.01) == []


def test_steering_curve_table__one_row_per_alpha_with_the_lift_of_the_named_targets():
    curve = I.SteeringCurve(np.array([0.0, 2.0]), {"t": np.array([0.1, 0.3])}, np.array([0.0, 0.5]))
    got = curve.table("t")
    assert list(got.columns) == ["alpha", "KL", "lift"]
    assert got.values.tolist() == [[0.0, 0.0, 1.0], [2.0, 0.5, pytest.approx(3.0)]]
