"""Autointerp: sampling (latent_samples), judges (judges), explanation + detection / fuzzing scores
(autointerp). Every expected number below is worked out by hand in the comments."""

import json
import math
import re

import httpx
import numpy as np
import pytest
import torch

from helpers.analysis.autointerp import (
    auroc,
    average_ranks,
    balanced_accuracy,
    clean_explanation,
    explanation_chat,
    render,
    score_latents,
)
from helpers.analysis.judges import (
    Judge,
    OpenAIJudge,
    ScriptedJudge,
    TransformersJudge,
    chatml,
    template_kind,
)
from helpers.analysis.latent_samples import (
    Example,
    LatentSample,
    active_mask,
    can_sample,
    sample_latent,
    sample_latents,
)
from helpers.model.models import MODELS
from helpers.model.tiny import byte_tokenizer, tiny_hf

pytestmark = pytest.mark.usefixtures("one_thread")


def decode(ids):
    return "".join(chr(97 + i) for i in ids)


# --- (a) sampling ------------------------------------------------------------------------------------
def hand_grid():
    """4 sequences x 10 positions; activating: (0,3)=5 (0,4)=1 (1,6)=5 (1,7)=3 (2,2)=2 (2,8)=4, and
    (1,0)=9 at position 0, which must never count. Token id = 10 * seq + pos."""
    grid = np.zeros((4, 10), dtype=np.float32)
    for (s, p), v in {(0, 3): 5, (0, 4): 1, (1, 0): 9, (1, 6): 5, (1, 7): 3, (2, 2): 2, (2, 8): 4}.items():
        grid[s, p] = v
    return grid, np.arange(40, dtype=np.int64).reshape(4, 10)


# Windows of 2 before, 1 after without an activating token (clipped to positions 1..9), by hand:
# seq 0 (active 3, 4): 1, 7, 8, 9; seq 1 (active 6, 7): 1..4; seq 2 (active 2, 8): 5, 6; seq 3: 1..9.
CLEAN = {(0, 1), (0, 7), (0, 8), (0, 9), (1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)} | {
    (3, p) for p in range(1, 10)
}


def anchors(examples):
    return [(e.seq, e.position) for e in examples]


def test_sample_latent__top_train_stratified_test_and_clean_random_windows():
    grid, tokens = hand_grid()
    active = active_mask(grid)
    assert active.sum() == 6 and not active[1, 0], "position 0 never counts as activating"
    s = sample_latent(7, grid, tokens, active, n_train=3, n_test=2, before=2, after=1)
    # value 5 twice: (0,3) before (1,6) (earlier sequence first), then 4 at (2,8)
    assert anchors(s.train) == [(0, 3), (1, 6), (2, 8)]
    # (0,3): positions 1..4, anchor at index 2; (2,8): positions 6..9 (clipped at T-1)
    assert s.train[0].tokens.tolist() == [1, 2, 3, 4] and s.train[0].anchor == 2
    assert s.train[0].acts.tolist() == [0, 0, 5, 1]
    assert s.train[2].tokens.tolist() == [26, 27, 28, 29] and s.train[2].anchor == 2
    # remaining by value [3 (1,7), 2 (2,2)] | [1 (0,4)]: 2 bins of sizes 2 and 1, one draw each
    assert anchors(s.test_active)[0] in {(1, 7), (2, 2)} and anchors(s.test_active)[1] == (0, 4)
    assert len(s.test_random) == 2 and set(anchors(s.test_random)) <= CLEAN
    for e in s.train + s.test_active + s.test_random:
        lo = e.position - e.anchor
        assert lo >= 1, "a window must never reach position 0"
        assert e.tokens[0] == tokens[e.seq, lo] and e.tokens[e.anchor] == tokens[e.seq, e.position]
    for e in s.test_random:
        assert not e.mask().any()
    again = sample_latent(7, grid, tokens, active, n_train=3, n_test=2, before=2, after=1)
    assert anchors(again.test_active + again.test_random) == anchors(s.test_active + s.test_random)


def test_sample_latent__all_candidates_when_n_test_is_large():
    grid, tokens = hand_grid()
    s = sample_latent(7, grid, tokens, active_mask(grid), n_train=3, n_test=30, before=2, after=1)
    assert anchors(s.test_active) == [(1, 7), (2, 2), (0, 4)], "one per bin, highest bin first"
    assert not set(anchors(s.test_active)) & set(anchors(s.train))
    assert len(s.test_random) == 19 and set(anchors(s.test_random)) == CLEAN
    assert s.test_active[1].tokens.tolist() == [21, 22, 23] and s.test_active[1].anchor == 1  # (2,2) clipped


