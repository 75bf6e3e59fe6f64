import glob

import numpy as np
import pytest

from helpers.data import corpora
from helpers.data.corpora import CorpusError, load_corpus, token_windows
from helpers.model.tiny import byte_tokenizer

TOK = byte_tokenizer()
BOS = 256


def test_token_windows__bos_first_then_consecutive_corpus_tokens():
    texts = ["abcdefgh", "ijklmnop", "qrstuvwx"]
    w = token_windows(texts, TOK, seq_len=5, bos_id=BOS, n_seq=6, seed=0)
    stream = []
    for t in texts:
        stream += list(t.encode()) + [BOS]
    bodies = np.array(stream[: (len(stream) // 4) * 4]).reshape(-1, 4)  # 27 tokens -> 6 bodies
    assert w.shape == (6, 5) and w.dtype == np.int32
    assert (w[:, 0] == BOS).all()
    # every window body is one of the consecutive 4-token chunks, each used once
    got = sorted(map(tuple, w[:, 1:]))
    assert got == sorted(map(tuple, bodies))


def test_token_windows__seeded_and_deterministic():
    texts = ["the quick brown fox " * 20]
    a = token_windows(texts, TOK, 8, BOS, 10, seed=1)
    assert np.array_equal(a, token_windows(texts, TOK, 8, BOS, 10, seed=1))
    assert not np.array_equal(a, token_windows(texts, TOK, 8, BOS, 10, seed=2))


def test_token_windows__corpus_too_small_says_how_many_tokens_fit():
    with pytest.raises(CorpusError, match=r"has 9 tokens = 2 sequences of 5; ask for at most 10"):
        token_windows(["abcdefgh"], TOK, 5, BOS, 3, corpus="mini")


def test_token_windows__empty_corpus_is_an_error():
    with pytest.raises(CorpusError, match="empty after tokenisation"):
        token_windows(["", ""], TOK, 5, BOS, 1, corpus="blank")


def test_unknown_corpus_names_the_choices():
    with pytest.raises(CorpusError, match="unknown corpus 'wiki'; choose one of .*kjv"):
        load_corpus("wiki")


def test_missing_debian_corpus_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    monkeypatch.setitem(corpora._READERS, "kjv", lambda: [])
    with pytest.raises(CorpusError, match="apt-get install bible-kjv bible-kjv-text"):
        load_corpus("kjv")


def test_synthetic_corpora_have_disjoint_vocabularies():
    a = set(" ".join(load_corpus("synthetic-a")["text"]).replace(".", "").split())
    b = set(" ".join(load_corpus("synthetic-b")["text"]).replace(".", "").split())
    assert a and b and not a & b


@pytest.mark.parametrize(
    "name,probe",
    [
        ("python-docs", "/usr/share/doc/python3*-doc/html/_sources"),
        ("kjv", "/usr/bin/bible"),
        ("python-code", "/"),
    ],
)
def test_offline_corpora_load_through_datasets(name, probe, tmp_path, monkeypatch):
    if not glob.glob(probe):
        pytest.skip(f"{name} not installed here (make setup installs it)")
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    ds = load_corpus(name)
    assert len(ds) > 100 and sum(len(t) for t in ds["text"]) > 1_000_000
    assert (tmp_path / "corpora" / f"{name}.jsonl").exists()
