"""Sparse probing (helpers.analysis.sparse_probing) and its offline labels (helpers.data.probe_labels):
a planted label direction is found by k=1 and shuffled labels sit at chance; the mean-difference rule,
balancing and PCA against hand / sklearn numbers; WordNet, reST code spans and the task builders on
hand-made text and a tiny store."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from helpers.analysis import sparse_probing as S
from helpers.analysis.heldout import HeldOut
from helpers.data import probe_labels as L
from helpers.data.store import ActivationStore, StoreRequest, StoreWriter

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the probe -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    """x [2000, 32] = Gaussian noise (sd 0.5) + 2 u y (u a random unit direction, y in {0, 1}); 64 feature
    directions of which number 37 is u. Along u the classes are 4 sd apart: the best threshold is right
    Phi(2) = 97.7% of the time."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    u = rng.standard_normal(32)
    u /= np.linalg.norm(u)
    x = 0.5 * rng.standard_normal((2000, 32)) + 2.0 * y[:, None] * u
    dirs = rng.standard_normal((32, 64))
    dirs /= np.linalg.norm(dirs, axis=0)
    dirs[:, 37] = u
    x_t = torch.tensor(x, dtype=torch.float32)
    task = S.make_task("planted", "u shifted by 2", x_t, np.arange(2000), y, "token", ("a", "b"))
    return task, (lambda v: v.numpy() @ dirs.astype(np.float32))


def test_planted_direction__k1_finds_it_and_shuffled_labels_are_at_chance(planted):
    task, fn = planted
    F = task.features(fn)
    res = S.probe(F[task.train], task.y[task.train], F[task.test], task.y[task.test], ks=(1, 5))
    assert res.per_k[0].indices.tolist() == [37] and res.per_k[0].converged
    assert 0.95 < res.accuracy(1) <= 1.0 and res.accuracy(5) > 0.95
    assert res.n_pool == 64 and res.n_train + res.n_test <= 2000
    ctrl = S.shuffled_control(task, seed=3)
    assert sorted(ctrl.y.tolist()) == sorted(task.y.tolist()) and not np.array_equal(ctrl.y, task.y)
    Fc = ctrl.features(fn)
    shuffled = S.probe(Fc[ctrl.train], ctrl.y[ctrl.train], Fc[ctrl.test], ctrl.y[ctrl.test], ks=(1, 5, 20))
    assert all(abs(r.accuracy - 0.5) < 0.07 for r in shuffled.per_k), [r.accuracy for r in shuffled.per_k]