def test_sample_latent__too_few_activating_tokens_says_skip():
    grid, tokens = hand_grid()
    active = active_mask(grid)
    assert can_sample(active, n_train=4, before=2, after=1)
    assert not can_sample(active, n_train=5, before=2, after=1)
    with pytest.raises(ValueError, match="6 activating tokens.*at least n_train \\+ 2 = 7.*skip"):
        sample_latent(7, grid, tokens, active, n_train=5, before=2, after=1)


def test_sample_latents__skips_what_cannot_be_sampled():
    grid, tokens = hand_grid()
    grid_STL = np.stack([grid, np.zeros_like(grid)], axis=-1)  # latent 5 never fires
    samples, skipped = sample_latents(grid_STL, tokens, [4, 5], n_train=3, n_test=2, before=2, after=1)
    assert [s.latent for s in samples] == [4] and skipped == [5]
    assert anchors(samples[0].train) == [(0, 3), (1, 6), (2, 8)]


def test_active_mask__dense_top_fraction_over_valid_tokens():
    # valid values 1..8 (position 0 left out); numpy's 0.75 quantile = 1 + 0.75 * 7 = 6.25 -> 7 and 8
    grid = np.array([[100, 1, 2, 3, 4], [0, 5, 6, 7, 8]], dtype=np.float32)
    expected = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(active_mask(grid, 0.25), expected)
    np.testing.assert_array_equal(active_mask(grid), (grid > 0) & (np.arange(5) > 0))
    with pytest.raises(ValueError, match="fraction in \\(0, 1\\)"):
        active_mask(grid, 1.5)


# --- (b) rendering ------------------------------------------------------------------------------------
def example(tokens, acts, active=None, seq=0, position=1):
    return Example(seq, position, np.array(tokens), np.array(acts, dtype=np.float32), 0, active)


def test_render__marks_merge_adjacent_tokens():
    e = example([0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 0, 3])
    assert render(e, decode, mark=True) == "a<<bc>>de<<f>>"
    assert render(e, decode, mark=False) == "abcdef"
    assert render(e, decode, True, np.array([1, 1, 0, 0, 0, 1], dtype=bool)) == "<<ab>>cde<<f>>"
    spaced = example([0, 26, 1, 2], [0, 1, 1, 0])  # token 26 decodes to " ": the mark starts at b
    assert (
        render(spaced, lambda ids: "".join(" " if i == 26 else chr(97 + i) for i in ids), True) == "a <<b>>c"
    )
    dense = example([0, 1, 2], [0.5, 0.9, 0.7], active=np.array([False, True, True]))
    assert render(dense, decode, mark=True) == "a<<bc>>", "the example's own mask wins over acts > 0"


def test_explanation_chat_and_cleaning():
    s = LatentSample(3, [example([0, 1, 2], [0, 1, 0]), example([3, 4], [2, 2])], [], [])
    chat = explanation_chat(s, decode)
    assert chat[0]["role"] == "system" and "<<like this>>" in chat[0]["content"]
    assert chat[1]["content"] == (
        "Excerpts:\n1. a<<b>>c\n2. <<de>>\n\nWhat do the marked tokens have in common?"
    )
    assert clean_explanation('\n  Explanation: "the letter z".\nmore') == "the letter z"
    assert clean_explanation("answer: 'numbers'") == "numbers"
    assert clean_explanation("x" * 300) == "x" * 120
    listed = "The marked tokens have the following common features:\n\n1. **Linting**: The tokens are"
    assert clean_explanation(listed) == "Linting: The tokens are"
    assert clean_explanation("In common:\n* get methods") == "get methods"


# --- (c) detection and fuzzing with a scripted judge -------------------------------------------------
# actives: 'azb' 'czd' 'ezf' 'gzh' (the activating token is z); randoms 'ijk' 'lmn' 'opq' 'rst'
DETECTION = {"azb": 0.9, "czd": 0.8, "ezf": 0.6, "gzh": 0.3, "ijk": 0.7, "lmn": 0.2, "opq": 0.1, "rst": 0.3}
FUZZ_RIGHT = {"azb": 0.9, "czd": 0.9, "ezf": 0.9, "gzh": 0.4}
FUZZ_WRONG = {"azb": 0.1, "czd": 0.6, "ezf": 0.2, "gzh": 0.2}


def scripted_yes(message: str) -> float:
    text = message.split("Text: ")[1].split("\n")[0]
    if "<<" not in text:
        return DETECTION[text]
    plain = text.replace("<<", "").replace(">>", "")
    return FUZZ_RIGHT[plain] if "<<z>>" in text else FUZZ_WRONG[plain]


