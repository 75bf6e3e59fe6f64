import re

import numpy as np
import pytest
import torch

from helpers.analysis.contexts import Context, top_activations
from helpers.report.browser import (
    FeatureBrowser,
    export_feature_pages,
    page_name,
    render_feature_html,
)
from helpers.report.feature_card import CardSource, FeatureCard, activation_histogram, logit_lens

VOCAB = ["<b>", "a&b", "\n", " the", "cat", "dog", "x", "y"]


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def make_card(feature=3, acts=(0.5, 2.0, 1.0), tokens=(0, 1, 2), sae="L6/seed42"):
    ctx = Context(
        seq_id=4,
        position=7,
        value=max(acts),
        tokens=np.array(tokens),
        acts=np.array(acts, dtype=np.float32),
        target=int(np.argmax(acts)),
    )
    return FeatureCard(
        sae,
        feature,
        density=0.0123,
        contexts=[ctx],
        hist_counts=np.array([3, 0, 5]),
        hist_edges=np.array([0.1, 1.0, 10.0, 100.0]),
        position_profile=np.array([5.0, 1.0, 2.0]),
        matches=[("L6/seed49", 17, 0.91)],
    )


def test_logit_lens__matches_hand_computed_logits_in_both_layouts():
    W_U = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.0, 1.0, 3.0, -1.0]])  # [d=2, vocab=4]
    # direction [1, 2] -> logits [1, 2, 5, 0]
    lens = logit_lens(torch.tensor([1.0, 2.0]), W_U, lambda ids: f"t{ids[0]}", k=2)
    assert [(t, i) for t, i, _ in lens.promoted] == [("t2", 2), ("t1", 1)]
    assert [v for _, _, v in lens.promoted] == [5.0, 2.0]
    assert [(i, v) for _, i, v in lens.suppressed] == [(3, 0.0), (0, 1.0)], (
        "suppressed = lowest logits, ascending"
    )
    # norm weight [1, -1]: v = [1, -2] -> logits [1, -2, -7, 4]; [vocab, d] layout gives the same
    lens2 = logit_lens(
        np.array([1.0, 2.0]), W_U.T.numpy(), lambda ids: str(ids[0]), k=2, norm_weight=[1.0, -1.0]
    )
    assert [(i, v) for _, i, v in lens2.promoted] == [(3, 4.0), (0, 1.0)]
    assert [(i, v) for _, i, v in lens2.suppressed] == [(2, -7.0), (1, -2.0)]
    with pytest.raises(ValueError, match="square"):
        logit_lens(torch.ones(2), torch.ones(2, 2), decode)


def test_render_feature_html__highlights_tokens_escapes_and_shows_newlines():
    page = render_feature_html(make_card(), decode)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    # alpha = act / max act: 0.5 / 2 = 0.25 on "<b>" (escaped), 1.0 on "a&b", 0.5 on the newline
    assert 'style="background-color:rgba(255,102,0,0.250)" title="act=0.5">&lt;b&gt;</span>' in page
    assert 'rgba(255,102,0,1.000)" title="act=2">a&amp;b</span>' in page
    assert 'rgba(255,102,0,0.500)" title="act=1">⏎</span>' in page
    assert "<b>" not in page.replace("<b>promoted", "").replace("<b>suppressed", ""), (
        "raw token text must be escaped"
    )
    assert 'class="tok anchor"' in page, "the top-activating token is marked"
    assert "L6/seed49" in page and "0.910" in page
    assert page.count("<svg") == 2, "histogram and position profile are inline SVG"


def test_export_feature_pages__writes_pages_index_and_atlas_links(tmp_path):
    cards = [make_card(3), make_card(5, acts=(1.0, 0.0, 4.0), tokens=(3, 4, 5))]
    index = export_feature_pages(
        cards,
        tmp_path,
        decode,
        atlas={"L6/seed42": np.random.rand(8, 2)},
        atlas_density={"L6/seed42": np.linspace(0, 1e-2, 8)},
    )
    names = [page_name("L6/seed42", 3), page_name("L6/seed42", 5)]
    assert all((tmp_path / n).exists() for n in names) and "/" not in names[0]
    text = index.read_text(encoding="utf-8")
    assert all(f'href="{n}"' in text for n in names)
    assert text.count("<circle") == 8 and text.count("</title></circle>") == 8, "one tooltip per atlas point"
    second = (tmp_path / names[1]).read_text(encoding="utf-8")
    assert 'rgba(255,102,0,0.250)" title="act=1"> the</span>' in second, (
        "leading space kept (white-space:pre)"
    )


def test_activation_histogram__counts_only_nonzero_values():
    counts, edges = activation_histogram(np.array([0.0, 0.0, 1.0, 2.0, 4.0, -1.0]), bins=2)
    np.testing.assert_allclose(edges, [1.0, 2.0, 4.0])
    assert counts.tolist() == [1, 2]