def test_planted_direction__unit_noise_gives_the_bayes_accuracy_phi_1():
    """Shift 2 in unit noise: the classes are 2 sd apart, no probe beats Phi(1) = 84.1%."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 4000)
    u = np.eye(32)[5]
    x = rng.standard_normal((4000, 32)) + 2.0 * y[:, None] * u
    dirs = np.concatenate([rng.standard_normal((32, 63)), u[:, None]], 1)
    F = (x @ (dirs / np.linalg.norm(dirs, axis=0))).astype(np.float32)
    tr, te = S.split_indices(y, seed=0)
    res = S.probe(F[tr], y[tr], F[te], y[te], ks=(1,))
    assert res.per_k[0].indices.tolist() == [63] and abs(res.accuracy(1) - 0.841) < 0.03


def test_top_k_mean_diff__hand_computed_order_with_ties_to_the_lower_index():
    F = np.array([[1.0, 0.0, 5.0, 2.0, -1.0], [3.0, 0.0, 5.0, 0.0, -1.0], [0.0, 1.0, 5.0, 4.0, 1.0]])
    y = np.array([0, 0, 1])
    # class means: y=0 (2, 0, 5, 1, -1), y=1 (0, 1, 5, 4, 1) -> |diff| (2, 1, 0, 3, 2)
    assert S.top_k_mean_diff(F, y, 3).tolist() == [3, 0, 4]
    assert S.top_k_mean_diff(F, y, 5).tolist() == [3, 0, 4, 1, 2]
    with pytest.raises(S.ProbeError, match="pool size"):
        S.top_k_mean_diff(F, y, 6)


def test_balance_and_split__equal_classes_and_stratified_eighty_twenty():
    y = np.array([0] * 70 + [1] * 30)
    idx = S.balance(y, seed=4)
    assert (y[idx] == 0).sum() == (y[idx] == 1).sum() == 30 and len(set(idx.tolist())) == 60
    tr, te = S.split_indices(y, seed=0)
    assert len(te) == 20 and (y[te] == 1).sum() == 6 and not set(tr) & set(te)
    groups = np.repeat(np.arange(20), 5)
    tr, te = S.split_indices(y, seed=0, groups=groups)
    assert not set(groups[tr]) & set(groups[te]) and len(te) == 20


def test_mean_pool__masked_mean():
    acts = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_allclose(S.mean_pool(acts, mask), [[2.0, 3.0], [8.0, 9.0]])


def test_pca_features__match_sklearn_up_to_sign_and_random_directions_are_unit():
    rng = np.random.default_rng(2)
    x_fit = torch.tensor(rng.standard_normal((300, 10)) @ rng.standard_normal((10, 10)), dtype=torch.float32)
    x = torch.tensor(rng.standard_normal((50, 10)), dtype=torch.float32)
    ours = S.pca_features(x_fit, x, 4)
    ref = PCA(4).fit(x_fit.double().numpy()).transform(x.double().numpy())
    signs = np.sign((ours * ref).sum(0))
    np.testing.assert_allclose(ours * signs, ref, atol=1e-4)
    rnd = S.random_features(torch.eye(10), 30, seed=1)  # rows of the identity read the directions back
    np.testing.assert_allclose(np.linalg.norm(rnd, axis=0), np.ones(30), rtol=1e-5)
    with pytest.raises(S.ProbeError, match="n <= d"):
        S.pca_features(x_fit, x, 11)


def test_compare_dictionaries__one_row_per_task_dictionary_and_k(planted):
    task, fn = planted
    rows = S.compare_dictionaries([task], {"dirs": fn, "neurons": S.neuron_features}, ks=(1, 2))
    assert [(r.dictionary, r.k) for r in rows] == [("dirs", 1), ("dirs", 2), ("neurons", 1), ("neurons", 2)]
    assert rows[0].n_pool == 64 and rows[2].n_pool == 32 and rows[0].n_train == rows[2].n_train
    assert rows[1].accuracy > 0.8


# --- labels --------------------------------------------------------------------------------------
def test_wordnet_pos_and_pos_lexicon__ambiguous_words_are_dropped(tmp_path):
    header = "  1 This software and database is being provided\n  2 Princeton University\n"
    files = {
        "index.noun": "computer n 1 1 @ 1 0 0\ndog n 1 1 @ 1 0 0\nice_cream n 1 0 0\nb52 n 1 0 0\n",
        "index.verb": "dog v 1 1 @ 1 0 0\neat v 1 1 @ 1 0 0\n",
        "index.adj": "happy a 1 1 & 1 0 0\nwell-known a 1 0 0\n",
        "index.adv": "quickly r 1 1 \\ 1 0 0\n",
    }
    for name, body in files.items():
        (tmp_path / name).write_text(header + body)
    assert L.wordnet_pos(tmp_path) == {"computer": "noun", "eat": "verb", "happy": "adj", "quickly": "adv"}
    (tmp_path / "index.noun").write_text(
        header + "computer n 1\nvalues n 1\nusing n 1\nit n 1\nfeet n 1\nate n 1\n"
    )
    (tmp_path / "index.verb").write_text(header + "value v 1\nuse v 1\nfoot v 1\neat v 1\n")
    (tmp_path / "noun.exc").write_text("feet foot\n")
    (tmp_path / "verb.exc").write_text("ate eat\n")
    # "values" -> value (verb, morphy s -> ""), "using" -> use (verb, ing -> e), "it" is a stop word;
    # "ate" -> eat (verb.exc); "feet" is listed in noun.exc only (its own part of speech): kept
    assert L.pos_lexicon(tmp_path) == {
        "computer": "noun",
        "feet": "noun",
        "value": "verb",
        "use": "verb",
        "foot": "verb",
        "eat": "verb",
        "happy": "adj",
        "quickly": "adv",
    }
    with pytest.raises(L.LabelError, match="apt install wordnet-base"):
        L.wordnet_pos(tmp_path / "missing")


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.noun").exists(), reason="wordnet-base not installed")
def test_wordnet_pos__debian_wordnet_words_checked_by_grep():
    pos = L.wordnet_pos()
    # grep "^word " /usr/share/wordnet/index.*: computer only noun, eat only verb; dog noun AND verb
    assert (pos["computer"], pos["eat"], pos["happy"], pos["quickly"]) == ("noun", "verb", "adj", "adv")
    assert "dog" not in pos and "the" not in pos
    lex = L.pos_lexicon()  # "a" / "it" are WordNet nouns only; "using" may inflect the verb "use"
    assert pos["a"] == pos["it"] == pos["using"] == "noun" and not {"a", "it", "using"} & set(lex)
    assert lex["computer"] == "noun" and lex["eat"] == "verb"


RST = """Intro prose::

    x = 1

    y = 2
