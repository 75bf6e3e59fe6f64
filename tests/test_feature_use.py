"""Notebook 06's per-feature runners and tables (helpers.analysis.feature_use) and its study
(helpers.analysis.feature_study), on a tiny random model and a store of its own residuals."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.analysis import baselines, feature_study, feature_use
from helpers.analysis import interventions as interv
from helpers.analysis.heldout import HeldOut, Picked
from helpers.analysis.steering_vectors import mean_difference
from helpers.data.store import ActivationStore, StoreRequest, StoreWriter
from helpers.model.models import load_model
from helpers.model.residuals import residuals
from helpers.profiles import get_profile
from helpers.report import findings
from helpers.sae import make_sae
from helpers.sae.base import SAEConfig

LAYER, T, BOS, N_SEQ, SHARD = 2, 12, 256, 12, 4  # 3 shards of 4 sequences: the last is held out


def _store(path, model, low: int, seed: int) -> ActivationStore:
    """12 sequences of token ids in [low, low + 40) (BOS first) and their resid_pre at LAYER."""
    ids = torch.randint(low, low + 40, (N_SEQ, T), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = BOS
    acts = residuals(model, ids, [LAYER])[LAYER].numpy()
    req = StoreRequest("tiny-llama", f"planted-{low}", (LAYER,), T, N_SEQ, "float32", 0, SHARD)
    w = StoreWriter(path, req, {"d_model": acts.shape[-1], "bos_id": BOS, "bos_note": ""})
    for s in range(N_SEQ // SHARD):
        rows = slice(s * SHARD, (s + 1) * SHARD)
        w.write_shard(s, ids[rows].numpy().astype(np.int32), {LAYER: acts[rows]})
    return ActivationStore(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    model = load_model("tiny-llama")
    store = _store(tmp_path_factory.mktemp("main"), model, 40, 0)
    other = _store(tmp_path_factory.mktemp("other"), model, 120, 1)
    sae = make_sae(SAEConfig("relu", 64, 32), seed=0)
    twin = make_sae(SAEConfig("relu", 64, 32), seed=1)
    held = HeldOut(store, LAYER, massive_ratio=None)
    picked = Picked([3, 5], [7], np.zeros(32))  # two "token" latents and one "context" latent
    return model, store, other, sae, twin, held, picked


def _decode(ids):
    return ",".join(str(int(i)) for i in ids)


def test_features_of__rule_top_token_and_typical_activation_of_each_picked_latent(lab):
    *_, sae, _, held, picked = lab
    feats = feature_use.features_of(held, sae, picked, _decode)
    codes = sae.encode(held.x).detach()
    top = held.stats(sae).top_token
    assert feats.ids == [3, 5, 7] and feats.kinds == ["token", "token", "context"]
    assert feats.tokens == [str(int(top[f])) for f in (3, 5, 7)]
    np.testing.assert_allclose(feats.scales, interv.mean_nonzero(codes[:, [3, 5, 7]]), rtol=1e-6)
    assert feats.labels[2] == f"f7 '{feats.tokens[2]}' (context)"
    assert [f for f, _, _ in feats.items()] == [3, 5, 7]


def test_feature_table__one_row_per_latent_from_the_held_out_view(lab):
    *_, sae, _, held, picked = lab
    feats = feature_use.features_of(held, sae, picked, _decode)
    lens = {f: type("Lens", (), {"promoted": [("a", 1, 2.0), ("b", 2, 1.0)]})() for f in feats.ids}
    table = feature_use.feature_table(held, sae, picked, feats, lens)
    dens = (sae.encode(held.x) > 0).double().mean(0)
    assert list(table.index) == [3, 5, 7] and list(table["rule"]) == ["token", "token", "context"]
    assert table.loc[5, "fires on"] == f"{float(dens[5]):.2%}"
    assert table.loc[7, "logit lens (promoted)"] == "'a' 'b'"
    assert table.loc[3, "typical activation"] == round(float(feats.scales[0]), 2)


def _curves():
    return {
        "f1": {"alphas": np.array([0, 4]), "effect_lift": [1.0, 3.0], "lens_lift": [1.0, 2.0],
               "kl": [0.0, 0.5], "effect_tokens": [7, 8]},
        "f2": {"alphas": np.array([0, 4]), "effect_lift": [1.0, 1.5], "lens_lift": [1.0, 0.9],
               "kl": [0.0, 0.25], "effect_tokens": [9]},
    }  # fmt: skip


def test_at_alpha_and_steering_table__read_each_curve_at_one_measured_alpha():
    assert feature_use.at_alpha(_curves(), "effect_lift", 4) == [3.0, 1.5]
    with pytest.raises(ValueError, match="not measured"):
        feature_use.at_alpha(_curves(), "kl", 2)
    table = feature_use.steering_table(_curves(), 4, _decode)
    assert table.loc["f2"].tolist() == [1.5, 0.9, 0.25, "'9'"]
    assert table.loc["f1", "effect tokens"] == "'7' '8'"


def test_steering_curves__the_curve_of_each_latent_on_its_own_effect_tokens(lab):
    model, *_, sae, _, held, picked = lab
    feats = feature_use.features_of(held, sae, dataclasses.replace(picked, token=[3], context=[]), _decode)
    text = torch.from_numpy(held.sequence_tokens)
    curves = feature_use.steering_curves(
        model, LAYER, sae, feats, {3: [65, 66]}, text[:2], text[2:], [0, 2, 4]
    )
    (c,) = curves.values()
    u, s = sae.W_dec[3].detach(), float(feats.scales[0])
    assert c["effect_tokens"] == interv.effect_targets(model, text[2:], LAYER, u, 4 * s)
    hand = interv.steering_curve(model, text[:2], LAYER, u, s, [0, 2, 4], {"lens": [65, 66]})
    np.testing.assert_allclose(c["lens_lift"], hand.lift("lens"))
    np.testing.assert_allclose(c["kl"], hand.kl)
    assert c["kl"][0] == 0 and c["effect_lift"][0] == 1.0


def test_generations__clean_steered_and_clamped_continuations_per_latent(lab):
    model, *_, sae, _, held, picked = lab
    feats = feature_use.features_of(held, sae, picked, _decode)
    prompt = torch.from_numpy(held.sequence_tokens[:1, :5])
    got = feature_use.generations(model, LAYER, sae, feats, prompt, 2, _decode)
    assert list(got.index) == [3, 5, 7] and list(got.columns) == [
        "clean",
        "steer a=2",
        "steer a=8",
        "clamp 4x",
    ]
    clean = model._module.generate(prompt, max_new_tokens=2, do_sample=False)[0, 5:]
    assert set(got["clean"]) == {repr(_decode(clean))}
    steer = interv.generate(
        model, prompt, LAYER, interv.Steer(sae.W_dec[5].detach(), 8 * float(feats.scales[1])), 2
    )
    assert got.loc[5, "steer a=8"] == repr(_decode(steer[0]))


def test_ablations__every_mode_on_the_sequences_where_each_latent_fires_most(lab):
    model, *_, sae, _, held, picked = lab
    feats = feature_use.features_of(held, sae, dataclasses.replace(picked, token=[5], context=[]), _decode)
    got = feature_use.ablations(model, LAYER, sae, held, feats, length=8, n_seq=2)
    (by_mode,) = got.values()
    assert list(by_mode) == ["zero", "mean", "resample"]
    acts = np.array(held.store.shard_acts(2, LAYER), dtype=np.float32)  # the held-out shard [4, T, d]
    codes = sae.encode(torch.from_numpy(acts)).detach()[..., 5]
    seqs = interv.firing_sequences(codes[:, :8].numpy(), 2, 8)  # no token of this store is left out
    text = torch.from_numpy(held.sequence_tokens)[seqs, :8]
    hand = interv.ablation_effect(model, text, LAYER, sae, 5)
    np.testing.assert_allclose(by_mode["zero"].delta_ce, hand.delta_ce)
    pool = held.values(sae, [5])[:, 0]
    mean = interv.ablation_effect(model, text, LAYER, sae, 5, mode="mean", pool=pool)
    np.testing.assert_allclose(by_mode["mean"].delta_ce, mean.delta_ce)


def _effect(codes, delta):
    return interv.AblationEffect(np.array([codes], float), np.array([delta], float), np.array([[1, 2, 3, 4]]))


def test_ablation_tables__means_where_the_latent_fired_and_elsewhere_per_mode():
    # fired at positions 0 and 2 (predicting 1 and 3); not at 1
    variants = {
        "f1": {
            "zero": _effect([1, 0, 2, 0], [0.3, 0.1, 0.5]),
            "mean": _effect([1, 0, 2, 0], [0.1, 0.0, 0.1]),
        },
        "f2": {
            "zero": _effect([0, 1, 0, 0], [0.0, -0.2, 0.4]),
            "mean": _effect([0, 1, 0, 0], [0.0, 0.2, 0.0]),
        },
        "f3": {"zero": _effect([1, 0, 0, 0], [0.5, 0, 0]), "mean": _effect([1, 0, 0, 0], [0.5, 0, 0])},
    }
    table = feature_use.ablation_table(variants)
    assert list(table.columns) == ["zero: fired", "zero: elsewhere", "mean: fired", "mean: elsewhere"]
    assert table.loc["f1"].tolist() == pytest.approx([0.4, 0.1, 0.1, 0.0])
    assert table.loc["f2"].tolist() == pytest.approx([-0.2, 0.2, 0.2, 0.0])
    # spread where it fired: f1 0.4 - 0.1 = 0.3, f2 0.2 - (-0.2) = 0.4, f3 0; where it fired zero's mean
    # is (0.4 - 0.2 + 0.5) / 3, mean ablation's (0.1 + 0.2 + 0.5) / 3
    got = feature_use.ablation_spread(table, modes=("zero", "mean"))
    assert got.startswith("Across the 3 features the 2 ablations differ by at most 0.400 nats")
    assert "(median 0.300)" in got, "the median spread, not the mean (0.233)"
    assert "zero ablation's +0.233, mean ablation's +0.267" in got
    zero = feature_use.zero_ablation_table(variants, _decode, n_rises=1, before=1)
    assert zero.loc["f1", ["fired", "elsewhere"]].tolist() == pytest.approx([0.4, 0.1])
    assert zero.loc["f2", "largest rises"] == "'2,3' -> '4' +0.40"


def test_fit_rows__training_rows_under_the_view_s_policy(lab):
    _, store, *_, held, _ = lab
    got = feature_study.fit_rows(held, 10, n_shards=1)
    x, _ = store.token_rows(LAYER, [1], (0,), (BOS,))  # the last training shard, position 0 and BOS out
    assert got.shape == (10, 64)
    assert all(((x - r).abs().amax(1) == 0).any() for r in got), "each row is a training row"
    assert len(feature_study.fit_rows(held, 10_000, n_shards=2)) == 2 * SHARD * (T - 1)


def test_caa_vs_latent__the_mean_difference_against_its_closest_latent_at_equal_kl(lab):
    model, _, other, sae, _, held, _ = lab
    other_held = HeldOut(other, LAYER, massive_ratio=None)
    got = feature_study.caa_vs_latent(model, LAYER, sae, held, other_held, 1, 8, [0, 0.5, 1], [0, 2, 4])
    v = mean_difference(held.x, other_held.x)
    assert got.v_norm == pytest.approx(float(v.norm()))
    cos = torch.nn.functional.cosine_similarity(sae.W_dec.detach(), v[None], dim=1)
    assert got.latents[0] == int(cos.argmax()) and got.cos[0] == pytest.approx(float(cos.max()), rel=1e-5)
    assert got.latent == next(int(f) for f in got.latents if np.isfinite(held.typical(sae)[f]))
    assert got.latent_cos == pytest.approx(float(cos[got.latent]), rel=1e-5), "the steered latent's own cos"
    assert got.caa_curve.kl[0] == 0 and list(got.curves) == [
        "CAA (mean difference)",
        f"SAE latent {got.latent}",
    ]
    assert got.cmp.kl == pytest.approx(min(got.caa_curve.kl.max(), got.latent_curve.kl.max()))
    assert f"{got.v_norm:.2f}" in got.describe(_decode)


def test_baseline_comparison__the_sae_against_the_four_baselines_on_held_out_rows(lab):
    *_, sae, _, held, _ = lab
    got = feature_study.baseline_comparison(sae, held, n_fit=60, max_ica=4)
    assert list(got.table.index) == ["SAE", "PCA", "ICA", "random", "neurons"]
    assert got.n_ica == 4 and got.k == 32, "a ReLU SAE has no k: every dictionary keeps 32 terms"
    x_fit = feature_study.fit_rows(held, 60)
    assert got.ica_subspace == pytest.approx(baselines.variance_share(x_fit, held.x, 4))
    assert got.table.loc["SAE", "fvu"] == pytest.approx(baselines.sae_reconstruction(sae, held.x)["fvu"])
    assert "ICA: 4 components" in got.ica_note()


def test_feature_study__computes_each_part_once_and_its_summary_is_the_findings_record(lab, monkeypatch):
    model, store, other, sae, _, held, picked = lab
    profile = dataclasses.replace(
        get_profile("tiny"),
        context_seqs=1, context_len=8, prompt_len=4, new_tokens=2, ablation_len=8, steering_fit_tokens=40,
    )  # fmt: skip
    picked = dataclasses.replace(picked, token=[3], context=[7])
    lens = {f: type("Lens", (), {"promoted": [("A", 65, 1.0)]})() for f in picked.all}
    study = feature_study.FeatureStudy(
        profile, model, sae, held, HeldOut(other, LAYER, massive_ratio=None), picked, lens, _decode
    )
    calls = []
    real = feature_study.steering_curves
    monkeypatch.setattr(feature_study, "steering_curves", lambda *a: calls.append(1) or real(*a))
    curves = study.steering_curves()
    assert study.steering_curves() is curves and calls == [1], "computed once, then kept"
    assert study.prompt.tolist() == [held.sequence_tokens[2, :4].tolist()]
    values = study.summary()
    rec = findings.from_values(findings.UsingFeaturesFindings, values)
    assert calls == [1] and rec.features == [3, 7] and rec.kinds == ["token", "context"]
    assert rec.effect_lift_a4 == feature_use.at_alpha(curves, "effect_lift", 4)
    assert rec.ablation_fired == [float(v["zero"].mean_where(True)) for v in study.ablations().values()]
    assert (
        rec.caa.latent == study.caa().latent and rec.fvu["SAE"] == study.baselines().table.loc["SAE", "fvu"]
    )
    assert isinstance(study.generations(), pd.DataFrame) and len(rec.sentences()) == 4
