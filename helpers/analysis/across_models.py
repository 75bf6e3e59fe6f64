"""Two models on the same held-out text, one row per word: what notebook 09's universality sections read.

What: `held_out_texts` (the text of the main store's held-out windows, cut at BOS into documents, so no
SAE of the first model trained on it), `collect_aligned` (every layer's resid_pre of both models at each
word's last token, helpers.data.word_align), `AlignedRows` (those rows, float16 on disk, cached by
`aligned_rows`), `typical_rows` (rows whose norm is ordinary at every layer of both models: a few
massive tokens would otherwise set CKA and the correlations), `matched_layer` (the second model's layer
most CKA-similar to a given layer of the first) and `encode_rows` (SAE codes of the rows).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers import paths
from helpers.analysis.cka import cka_matrix, linear_cka
from helpers.analysis.convergence import pair_verdict
from helpers.analysis.universality import (
    SHARED_CORR,
    CrossModelMatch,
    activation_correlation,
    compare_models,
    fire_counts,
    match_table,
    shared_fraction_corr,
)
from helpers.data.collect import collect_profile
from helpers.data.store import ActivationStore, write_json_atomic
from helpers.data.word_align import align_documents, aligned_activations, words_of
from helpers.model.models import get_spec, load_model, spec_of
from helpers.profiles import Profile
from helpers.training import across_runs, experiments
from helpers.training.experiments import SAERun


def held_out_texts(
    store: ActivationStore, tokenizer, bos_id: int, n_seqs: int, min_words: int = 8
) -> list[str]:
    """The text of the first `n_seqs` windows of `store`'s held-out shard, each window cut at BOS into its
    documents' pieces (decoded without cleaning up spaces); pieces of fewer than `min_words` words are
    left out. The first model's SAEs never trained on these windows (helpers.data.store.split)."""
    _, held = store.split(1)
    ids = np.concatenate([store.shard_tokens(s) for s in held])[:n_seqs]
    texts = []
    for row in ids:
        cuts = np.flatnonzero(row == bos_id)
        for lo, hi in zip(cuts, [*cuts[1:], len(row)]):
            text = tokenizer.decode(row[lo + 1 : hi].tolist(), clean_up_tokenization_spaces=False)
            if len(words_of(text)) >= min_words:
                texts.append(text)
    return texts


@dataclass
class AlignedRows:
    """Word-aligned resid_pre rows of two models: row i of both models is words[i] of document doc_idx[i].

    acts[m] is [n_layers_m, n_words, d_m] float16 holding each layer divided by scales[m][layer] (its median
    row norm / sqrt(d)): Gemma 3's residual grows past float16's 65,504 in deep layers, so the rows are
    stored on a per-layer scale where a typical entry is ~1 and `layer` multiplies it back."""

    models: tuple[str, str]
    layers: tuple[tuple[int, ...], tuple[int, ...]]
    words: list[str]
    doc_idx: np.ndarray
    acts: tuple[np.ndarray, np.ndarray]
    scales: tuple[np.ndarray, np.ndarray]

    @property
    def n_words(self) -> int:
        return len(self.words)

    def layer(self, m: int, layer: int) -> torch.Tensor:
        """Model m's rows at resid_pre `layer`, float32 [n_words, d]."""
        if layer not in self.layers[m]:
            raise ValueError(f"{self.models[m]} rows were collected at layers {self.layers[m]}, not {layer}")
        i = self.layers[m].index(layer)
        return torch.from_numpy(self.acts[m][i].astype(np.float32)) * float(self.scales[m][i])

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for m in (0, 1):
            np.save(path / f"acts_{m}.npy", self.acts[m])
        np.save(path / "doc_idx.npy", self.doc_idx)
        meta = {
            "models": list(self.models),
            "layers": [list(x) for x in self.layers],
            "scales": [[float(v) for v in x] for x in self.scales],
            "words": self.words,
        }
        write_json_atomic(path / "aligned.json", meta)  # written last: the folder is complete

    @classmethod
    def load(cls, path: Path) -> AlignedRows:
        meta = json.loads((path / "aligned.json").read_text())
        acts = tuple(np.load(path / f"acts_{m}.npy", mmap_mode="r") for m in (0, 1))
        return cls(
            tuple(meta["models"]),
            tuple(tuple(x) for x in meta["layers"]),
            meta["words"],
            np.load(path / "doc_idx.npy"),
            acts,
            tuple(np.asarray(x, dtype=np.float64) for x in meta["scales"]),
        )