def test_feature_browser__updates_html_when_feature_or_sae_changes():
    cards = {("A", f): make_card(f, tokens=(3, 4 + f % 2, 6), sae="A") for f in range(4)}
    cards[("B", 0)] = make_card(0, tokens=(7, 7, 7), sae="B")
    providers = {"A": lambda f: cards[("A", f)], "B": lambda f: cards[("B", f)]}
    browser = FeatureBrowser(providers, decode)
    first = browser.html.value
    assert "A · feature 0" in first and ">cat</span>" in first
    browser.feature.value = 1
    assert (
        browser.html.value != first
        and "A · feature 1" in browser.html.value
        and ">dog</span>" in browser.html.value
    )
    png = browser.plots.outputs[0]["data"]["image/png"]
    assert len(png) > 100, "the Output must hold the card's matplotlib plots as PNG"
    browser.next.click()
    assert browser.feature.value == 2 and "A · feature 2" in browser.html.value
    browser.show("B", 0)
    assert "B · feature 0" in browser.html.value and ">y</span>" in browser.html.value


def test_feature_browser__bounds_feature_by_provider_length_and_card_source_end_to_end():
    n_seq, T, d, d_sae = 4, 6, 3, 5
    acts = torch.randn(n_seq, T, d)
    tokens = torch.randint(0, len(VOCAB), (n_seq, T))
    W_enc, W_dec = torch.randn(d, d_sae), torch.randn(d_sae, d)
    enc = lambda x: torch.relu(x @ W_enc)  # noqa: E731
    top = top_activations([enc(acts)], d_sae=d_sae, n_top=3, hist_edges=torch.linspace(0, 5, 6))
    src = CardSource(
        "toy",
        W_dec,
        top,
        tokens,
        acts,
        enc,
        tokenizer_decode=decode,
        W_U=torch.randn(d, len(VOCAB)),
        position_profile=torch.rand(d_sae, T),
        n_contexts=2,
    )
    browser = FeatureBrowser({"toy": src}, decode)
    assert browser.feature.max == d_sae - 1
    f = int(torch.argmax(top.fire_counts))
    browser.feature.value = f
    card = browser.card("toy", f)
    assert card.density == pytest.approx(float(top.density[f]))
    assert card.contexts[0].acts[card.contexts[0].target] == pytest.approx(float(top.values[f, 0]), rel=1e-5)
    assert card.logit_lens is not None and len(card.logit_lens.promoted) == 10 - 2  # vocab 8 < k
    shown = re.findall(r'title="act=([^"]+)"', browser.html.value)
    assert len(shown) == sum(len(c.tokens) for c in card.contexts)
    with pytest.raises(ValueError, match="unknown SAE"):
        browser.card("nope", 0)


def test_render_feature_html__shows_the_ablation_effect_and_steering_preview_escaped():
    from helpers.analysis.interventions import FeatureEffects

    card = make_card()
    card.effects = FeatureEffects(
        0.6391,
        -0.0123,
        [("Return a", " <shallow>", 5.97)],
        "def f():\n",
        [("clean", " return 1"), ("steer alpha 8", " a a a")],
    )
    page = render_feature_html(card, decode)
    assert "+0.639 nats where it fired, -0.012 elsewhere" in page
    assert "&lt;shallow&gt;" in page and "<shallow>" not in page and "+5.97" in page
    assert "steer alpha 8" in page and "def f():⏎" in page
    assert "steering preview" not in render_feature_html(make_card(), decode), "no effects, no section"


def test_pages_to_export__first_the_given_then_firing_latents_spread_by_frequency():
    from helpers.report.browser import pages_to_export

    counts = np.array([0, 50, 40, 30, 20, 10, 0, 5])  # firing: 1, 2, 3, 4, 5, 7 (most frequent first)
    assert pages_to_export([6], counts, n_spread=3) == [6, 1, 3, 5], "every 2nd of the 6 firing latents"
    assert pages_to_export([3, 7], counts, n_spread=3) == [3, 7, 1, 5], "3 is not repeated"
    assert pages_to_export([], counts, n_spread=10) == [1, 2, 3, 4, 5, 7], "fewer firing than asked: all"


def test_top_matches__k_best_cosines_in_each_other_sae_best_first():
    from helpers.report.feature_card import top_matches

    W = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    others = {"twin": torch.tensor([[0.0, 1.0], [3.0, 4.0], [-1.0, 0.0]]), "one": torch.tensor([[1.0, 1.0]])}
    fn = top_matches(W, others, k=2)
    got = fn(0)
    assert [(n, i) for n, i, _ in got] == [("twin", 1), ("twin", 0), ("one", 0)]
    assert [v for _, _, v in got] == pytest.approx([0.6, 0.0, 2**-0.5], abs=1e-6)
    assert [(n, i, round(v, 6)) for n, i, v in fn(1)][:2] == [("twin", 0, 1.0), ("twin", 1, 0.8)]