Back to prose.

.. code-block:: python
   :linenos:

   def f():
       return 1

>>> print(1)
1

.. note:: A note, not code::

Last prose.
"""


def test_rst_code_spans__literal_block_directive_with_option_doctest_and_prose_after():
    spans = L.rst_code_spans(RST)
    assert [RST[a:b] for a, b in spans] == [
        "    x = 1\n\n    y = 2",
        "   def f():\n       return 1",
        ">>> print(1)\n1",
    ]
    texts = ["Intro", " prose", "::\n\n", "    x", " =", " 1\n\n", "    y = 2", "\n", "Back"]
    _, off = L.sequence_offsets(texts)
    inside = L.token_char_labels(off, spans)
    touch = L.token_char_overlaps(off, spans)
    assert inside.tolist() == [False, False, False, True, True, True, True, False, False]
    assert touch.tolist() == [False, False, False, True, True, True, True, False, False]
    assert L.token_char_overlaps([[29, 31]], [(30, 40)]).tolist() == [True]  # straddles the start
    assert L.token_char_labels([[29, 31]], [(30, 40)]).tolist() == [False]


def test_resync_offset__skips_the_unknown_start_of_a_cut_document():
    cut = "    rest of a code block\n\n    more code\nNot yet\n\nTop level.\n"
    assert cut[L.resync_offset(cut) :] == "Top level.\n"
    assert L.resync_offset("    only code\n") == len("    only code\n")


# --- builders on a tiny store ------------------------------------------------------------------
VOCAB = [
    "<|endoftext|>",
    " computer",
    " eat",
    " dog",
    ".",
    "s",
    " the",
    "\n",
    "Example",
    "::",
    "\n\n",
    "    x",
    " = 1",
    "Prose",
    " words",
    "_id",
]
BOS, D, T = 0, 6, 24


class FakeTokenizer:
    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)

    def convert_ids_to_tokens(self, i):
        return VOCAB[i].replace(" ", "Ġ")


def _seq(*names):
    ids = [VOCAB.index(n) for n in names]
    return ids + [VOCAB.index(" the")] * (T - len(ids))


@pytest.fixture(scope="module")
def tiny_heldout(tmp_path_factory):
    """6 sequences x 24 tokens in 2 shards; the held-out shard (sequences 3-5) holds the words."""
    held = [
        _seq("<|endoftext|>", " computer", ".", " eat", " the", " computer", "s", " dog", ".", " eat", "_id"),
        _seq("<|endoftext|>", " eat", "\n", " computer", " the", "<|endoftext|>", "Prose", " words"),
        _seq("<|endoftext|>", "Prose", "<|endoftext|>", "Example", "::", "\n\n", *["    x", " = 1"] * 9),
    ]
    toks = np.array([_seq("<|endoftext|>")] * 3 + held, dtype=np.int32)
    toks[5, T - 1] = VOCAB.index("\n")  # ends the code block's last line
    acts = np.random.default_rng(0).standard_normal((6, T, D)).astype(np.float32)
    req = StoreRequest("synthetic", "tiny", (2,), T, 6, "float32", 0, 3)
    path = tmp_path_factory.mktemp("probe_store")
    w = StoreWriter(path, req, {"d_model": D, "bos_id": BOS, "bos_note": ""})
    for shard in range(2):
        w.write_shard(shard, toks[3 * shard : 3 * shard + 3], {2: acts[3 * shard : 3 * shard + 3]})
    return HeldOut(ActivationStore(path), 2, massive_ratio=None)


def test_pos_task__whole_word_nouns_and_verbs_only(tiny_heldout):
    lex = {"computer": "noun", "eat": "verb", "the": "adj"}
    task = S.pos_task(tiny_heldout, FakeTokenizer(), max_rows=None, lexicon=lex)
    h = tiny_heldout
    got = sorted(
        (int(h.seq_ids[i]), int(h.positions[i]))
        for i in range(h.n_tokens)
        if any(np.array_equal(h.x[i], r) for r in task.x)
    )
    # kept: (3,1) computer + "."; (3,3) eat + " the"; (4,1) eat + "\n"; (4,3) computer + " the".
    # dropped: (3,5) " computer" + "s" (not a whole word), (3,9) " eat" + "_id" (an identifier),
    # (3,7) " dog" (not in the lexicon)
    assert got == [(3, 1), (3, 3), (4, 1), (4, 3)]
    assert task.counts() == {"verb": 2, "noun": 2} and task.group == "token"
    assert S.whole_word(" computer", "s") is None and S.whole_word("computer", ".") is None


def test_code_labels_and_windows__code_after_a_document_start_prose_before(tiny_heldout):
    labels, segments = S.code_labels(tiny_heldout.sequence_tokens, dict(enumerate(VOCAB)), (BOS,))
    # sequence 5: position 1 "Prose" follows the window's BOS, a cut document with no resync point (-1);
    # the separator at 2 starts a document: "Example" "::" "\n\n" are prose (0), then 17 code tokens on
    # one indented line (1), then its "\n", outside the span (0)
    assert labels[2].tolist() == [-1, -1, -1, 0, 0, 0] + [1] * 17 + [0]
    assert labels[1].tolist() == [-1] * 6 + [0] * 18, "cut piece unknown, then a whole prose document"
    assert segments[2, :4].tolist() == [1, 1, 2, 2]
    rows, y = S.label_windows([np.zeros(10, int)], np.array([1, 1, 1, 1, 1, 0, 0, 0, -1, -1]), 2)
    assert rows.tolist() == [[0, 1], [2, 3], [5, 6]] and y.tolist() == [1, 1, 0]
    task = S.code_vs_prose_task(tiny_heldout, FakeTokenizer(), window=4, max_rows=None)
    assert task.counts() == {"prose": 4, "code": 4} and task.group == "mean-pooled window of 4 tokens"
    acts = tiny_heldout.store.acts_for(2, [4, 5])
    expect = {"code": acts[1, 6:22].reshape(4, 4, D).mean(1), "prose": acts[0, 6:22].reshape(4, 4, D).mean(1)}
    F = task.features(S.neuron_features)
    for label, name in enumerate(task.classes):
        np.testing.assert_allclose(np.sort(F[task.y == label], 0), np.sort(expect[name], 0), rtol=1e-5)