def collect_aligned(
    models, texts: list[str], seq_len: int, precision: str = "float32", docs_per_pass: int = 8
):
    """AlignedRows of `texts` read by two nnsight models (each its own tokenizer, BOS first, windows of
    `seq_len` tokens), resid_pre of every layer of each; a progress bar over document batches."""
    specs = [spec_of(m) for m in models]
    tokenizers, bos = [m.tokenizer for m in models], [s.bos_id for s in specs]
    layers = [tuple(range(s.n_layers)) for s in specs]
    acts, words, doc_idx = [[] for _ in models], [], []
    step = docs_per_pass * 4
    for lo in tqdm(range(0, len(texts), step), desc="aligned words, both models", unit="batch"):
        sub = align_documents(texts[lo : lo + step], tokenizers, seq_len, bos)
        out = aligned_activations(models, sub, [list(x) for x in layers], precision, docs_per_pass)
        for m in range(len(models)):
            acts[m].append(torch.stack([out[m][layer] for layer in layers[m]]))  # fp32 until scaled
        words += sub.words
        doc_idx.append(sub.doc_idx.numpy() + lo)
    stacked, scales = [], []
    for a in acts:
        x = torch.cat(a, dim=1)  # [L, N, d]
        scale = x.norm(dim=-1).median(dim=1).values.clamp_min(1e-12) / x.shape[-1] ** 0.5  # [L]
        stacked.append((x / scale[:, None, None]).numpy().astype(np.float16))
        scales.append(scale.double().numpy())
    names = (specs[0].name, specs[1].name)
    return AlignedRows(
        names, (layers[0], layers[1]), words, np.concatenate(doc_idx), tuple(stacked), tuple(scales)
    )


def aligned_rows(path: Path, models_fn, texts_fn, seq_len: int, precision: str = "float32") -> AlignedRows:
    """The AlignedRows cached at `path`, else collected (`models_fn()` -> the two models, `texts_fn()` ->
    the texts) and saved there first."""
    path = Path(path)
    if not (path / "aligned.json").exists():
        collect_aligned(models_fn(), texts_fn(), seq_len, precision).save(path)
    return AlignedRows.load(path)


def typical_rows(rows: AlignedRows, ratio: float = 10.0) -> np.ndarray:
    """bool [n_words]: rows whose norm stays <= `ratio` x the layer's median at every layer of both
    models (helpers.data.massive's rule on the aligned rows)."""
    keep = np.ones(rows.n_words, dtype=bool)
    for m in (0, 1):
        for i in range(len(rows.layers[m])):
            norm = np.linalg.norm(
                rows.acts[m][i].astype(np.float32), axis=1
            )  # the scale cancels in the ratio
            keep &= norm <= ratio * np.median(norm)
    return keep


def matched_layer(cka_LK: np.ndarray, layers_b, row: int) -> int:
    """The second model's layer (of `layers_b`) with the highest CKA in row `row` of `cka_LK`, its layer 0
    left out where it has others: resid_pre 0 is the token embedding, which a mid layer of a small model
    still resembles on single words (CKA ~0.55 on the offline pair), and an SAE there is a dictionary of
    tokens, not of features."""
    start = 1 if len(layers_b) > 1 and layers_b[0] == 0 else 0
    return int(layers_b[start + int(np.argmax(cka_LK[row, start:]))])