def scripted_sample(latent: int) -> LatentSample:
    actives = [example([a, 25, a + 1], [0, 1, 0], seq=i, position=1) for i, a in enumerate((0, 2, 4, 6))]
    randoms = [example([a, a + 1, a + 2], [0, 0, 0], seq=9, position=a) for a in (8, 11, 14, 17)]
    return LatentSample(latent, actives[:1], actives, randoms)


def test_score_latents__hand_computed_scores_one_batch_each(tmp_path):
    judge = ScriptedJudge(lambda m: 'Explanation: "letter z"\nsecond line', scripted_yes)
    assert isinstance(judge, Judge)
    scores = score_latents(judge, [scripted_sample(7), scripted_sample(8)], decode, out_dir=tmp_path)
    assert judge.calls == [("generate", 2), ("yes_probability", 32)], "one batch per stage, all latents"
    s = scores[0]
    assert s.explanation == "letter z"
    # detection: yes for 3 of 4 actives (.9 .8 .6) and 1 of 4 randoms (.7): (0.75 + 0.75) / 2
    assert s.detection_balanced_accuracy == pytest.approx(0.75)
    # pairs (active > random) of 16: .9 -> 4, .8 -> 4, .6 -> 3, .3 -> 2 + 1/2 (tie with .3): 13.5 / 16
    assert s.detection_auroc == pytest.approx(13.5 / 16)
    # fuzzing: right marks .9 .9 .9 .4 (3 yes), wrong .1 .6 .2 .2 (1 yes): 0.75; pairs 4+4+4+3 = 15/16
    assert s.fuzzing_balanced_accuracy == pytest.approx(0.75)
    assert s.fuzzing_auroc == pytest.approx(15 / 16)
    assert scores[1].latent == 8 and scores[1].detection_auroc == pytest.approx(13.5 / 16)
    wrong = [j for j in s.judgements if j.kind == "fuzzing" and j.label == 0]
    assert len(wrong) == 4
    for j in wrong:
        marked = re.findall(r"<<(.*?)>>", j.text)
        assert len(marked) == 1 and marked[0] in "abcdefgh", "one wrong mark, never on the activating z"
    audit = json.loads((tmp_path / "latent_7.json").read_text())
    assert audit["explanation"] == "letter z" and len(audit["judgements"]) == 16
    assert audit["anchors"]["test_active"] == [[0, 1], [1, 1], [2, 1], [3, 1]]
    assert audit["scores"]["detection_auroc"] == pytest.approx(13.5 / 16)
    first = audit["judgements"][0]
    assert first["label"] == 1 and first["p_yes"] == 0.9
    assert first["chat"][1]["content"].startswith("Explanation: letter z\n\nText: azb\n")


# --- (d) metrics -------------------------------------------------------------------------------------
def test_balanced_accuracy_and_auroc__hand_cases_with_ties():
    y = [1, 1, 0, 0]
    p = [0.8, 0.4, 0.4, 0.1]
    # P > 0.5: [1, 0, 0, 0] -> TPR 1/2, TNR 1 -> 0.75; AUROC: .8 beats both (2), .4 ties .4 (1/2) and
    # beats .1 (1): 3.5 / 4
    assert balanced_accuracy(y, np.array(p) > 0.5) == 0.75
    assert auroc(y, p) == 0.875
    assert balanced_accuracy([1, 0, 0, 0, 0], [True, True, False, False, False]) == 0.875  # (1 + 3/4) / 2
    assert auroc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auroc([1, 0], [0.9, 0.1]) == 1.0 and auroc([1, 0], [0.1, 0.9]) == 0.0
    np.testing.assert_array_equal(average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    with pytest.raises(ValueError, match="only class 1"):
        auroc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="only class 0"):
        balanced_accuracy([0, 0], [True, False])


# --- (e) the in-process judge on the tiny random models ---------------------------------------------
STD = {"tiny-llama": 1.0, "tiny-gpt2": 0.5}  # head scales whose answers vary with the prompt, unsaturated


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def tiny_judge_model(request):
    """A tiny model with an untied random head: with the tied one it repeats its last token
    whatever the context, which would hide a padding bug."""
    model = tiny_hf(MODELS[request.param])
    torch.manual_seed(2)  # a head under which the 3 CHATS get 3 different greedy answers (checked below)
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(64, 257, bias=False)
    torch.nn.init.normal_(model.lm_head.weight, std=STD[request.param])
    return model.eval()


CHATS = [
    [{"role": "system", "content": "S"}, {"role": "user", "content": text}]
    for text in ("The cat sat", "Numbers: 1 2 3 4 5 6 7 8 9 and more", "Hello <<world>>")
]


