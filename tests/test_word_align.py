"""helpers.data.word_align: each word's last token in tokenizers that split words differently (one token per
byte vs a SentencePiece-like WordPiece whose tokens carry the leading whitespace), words dropped for every
model when one model's window cuts them, and activations gathered at the aligned tokens."""

from pathlib import Path

import pytest
import torch

from helpers.data.word_align import align_documents, aligned_activations, last_token_of_words, words_of
from helpers.model.hooks import hook_activations
from helpers.model.models import load_model
from helpers.model.residuals import residuals
from helpers.model.tiny import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "The residual  stream\ncarries features; ok"
WORDS = ["The", "residual", "stream", "carries", "features;", "ok"]
# byte tokenizer: one token per character here (ASCII), so a word's last token is its last character
BYTE_LAST = [2, 11, 19, 27, 37, 40]
# WordPiece + Metaspace: ▁The ▁resid ##ual ▁ ▁stream ▁carr ##ies ▁feat ##ures ##; ▁ok
#                        0    1      2     3 4       5     6     7     8      9   10
WORDPIECE_LAST = [0, 2, 4, 6, 9, 10]
SMOLLM2 = Path(__file__).resolve().parents[1] / "data" / "models" / "smollm2-135m"


def wordpiece_tokenizer(raw: bool = False):
    """A SentencePiece-like tokenizer built in memory: newlines read as spaces, spaces become "▁" glued to
    the NEXT word (so "▁stream" covers the space before it, "▁carr" the newline), then WordPiece splits the
    pieces into subwords; a second space stays a lone "▁" token that covers no word."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = [
        "[UNK]",
        "▁",
        "▁The",
        "▁resid",
        "##ual",
        "▁stream",
        "▁carr",
        "##ies",
        "▁feat",
        "##ures",
        "##;",
        "▁ok",
    ]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Replace("\n", " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace()
    return tok if raw else PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_words_of__spans_of_whitespace_separated_words():
    text = "  a\n\nbb  c;\t d "
    assert [text[s:e] for s, e in words_of(text)] == ["a", "bb", "c;", "d"]
    assert words_of("") == [] and words_of(" \n ") == []


def test_last_token__byte_tokenizer_one_token_per_byte():
    ids, idx, n = last_token_of_words(TEXT, byte_tokenizer(), max_tokens=100)
    assert ids.tolist() == list(TEXT.encode())
    assert idx.tolist() == BYTE_LAST and n == 6
    ids, idx, n = last_token_of_words(TEXT, byte_tokenizer(), max_tokens=100, bos_id=256)
    assert ids[0] == 256 and idx.tolist() == [i + 1 for i in BYTE_LAST]


def test_last_token__leading_space_tokens_count_for_the_word_they_cover():
    tok = wordpiece_tokenizer()
    ids, idx, n = last_token_of_words(TEXT, tok, max_tokens=100)
    assert tok.convert_ids_to_tokens(ids.tolist()) == [
        "▁The", "▁resid", "##ual", "▁", "▁stream", "▁carr", "##ies", "▁feat", "##ures", "##;", "▁ok"
    ]  # fmt: skip
    assert idx.tolist() == WORDPIECE_LAST and n == 6  # "features;" ends at "##;"
    # a raw tokenizers.Tokenizer gives the same answer
    raw_ids, raw_idx, _ = last_token_of_words(TEXT, wordpiece_tokenizer(raw=True), max_tokens=100)
    assert raw_ids.tolist() == ids.tolist() and raw_idx.tolist() == WORDPIECE_LAST


def test_last_token__multibyte_characters_end_at_their_last_byte():
    text = "é x\n\n  ü"
    ids, idx, _ = last_token_of_words(text, byte_tokenizer(), max_tokens=100)
    assert len(ids) == len(text.encode()) == 10  # é and ü are two bytes each, sharing one character span
    assert idx.tolist() == [1, 3, 9]


def test_last_token__a_word_whose_last_token_is_cut_is_dropped():
    # window [BOS ▁The ▁resid ##ual ▁ ▁stream ▁carr ##ies ▁feat]: "features;" begins inside, ends outside
    ids, idx, n = last_token_of_words(TEXT, wordpiece_tokenizer(), max_tokens=9, bos_id=0)
    assert len(ids) == 9
    assert idx.tolist() == [1, 3, 5, 7, -1, -1] and n == 4
    with pytest.raises(ValueError, match="use max_tokens >= 2"):
        last_token_of_words(TEXT, byte_tokenizer(), max_tokens=1, bos_id=256)


def test_align_documents__keeps_only_words_every_model_kept():
    texts = [TEXT, "ok  The\n\nresidual stream"]
    tokenizers = [byte_tokenizer(), wordpiece_tokenizer()]
    # byte window of 30 (BOS + 29 bytes) ends inside "features;"; the WordPiece window holds all of doc 0
    batch = align_documents(texts, tokenizers, max_tokens=[30, 64], bos_ids=[256, 0])
    assert batch.words == ["The", "residual", "stream", "carries", "ok", "The", "residual", "stream"]
    assert batch.doc_idx.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch.word_idx.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert batch.token_idx[0].tolist() == [3, 12, 20, 28, 2, 7, 17, 24]
    # doc 1 in WordPiece ("\n\n" reads as two spaces): BOS ▁ok ▁ ▁The ▁ ▁resid ##ual ▁stream
    assert batch.token_idx[1].tolist() == [1, 3, 5, 7, 1, 3, 6, 7]
    assert [len(x) for x in batch.input_ids[0]] == [30, 25] and batch.n_words == 8
    # the WordPiece window now cuts "carries" (its ##ies): dropped for the byte model too
    batch = align_documents(texts[:1], tokenizers, max_tokens=[100, 7], bos_ids=[256, 0])
    assert batch.words == WORDS[:3] and batch.token_idx[0].tolist() == [3, 12, 20]
    ids_dt, mask_dt = align_documents(texts, tokenizers, 64, [256, 0]).padded(1, pad_id=0)
    assert ids_dt.shape == mask_dt.shape == (2, 12) and mask_dt.sum(1).tolist() == [12, 8]


def test_align_documents__one_line_errors():
    with pytest.raises(ValueError, match="give one value or one per model"):
        align_documents([TEXT], [byte_tokenizer(), byte_tokenizer()], max_tokens=[10], bos_ids=None)


@pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 tokenizer not converted under data/models")
def test_smollm2__every_words_last_token_decodes_to_the_end_of_that_word():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    text = "The residual stream carries features; sparse autoencoders  read them\n\nback, token by token."
    ids, idx, n = last_token_of_words(text, tok, max_tokens=512, bos_id=0)
    words = [text[s:e] for s, e in words_of(text)]
    assert n == len(words) and ids[0] == 0
    for word, i in zip(words, idx.tolist()):
        piece = tok.decode([int(ids[i])]).strip()
        assert piece and word.endswith(piece), (word, piece)
        assert tok.decode(ids[1 : i + 1]).endswith(word), (word, tok.decode(ids[1 : i + 1]))  # no part left


@pytest.fixture(scope="module")
def tiny_pair():
    return load_model("tiny-llama"), load_model("tiny-gpt2")


def test_aligned_activations__rows_equal_the_residual_at_each_words_last_byte(tiny_pair):
    texts = ["The residual  stream\ncarries features; ok", "a bb ccc", "sparse\n\nautoencoders read words"]
    tok = byte_tokenizer()
    batch = align_documents(texts, [tok, tok], max_tokens=[40, 24], bos_ids=256)
    # the 24-token window (BOS + 23 bytes) keeps the words ending by byte 23, for both models
    expected_words = [[t[s:e] for s, e in words_of(t) if e <= 23] for t in texts]
    assert batch.words == [w for ws in expected_words for w in ws]
    out = aligned_activations(tiny_pair, batch, [1, "blocks.2.hook_mlp_out"], batch_size=2)
    for m, model in enumerate(tiny_pair):
        assert list(out[m]) == [1, "blocks.2.hook_mlp_out"]
        assert out[m][1].shape == (batch.n_words, 64) == out[m]["blocks.2.hook_mlp_out"].shape
        for i in range(batch.n_words):
            d, t = int(batch.doc_idx[i]), int(batch.token_idx[m][i])
            ids = batch.input_ids[m][d][None]  # this document alone, unpadded
            s, e = words_of(texts[d])[int(batch.word_idx[i])]
            assert t == e  # BOS + bytes: the word's last byte (index e - 1) sits at e
            torch.testing.assert_close(out[m][1][i], residuals(model, ids, [1])[1][0, t], rtol=0, atol=1e-5)
            direct = hook_activations(model, ids, ["blocks.2.hook_mlp_out"])["blocks.2.hook_mlp_out"]
            torch.testing.assert_close(out[m]["blocks.2.hook_mlp_out"][i], direct[0, t], rtol=0, atol=1e-5)