@torch.no_grad()
def encode_rows(sae, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """SAE codes [n, d_sae] of rows x [n, d], `chunk` rows at a time."""
    return torch.cat([sae.encode(x[i : i + chunk].float()) for i in range(0, len(x), chunk)])


def layer_cka(rows: AlignedRows, keep: np.ndarray, layers_a) -> np.ndarray:
    """Linear CKA [len(layers_a), n_layers_b] between model a's `layers_a` and every layer of model b, on
    the rows `keep` selects (~1 s per layer of a on 6k rows against 18 of b, Zen 3)."""
    xs = [rows.layer(0, layer)[keep] for layer in layers_a]
    ys = [rows.layer(1, layer)[keep] for layer in rows.layers[1]]
    return cka_matrix(xs, ys)


def heatmap_layers(rows: AlignedRows, main_layer: int) -> list[int]:
    """Every other layer of model a, and `main_layer`: the rows of the CKA heatmap (half the cost of all)."""
    return sorted(set(rows.layers[0][::2]) | {main_layer})


def shuffled_cka(rows: AlignedRows, keep: np.ndarray, layer_a: int, layer_b: int, seed: int = 0) -> float:
    """CKA of one pair of layers with model b's rows permuted: the value with the word alignment broken."""
    x, y = rows.layer(0, layer_a)[keep], rows.layer(1, layer_b)[keep]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return linear_cka(x, y[perm])


def depth_spearman(cka_LK: np.ndarray) -> float:
    """Spearman correlation between each row layer's index and the index of its best column: 1 when deeper
    layers of one model always match deeper layers of the other."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.arange(len(cka_LK)), cka_LK.argmax(1)).statistic)


def seed_floor(codes_a: torch.Tensor, codes_twin: torch.Tensor, threshold: float) -> CrossModelMatch:
    """The first SAE matched to its own seed twin by the same rule on the same rows: how much two SAEs of
    ONE model share by activation correlation (the ceiling a cross-model match is read against)."""
    corr = activation_correlation(codes_a, codes_twin)
    return shared_fraction_corr(corr, threshold, fire_counts(codes_a), name="seed twin")


def top_words(codes: torch.Tensor, words: list[str], latents, k: int = 6) -> dict[int, list[str]]:
    """{latent: the words at its k highest activations} over the aligned rows."""
    out = {}
    for j in latents:
        top = torch.topk(codes[:, j], min(k, len(words))).indices.tolist()
        out[int(j)] = [words[i][:24] for i in top]
    return out


@dataclass
class SecondModelSAEs:
    """The second model's seed pair at its matched layer, where it lives, and its convergence verdict."""

    profile: Profile
    pair: tuple[SAERun, SAERun]
    sae_root: Path
    verdict: str

    def load(self, i: int = 0):
        return experiments.load(self.pair[i], self.sae_root)


def second_model_saes(profile: Profile, layer: int, model=None, progress: bool = True) -> SecondModelSAEs:
    """Collect the second model's store at `layer` and train its seed pair there, unless both are on disk
    (helpers.training.across_runs); the pair's verdict by notebook 02's criteria."""
    second = across_runs.second_profile(profile, layer)
    store_root, sae_root = paths.store_root(second.name), paths.sae_dir(second.name)
    pair = experiments.seed_pair(second, get_spec(second.model).d_model)  # seeds 0, 1 under its own folder
    if not all(experiments.is_trained(r, sae_root) for r in pair):
        collect_profile(second, store_root, model or load_model(second.model), progress)
        experiments.trained(list(pair), second, store_root, sae_root, progress)
    return SecondModelSAEs(second, pair, sae_root, pair_verdict(*pair, sae_root).line())


def word_rows(profile: Profile, store: ActivationStore) -> tuple[AlignedRows, np.ndarray]:
    """(AlignedRows of the profile's two models over `store`'s held-out text, the `typical_rows` mask):
    read from the cache under the profile's activation folder, else collected there first."""
    path = (
        paths.store_root(profile.name) / f"aligned-{re.sub(r'[^A-Za-z0-9._-]+', '-', profile.second_model)}"
    )

    def texts():
        tok = load_model(profile.model).tokenizer
        return held_out_texts(store, tok, get_spec(profile.model).bos_id, profile.align_seqs)

    models = lambda: [load_model(profile.model), load_model(profile.second_model)]  # noqa: E731
    rows = aligned_rows(path, models, texts, profile.seq_len, profile.collect_precision)
    return rows, typical_rows(rows, profile.massive_ratio)


@dataclass
class CrossModelResult:
    """The first model's SAE matched to the second's and to every baseline, on the kept aligned words."""

    matches: dict[str, CrossModelMatch]
    """{label: match}, in the order: other model's SAE, own seed twin, own neurons, shuffled, random."""
    codes_a: torch.Tensor
    codes_b: torch.Tensor
    words: list[str]

    def table(self) -> pd.DataFrame:
        return match_table(self.matches).rename(columns=lambda c: c.split("@")[0])


def match_models(base, twin, other, rows: AlignedRows, keep: np.ndarray, layers: tuple[int, int]):
    """CrossModelResult of SAE `base` (model a, its seed twin `twin`) against SAE `other` (model b) at
    resid_pre `layers` (a's, b's), with `compare_models`' three baselines and the seed-twin floor."""
    x_a, x_b = rows.layer(0, layers[0])[keep], rows.layer(1, layers[1])[keep]
    codes_a, codes_b = encode_rows(base, x_a), encode_rows(other, x_b)
    found = compare_models(codes_a, codes_b, x_a, x_b)
    found["seed twin"] = seed_floor(codes_a, encode_rows(twin, x_a), SHARED_CORR)
    a, b = rows.models
    labels = {
        "models": f"{b} SAE",
        "seed twin": f"{a} SAE seed twin",
        "own_neurons": f"{a} neurons",
        "shuffled_alignment": f"{b} SAE, words shuffled",
        "random_directions": f"random directions of {b}",
    }
    words = [w for w, k in zip(rows.words, keep) if k]
    return CrossModelResult({labels[k]: found[k] for k in labels}, codes_a, codes_b, words)