def test_transformers_judge__left_padded_batch_equals_one_by_one(tiny_judge_model):
    tok = byte_tokenizer()
    batched = TransformersJudge(tiny_judge_model, tok, batch_size=8, progress=False)
    single = TransformersJudge(tiny_judge_model, tok, batch_size=1, progress=False)
    assert batched.template == "plain"
    assert batched.prompt_text(CHATS[0][:1] + [{"role": "user", "content": "U"}]) == (
        "System: S\nUser: U\nAssistant:"
    )
    # no single-token "Yes": the first bytes, 'Y' (89) and 'N' (78); ' ' is shared and dropped
    assert (batched.answer.yes, batched.answer.no, batched.answer.single) == ([89], [78], False)
    p = batched.yes_probability(CHATS)
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(p, single.yes_probability(CHATS), atol=1e-6)
    assert np.ptp(p) > 1e-4, "the answers must depend on the prompt for this check to mean anything"
    texts = batched.generate(CHATS, 6)
    assert all(isinstance(t, str) for t in texts) and len(set(texts)) == 3
    assert texts == single.generate(CHATS, 6)


def test_template_kind__chat_template_then_chatml_then_plain(tiny_judge_model):
    tok = byte_tokenizer()
    assert template_kind(tok) == "plain"
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert template_kind(tok) == "chatml"
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert (
        chatml(chat)
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    judge = TransformersJudge(tiny_judge_model, tok, progress=False)
    assert judge.template == "chat_template" and judge.prompt_text(chat) == "[system]S[user]U[assistant]"


# --- (f) OpenAIJudge: request building and response parsing only (httpx.MockTransport, no server) ----
def mock_judge(responses, seen):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization"), json.loads(request.content)))
        return httpx.Response(200, json=next(responses))

    transport = httpx.MockTransport(handler)
    return OpenAIJudge("http://server/v1/", "m", api_key="k", transport=transport, progress=False)


def test_openai_judge__builds_requests_and_parses_logprobs_or_text():
    top = [(" Yes", 0.6), ("No", 0.2), ("yes", 0.1), ("Yes", 0.1)]
    with_logprobs = {
        "choices": [
            {
                "message": {"content": "Yes"},
                "logprobs": {
                    "content": [
                        {
                            "token": "Yes",
                            "logprob": math.log(0.6),
                            "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in top],
                        }
                    ]
                },
            }
        ]
    }
    no_logprobs = [{"choices": [{"message": {"content": c}}]} for c in ("No.", "Maybe")]
    seen = []
    judge = mock_judge(iter([with_logprobs, *no_logprobs]), seen)
    chat = [{"role": "user", "content": "Q"}]
    with pytest.warns(UserWarning, match="2 answers had no Yes/No logprobs"):
        p = judge.yes_probability([chat] * 3)
    # Yes: ' Yes' .6 + 'Yes' .1 (lowercase 'yes' does not count), No .2 -> .7 / .9; then text No / other
    np.testing.assert_allclose(p, [7 / 9, 0.0, 0.5])
    assert judge.text_fallbacks == 2
    url, auth, body = seen[0]
    assert url == "http://server/v1/chat/completions" and auth == "Bearer k"
    assert body == {
        "model": "m",
        "messages": chat,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 20,
    }
    seen.clear()
    judge = mock_judge(iter([{"choices": [{"message": {"content": "numbers"}}]}]), seen)
    assert judge.generate([chat], 24) == ["numbers"]
    assert seen[0][2] == {"model": "m", "messages": chat, "temperature": 0, "max_tokens": 24}


def test_openai_judge__server_error_names_the_url():
    transport = httpx.MockTransport(lambda request: httpx.Response(500))
    judge = OpenAIJudge("http://server/v1", "m", transport=transport, progress=False)
    with pytest.raises(ConnectionError, match="http://server/v1/chat/completions failed"):
        judge.generate([[{"role": "user", "content": "Q"}]], 4)


def test_transformers_judge__a_prompt_longer_than_the_context_keeps_its_end(tiny_judge_model):
    tok = byte_tokenizer()
    judge = TransformersJudge(tiny_judge_model, tok, batch_size=4, progress=False)
    limit = judge.context_length
    long_chat = [{"role": "user", "content": "x" * (limit + 50) + " tail"}]
    with pytest.warns(UserWarning, match="its start is cut"):
        texts = judge.generate([long_chat, CHATS[0]], 5)  # GPT-2's position table would index past its end
    p = judge.yes_probability([long_chat])
    assert len(texts) == 2 and p.shape == (1,) and 0 < p[0] < 1
    ids = judge.prompt_ids(long_chat)
    cut = judge._fit(ids, 5)
    assert len(cut) == limit - 5 and cut == ids[-(limit - 5) :]  # the end (question, "Assistant:") kept