def test_mean_activation_by_position__sum_over_tokens_per_position_transposed():
    from helpers.analysis.positions import PositionStatsResult
    from helpers.report.feature_card import mean_activation_by_position

    T, m = 3, 2
    z = np.zeros
    stats = PositionStatsResult(
        tokens=np.array([4, 2, 0]),
        pl_sum=np.array([[8.0, 2.0], [1.0, 0.0], [0.0, 0.0]]),
        pl_nnz=z((T, m), np.int32),
        pos_sumsq=z(T),
        sumsq_first=z(m),
        sumsq_rest=z(m),
        hist_first=z((m, 3), np.int32),
        hist_rest=z((m, 3), np.int32),
        bin_edges=z(2),
    )
    np.testing.assert_allclose(mean_activation_by_position(stats), [[2.0, 0.5, 0.0], [0.5, 0.0, 0.0]])


def test_describe_latent__reads_the_held_out_stats_of_that_latent():
    from helpers.analysis.heldout import LatentStats
    from helpers.report.feature_card import describe_latent

    stats = LatentStats(
        density=np.array([0.5, 0.0123]),
        typical=np.array([1.0, 2.5]),
        share=np.array([np.nan, 0.25]),
        top_token=np.array([-1, 4]),
        n_tokens=100,
    )
    line = describe_latent(1, stats, np.array([0.1, 0.934]), decode)
    assert line == (
        "feature 1: best cosine to the seed twin 0.93, fires on 1.23% of held-out tokens, typical activation "
        "2.5; its most common top-20 token 'cat' holds 25% of them"
    )
    assert "token None" in describe_latent(0, stats, np.array([0.1, 0.9]), decode), "unscored latent"


def test_heldout_card_source__reads_density_contexts_and_the_steering_unit_from_the_held_out_view(
    tmp_path, monkeypatch
):
    from helpers.analysis.heldout import HeldOut
    from helpers.analysis.positions import PositionStatsResult
    from helpers.data.collect import collect, make_request
    from helpers.model.models import load_model
    from helpers.report import feature_card
    from helpers.sae import make_sae
    from helpers.sae.base import SAEConfig

    model = load_model("tiny-llama")
    req = make_request(
        "tiny-llama", "synthetic-a", [2], n_tokens=12 * 16, seq_len=16, dtype="float32", shard_seqs=4
    )
    store = collect(req, tmp_path / "store", model, batch_size=4, progress=False)
    sae, twin = (make_sae(SAEConfig("topk", 64, 32, k=4), seed=s) for s in (0, 1))
    held = HeldOut(store, 2, 1.5)
    m, z = 32, np.zeros
    pos = PositionStatsResult(
        np.full(16, 2),
        np.arange(16 * m, dtype=float).reshape(16, m),
        z((16, m), np.int32),
        z(16),
        z(m),
        z(m),
        z((m, 3), np.int32),
        z((m, 3), np.int32),
        z(2),
    )
    calls = []
    monkeypatch.setattr(feature_card, "feature_effects", lambda *a, **kw: calls.append((a, kw)) or "effects")
    src = feature_card.heldout_card_source("toy", held, sae, model, {"twin": twin}, pos, prompt_len=5)
    f = int(np.argmax(held.density(sae)))
    card = src.card(f)
    assert card.density == pytest.approx(held.density(sae)[f]) and held.density(sae)[f] > 0
    assert card.contexts[0].value == pytest.approx(float(held.values(sae, [f]).max()), rel=1e-5)
    assert {int(s) for s in src.top.seq_ids[f] if s >= 0} <= set(held.sequence_ids.tolist()), "held-out only"
    np.testing.assert_allclose(card.position_profile, np.arange(16) * m / 2 + f / 2)
    unit = lambda W: torch.nn.functional.normalize(W.detach(), dim=-1)
    cos = unit(twin.W_dec) @ unit(sae.W_dec[f])  # [32] latent f's cosine with each twin row
    assert card.matches[0] == ("twin", int(cos.argmax()), pytest.approx(float(cos.max()), abs=1e-5))
    ((args, kw),) = calls
    assert card.effects == "effects" and args[2:4] == (2, f)
    np.testing.assert_array_equal(args[4], held.sequence_tokens)
    np.testing.assert_array_equal(args[5], held.grid(sae, [f])[..., 0])
    assert args[6].tolist() == held.sequence_tokens[-1:, :5].tolist()
    assert args[7] == held.typical(sae)[f], "the steering unit is the held-out typical activation"
    assert kw["length"] == 16
    assert src.card(f, effects=False).effects is None and len(calls) == 1
    with pytest.warns(UserWarning, match="position statistics cover 32 latents"):
        wide = feature_card.heldout_card_source(
            "w", held, make_sae(SAEConfig("topk", 64, 48, k=4), seed=2), model, None, pos
        )
    assert wide.position_profile is None
