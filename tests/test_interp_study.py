"""Notebook 10's study (helpers.analysis.interp_study): which directions are scored and how activating is
defined for each dictionary, the judge check's pseudo-latents, and the probing table with its control."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers.analysis import interp_study as I
from helpers.analysis import sparse_probing
from helpers.analysis.heldout import HeldOut

N_SEQ, T, D, M = 6, 40, 8, 12


class FakeHeld:
    """The HeldOut attributes interp_study reads: every position but 0 of N_SEQ sequences is a row."""

    layout = HeldOut.layout

    def __init__(self, codes_NM, x_ND, seed=0):
        self.seq_ids = np.repeat(np.arange(N_SEQ), T - 1) + 100
        self.positions = np.tile(np.arange(1, T), N_SEQ)
        self.sequence_ids = np.arange(100, 100 + N_SEQ)
        self.store = SimpleNamespace(seq_len=T)
        self.x = torch.as_tensor(x_ND, dtype=torch.float32)
        self.codes = np.asarray(codes_NM, np.float32)
        self.sequence_tokens = np.random.default_rng(seed).integers(10, 50, (N_SEQ, T))

    @property
    def n_tokens(self):
        return len(self.seq_ids)

    def density(self, sae):
        return (self.codes > 0).mean(0)

    def grid(self, sae, latents):
        return self.layout(self.codes[:, list(latents)])


def sparse_codes(rng, densities):
    n = N_SEQ * (T - 1)
    return np.stack([(rng.random(n) < p) * rng.uniform(1, 2, n) for p in densities], 1)


def test_sae_latents_are_drawn_among_those_that_can_be_sampled_and_dense_ones_get_their_median_density():
    rng = np.random.default_rng(0)
    densities = [0.0, 0.005, 0.05, 0.1, 0.2, 0.3] * 2  # latents 0, 6 never fire; 1, 7 too rarely to sample
    held = FakeHeld(sparse_codes(rng, densities), rng.standard_normal((N_SEQ * (T - 1), D)))
    sae = SimpleNamespace(cfg=SimpleNamespace(d_sae=M))
    sets = I.direction_sets(held, sae, n=4, seed=0)
    assert [s.name for s in sets] == ["SAE", "neurons", "PCA", "random"]
    first = sets[0]
    assert len(first.latents) == 4 and not set(first.latents) & {0, 1, 6, 7}
    q = float(np.median(held.density(sae)[first.latents]))
    assert all(s.top_fraction == pytest.approx(q) for s in sets[1:])
    # a neuron's grid is its centred coordinate, laid out on (sequence, position); position 0 stays 0
    neurons = sets[1]
    want = (held.x - held.x.mean(0)).numpy()[:, neurons.latents]
    assert np.allclose(neurons.grid_STL[held.seq_ids - 100, held.positions], want, atol=1e-6)
    assert not neurons.grid_STL[:, 0].any()


def test_dense_directions_count_their_top_share_of_tokens_as_activating():
    rng = np.random.default_rng(1)
    held = FakeHeld(sparse_codes(rng, [0.2] * M), rng.standard_normal((N_SEQ * (T - 1), D)))
    sets = [I.dense_directions(held, I.dense_dictionaries(held.x)["neurons"], "neurons", 3, 0.1)]
    got = I.samples(sets, held.sequence_tokens, n_train=5, n_test=3)["neurons"]
    for s in got:
        g = sets[0].grid_STL[..., list(sets[0].latents).index(s.latent)]
        cut = np.quantile(g[:, 1:], 0.9)
        for e in s.train + s.test_active:
            assert g[e.seq, e.position] >= cut - 1e-6
            assert e.mask().sum() == (e.acts >= cut - 1e-6).sum()  # only the top share is marked
        for e in s.test_random:
            assert not e.mask().any()


def test_token_class_pseudo_latents_fire_exactly_on_their_class():
    tokens = np.random.default_rng(2).integers(0, 40, (N_SEQ, T))
    classes = {"digits": ("numbers", {3, 4, 5}), "empty": ("nothing", set())}
    got, names, texts = I.token_class_latents(tokens, classes, n_train=5, n_test=3)
    assert names == ["digits"] and texts == ["numbers"]
    (s,) = got
    for e in s.train + s.test_active:
        assert tokens[e.seq, e.position] in {3, 4, 5}
        assert np.array_equal(e.mask(), np.isin(e.tokens, [3, 4, 5]))
    for e in s.test_random:
        assert not np.isin(e.tokens, [3, 4, 5]).any()


def test_token_classes_read_digits_and_python_keywords_from_the_vocabulary():
    vocab = {0: " 42", 1: "def", 2: " return", 3: "Def", 4: "x", 5: "7a"}
    got = I.token_classes(lambda i: vocab[i], len(vocab))
    assert got["digits"][1] == {0}
    assert got["keywords"][1] == {1, 2}


def test_probe_table_finds_a_planted_label_and_its_shuffled_control_stays_at_chance():
    rng = np.random.default_rng(3)
    n = 600
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, D)).astype(np.float32)
    x[:, 5] += 3.0 * y
    task = sparse_probing.make_task("planted", "", x, np.arange(n), y, "token", ("a", "b"))
    table = I.probe_table([task], {"identity": lambda v: np.asarray(v)}, seeds=3, ks=(1, 2))
    acc = table.set_index(["dictionary", "k"]).accuracy
    assert acc["identity", 1] > 0.9
    assert abs(acc["identity (shuffled)", 1] - 0.5) < 0.1
    assert table.sd.notna().all() and set(table.k) == {1, 2}


def test_example_lines_quote_the_best_and_worst_sae_explanations():
    import pandas as pd

    llm = pd.DataFrame(
        {
            "dictionary": ["SAE", "SAE", "SAE", "PCA"],
            "latent": [1, 2, 3, 4],
            "explanation": ["good", "bad", "mid", "pca"],
            "detection_auroc": [0.9, 0.1, 0.5, 1.0],
            "fuzzing_auroc": [0.8, 0.2, 0.5, 1.0],
        }
    )
    lines = I.example_lines(llm, n_best=1, n_worst=1)
    assert lines == ['SAE latent 1 "good" 0.90 / 0.80', 'SAE latent 2 "bad" 0.10 / 0.20']


def test_the_interp_command_names_the_fix_in_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from helpers.cli import run_cli

    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))  # no store, no SAE
    cases = {
        ("--base-url", "http://127.0.0.1:9/v1"): "--base-url and --model go together",
        ("--dictionaries", "SAE", "ICA"): "unknown dictionaries ['ICA']",
        ("--profile", "tiny", "--latents", "2"): "collect one first (notebook 01",
    }
    for argv, expected in cases.items():
        with pytest.raises(SystemExit) as e:
            run_cli(I.main, list(argv))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and expected in err, (argv, err)
