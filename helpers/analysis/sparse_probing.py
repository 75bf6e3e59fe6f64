"""Sparse probing: can k directions of a dictionary tell two classes of held-out text apart?

What: SAEBench's sparse probing (Karvonen et al. 2025, sae_bench/evals/sparse_probing/probe_training.py)
on the lab's offline text, for SAE latents and for the baselines of the same question:
- a `ProbeTask` is rows (single tokens, or mean-pooled windows of consecutive held-out tokens as SAEBench
  mean-pools its 128-token contexts), labels 0/1 and a seeded stratified 80/20 train/test split;
- `top_k_mean_diff`: the k features with the largest |mean(F | y=1) - mean(F | y=0)| on the train split
  (SAEBench `get_top_k_mean_diff_mask`; ties go to the lower index);
- `probe`: sklearn LogisticRegression on those k features, test accuracy, k in {1, 2, 5, 20}. Classes
  are balanced by subsampling the larger class, in train AND in test (seeded), so chance is 0.5
  (SAEBench `prepare_probe_data` samples as many negatives as positives).
- `shuffled_control`: the same task with its labels permuted (train and test): must give ~0.5.
Differences from SAEBench: features are standardised (StandardScaler fitted on the train split only)
before the LR, so its C=1 means the same for every dictionary (raw scales differ by orders of magnitude;
SAEBench fits plain LR with C=1, max_iter=1000 on raw values); k also takes 20 (SAEBench: 1, 2, 5); the
tasks are the lab's own (below), not SAEBench's hub datasets.

Dictionaries (feature functions of residual rows x [N, d]): `sae_features` (m latents), `neuron_features`
(the d residual dimensions), `pca_features` (n <= d principal directions), `random_features` (n random unit
directions). The pools differ in size (an SAE's 2,304 latents against 576 neurons / PCA directions):
top-k picks from a bigger pool have more chances, so every result reports its pool size `n_pool`.
Mean-difference ranking is scale dependent (it favours high-variance neurons and the first principal
directions), exactly as SAEBench ranks.

Tasks on a `helpers.analysis.heldout.HeldOut` view (its token policy replaces SAEBench's BOS/PAD/EOS mask:
position 0, separators and massive tokens are not rows): `pos_task` (noun vs verb whole-word tokens,
`probe_labels.pos_lexicon`), `code_vs_prose_task` (reST code vs prose windows of python-docs),
`corpus_task` (windows of two stores, e.g. python-docs vs kjv). Each takes `split_by` = "row" (the
stratified split) or a grouped split ("word" / "sequence": no word / sequence on both sides).
Why: the question "does the SAE isolate a concept into few latents better than the basis it came from?"
needs the same probe on every dictionary, with a control that shows what chance looks like.
"""

from __future__ import annotations

import string
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from sklearn.preprocessing import StandardScaler

from helpers.analysis import baselines
from helpers.data.probe_labels import (
    pos_lexicon,
    resync_offset,
    rst_code_spans,
    sequence_offsets,
    token_char_labels,
    token_char_overlaps,
    token_texts,
)

KS = (1, 2, 5, 20)
MAX_ITER = 2000  # lbfgs on <= 20 standardised features converges in tens of iterations
ENCODE_ROWS = 4096
WORD_END = set(string.whitespace) | (set(string.punctuation) - {"_"})
FeatureFn = Callable[[torch.Tensor], np.ndarray]


class ProbeError(ValueError):
    """A task or probe that cannot be run as asked; the message names the fix."""


# --- tasks ---------------------------------------------------------------------------------------
@dataclass
class ProbeTask:
    """One binary task. Row i of the task is the mean over the `mask[i]` entries of `x[rows[i]]` (after
    the feature function: a dictionary encodes tokens, then windows are pooled, as SAEBench pools)."""

    name: str
    description: str
    x: torch.Tensor  # [R, d] the residual rows the task reads
    rows: np.ndarray  # [n, w] int64 indices into x (w = 1: one token per row)
    mask: np.ndarray  # [n, w] bool: which of the w entries are real
    y: np.ndarray  # [n] int64 labels 0 / 1
    train: np.ndarray  # row indices of the train split
    test: np.ndarray  # row indices of the test split
    group: str  # what a row is: "token" or "mean-pooled window of N tokens"
    classes: tuple[str, str] = ("0", "1")  # names of labels 0 and 1
    split_by: str = "row"  # "row" or what the split kept apart ("word", "sequence")
    groups: np.ndarray | None = None  # [n] the group of each row where split_by is not "row"

    def features(self, fn: FeatureFn) -> np.ndarray:
        """[n, m] float32: `fn` on the task's residual rows, pooled per row."""
        f = np.asarray(fn(self.x), dtype=np.float32)
        if self.rows.shape[1] == 1:
            return f[self.rows[:, 0]]
        return mean_pool(f[self.rows], self.mask)

    def counts(self) -> dict[str, int]:
        """Rows per class name (before balancing)."""
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}


def split_indices(y, test_size: float = 0.2, seed: int = 0, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, test) row indices; with `groups`, no group is on both sides
    (sklearn StratifiedGroupKFold with round(1 / test_size) folds, its first fold as test)."""
    y = np.asarray(y)
    if len(np.unique(y)) != 2:
        raise ProbeError(f"a probe task needs both labels 0 and 1, got {np.unique(y).tolist()}; add rows")
    if np.bincount(y.astype(np.int64)).min() < 2:
        raise ProbeError(
            f"each label needs at least 2 rows to split, got {np.bincount(y).tolist()}; add rows"
        )
    if groups is None:
        n_test = max(2, int(np.ceil(test_size * len(y))))  # sklearn's rounding, one row per class at least
        train, test = train_test_split(np.arange(len(y)), test_size=n_test, stratify=y, random_state=seed)
    else:
        folds = StratifiedGroupKFold(n_splits=round(1 / test_size), shuffle=True, random_state=seed)
        train, test = next(folds.split(np.zeros(len(y)), y, groups))
    return np.sort(train), np.sort(test)


def make_task(name, description, x, rows, y, group, classes, seed=0, groups=None, split_by="row"):
    """A ProbeTask holding only the residual rows it reads (`x` may be a whole held-out view)."""
    if split_by != "row" and groups is None:
        raise ProbeError(
            f"{name}: split_by={split_by!r} is not offered by this task; use the builder's options"
        )
    if len(y) == 0:
        raise ProbeError(f"{name}: this text has no row of either class; probe text that has them")
    rows = np.asarray(rows, dtype=np.int64).reshape(len(y), -1)
    used, inverse = np.unique(rows, return_inverse=True)
    train, test = split_indices(y, seed=seed, groups=groups)
    return ProbeTask(
        name,
        description,
        torch.as_tensor(x)[torch.from_numpy(used)],
        inverse.reshape(rows.shape),
        np.ones(rows.shape, dtype=bool),
        np.asarray(y, dtype=np.int64),
        train,
        test,
        group,
        classes,
        split_by,
        None if groups is None else np.asarray(groups),
    )


def shuffled_control(task: ProbeTask, seed: int = 0) -> ProbeTask:
    """The same rows and split with the labels permuted over all rows (train and test): accuracy ~0.5."""
    perm = np.random.default_rng(seed).permutation(len(task.y))
    return replace(task, name=f"{task.name} (shuffled labels)", y=task.y[perm])


def mean_pool(acts_NTd, mask_NT) -> np.ndarray:
    """[N, d] mean of acts [N, T, d] over the T entries where mask [N, T] is True."""
    acts, mask = np.asarray(acts_NTd, dtype=np.float32), np.asarray(mask_NT, dtype=bool)
    n = mask.sum(1, keepdims=True)
    if np.any(n == 0):
        raise ProbeError("mean_pool got a row with no unmasked entry; drop empty windows first")
    return (acts * mask[..., None]).sum(1) / n


# --- the probe -----------------------------------------------------------------------------------
@dataclass
class KResult:
    k: int
    accuracy: float  # test accuracy on the balanced test split
    indices: np.ndarray  # the k features chosen on the train split, best first
    converged: bool


@dataclass
class ProbeResult:
    n_pool: int  # features to choose from
    n_train: int  # balanced train rows
    n_test: int  # balanced test rows
    per_k: list[KResult]

    def accuracy(self, k: int) -> float:
        return next(r.accuracy for r in self.per_k if r.k == k)


def balance(y, seed: int = 0) -> np.ndarray:
    """Sorted indices with both classes at the smaller class's count (seeded subsample of the larger)."""
    y, rng = np.asarray(y), np.random.default_rng(seed)
    n = min(int((y == 0).sum()), int((y == 1).sum()))
    if n == 0:
        raise ProbeError("one class is empty after the split; use a task with more rows of each class")
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c in (0, 1)]))


def top_k_mean_diff(F_train, y, k: int) -> np.ndarray:
    """Indices of the k columns with the largest |mean(F | y=1) - mean(F | y=0)| (SAEBench's rule),
    largest first, ties to the lower index."""
    F, y = np.asarray(F_train, dtype=np.float64), np.asarray(y)
    if not 0 < k <= F.shape[1]:
        raise ProbeError(f"k={k} must be in 1..{F.shape[1]} (the pool size); drop larger ks")
    diff = np.abs(F[y == 1].mean(0) - F[y == 0].mean(0))
    return np.lexsort((np.arange(F.shape[1]), -diff))[:k]


def fit_probe(F_train, y_train, F_test, y_test, seed: int = 0) -> tuple[float, bool]:
    """(test accuracy, converged) of a standardised LogisticRegression fitted on the train rows."""
    scaler = StandardScaler().fit(F_train)
    lr = LogisticRegression(max_iter=MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr.fit(scaler.transform(F_train), y_train)
    acc = float((lr.predict(scaler.transform(F_test)) == np.asarray(y_test)).mean())
    return acc, bool(np.all(lr.n_iter_ < MAX_ITER))


def probe(F_train, y_train, F_test, y_test, ks: Sequence[int] = KS, seed: int = 0) -> ProbeResult:
    """SAEBench's k-sparse probe: balance train and test, pick k features by mean difference on train,
    fit the LR on them, score it on test (module docstring)."""
    tr, te = balance(y_train, seed), balance(y_test, seed + 1)
    F_tr, y_tr = np.asarray(F_train)[tr], np.asarray(y_train)[tr]
    F_te, y_te = np.asarray(F_test)[te], np.asarray(y_test)[te]
    out = []
    for k in ks:
        idx = top_k_mean_diff(F_tr, y_tr, k)
        acc, ok = fit_probe(F_tr[:, idx], y_tr, F_te[:, idx], y_te, seed)
        out.append(KResult(int(k), acc, idx, ok))
    return ProbeResult(int(np.asarray(F_train).shape[1]), len(tr), len(te), out)


# --- dictionaries ------------------------------------------------------------------------------
@torch.no_grad()
def sae_features(sae, x: torch.Tensor, rows: int = ENCODE_ROWS) -> np.ndarray:
    """[N, m] float32 `sae.encode` of x, `rows` rows at a time."""
    p = sae.W_enc
    parts = [sae.encode(x[i : i + rows].to(p.device, p.dtype)).float().cpu() for i in range(0, len(x), rows)]
    return torch.cat(parts).numpy()


def neuron_features(x: torch.Tensor) -> np.ndarray:
    """[N, d] the residual dimensions themselves."""
    return torch.as_tensor(x).float().numpy()


def pca_features(x_fit: torch.Tensor, x: torch.Tensor, n: int) -> np.ndarray:
    """[N, n] centred projections of x on the top-n principal directions of x_fit (n <= d;
    `baselines.pca`, whose directions' signs are arbitrary)."""
    d = torch.as_tensor(x_fit).shape[1]
    if not 0 < n <= d:
        raise ProbeError(f"PCA gives at most d={d} directions, asked n={n}; use n <= d")
    return baselines.pca(x_fit, n).codes(torch.as_tensor(x)).numpy()


def random_features(x: torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    """[N, n] projections of x on n random unit directions (Gaussian, seeded); not orthogonal, and when
    n > d necessarily linearly dependent."""
    x = torch.as_tensor(x).float().numpy()
    u = np.random.default_rng(seed).standard_normal((x.shape[1], n)).astype(np.float32)
    return x @ (u / np.linalg.norm(u, axis=0, keepdims=True))


@dataclass
class ProbeRow:
    task: str
    dictionary: str
    k: int
    accuracy: float
    n_pool: int
    n_train: int
    n_test: int
    seconds: float  # features + probes of this dictionary on this task (all ks)


def compare_dictionaries(
    tasks: Sequence[ProbeTask], feature_sets: dict[str, FeatureFn], ks: Sequence[int] = KS, seed: int = 0
) -> list[ProbeRow]:
    """One ProbeRow per (task, dictionary, k): every dictionary probed on the same rows and split."""
    rows = []
    for task in tasks:
        for name, fn in feature_sets.items():
            t0 = time.perf_counter()
            F = task.features(fn)
            res = probe(F[task.train], task.y[task.train], F[task.test], task.y[task.test], ks, seed)
            dt = time.perf_counter() - t0
            rows += [
                ProbeRow(task.name, name, r.k, r.accuracy, res.n_pool, res.n_train, res.n_test, dt)
                for r in res.per_k
            ]
    return rows


# --- task builders on held-out views -----------------------------------------------------------
def _vocab_texts(tokenizer, tokens: np.ndarray) -> dict[int, str]:
    uniq = np.unique(tokens)
    return dict(zip(uniq.tolist(), token_texts(tokenizer, uniq)))


def _cap(y: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted row indices with at most max_rows // 2 rows of each class (seeded)."""
    if max_rows is None:
        return np.arange(len(y))
    rng, per = np.random.default_rng(seed), max_rows // 2
    keep = [rng.permutation(np.flatnonzero(y == c))[:per] for c in (0, 1)]
    return np.sort(np.concatenate(keep))


def whole_word(text: str, next_text: str) -> str | None:
    """The lowercase word a token spells on its own: it begins a word (leading space) and the next token
    begins another word or is whitespace / punctuation ("_" continues an identifier)."""
    word = text[1:]
    if not (text.startswith(" ") and word.isascii() and word.isalpha() and word.islower()):
        return None
    return word if next_text[:1] in WORD_END else None


def _grid_index(heldout) -> tuple[np.ndarray, np.ndarray]:
    """(row in `sequence_tokens`, position) of every held-out row."""
    return heldout.seq_ids - heldout.sequence_ids[0], heldout.positions


def pos_task(
    heldout, tokenizer, pos_a="noun", pos_b="verb", max_rows=4000, seed=0, split_by="row", lexicon=None
) -> ProbeTask:
    """Held-out tokens that are a whole word (`whole_word`) of part of speech pos_a (label 1) or pos_b
    (label 0) in `lexicon` (default `probe_labels.pos_lexicon()`: WordNet words of one part of speech, stop
    words and possible inflections of another part of speech left out), at most max_rows // 2 per class;
    `split_by="word"` keeps each word on one side of the split."""
    lexicon = pos_lexicon() if lexicon is None else lexicon
    toks = heldout.sequence_tokens
    texts = _vocab_texts(tokenizer, toks)
    s, p = _grid_index(heldout)
    T = toks.shape[1]
    nxt = np.where(p + 1 < T, toks[s, np.minimum(p + 1, T - 1)], -1)
    ids = toks[s, p]
    words = [whole_word(texts[a], texts.get(b, "x")) for a, b in zip(ids.tolist(), nxt.tolist())]
    tags = np.array([lexicon.get(w) if w else None for w in words], dtype=object)
    where = np.flatnonzero((tags == pos_a) | (tags == pos_b))
    y = (tags[where] == pos_a).astype(np.int64)
    keep = where[_cap(y, max_rows, seed)]
    y = (tags[keep] == pos_a).astype(np.int64)
    groups = ids[keep] if split_by == "word" else None
    desc = (
        f"{pos_a} vs {pos_b} whole-word tokens (WordNet, one POS only, no stop words) of {heldout.describe()}"
    )
    return make_task(
        f"{pos_a} vs {pos_b}", desc, heldout.x, keep, y, "token", (pos_b, pos_a), seed, groups, split_by
    )


def _segment_labels(seg_texts: list[str], resync: bool) -> np.ndarray:
    """Per token of one document piece: 1 inside reST code, 0 surely outside, -1 unknown."""
    text, off = sequence_offsets(seg_texts)
    r = resync_offset(text) if resync else 0
    spans = [(a + r, b + r) for a, b in rst_code_spans(text[r:])]
    inside, touch = token_char_labels(off, spans), token_char_overlaps(off, spans)
    return np.where(inside, 1, np.where(~touch & (off[:, 0] >= r), 0, -1)).astype(np.int8)


def code_labels(tokens: np.ndarray, texts: dict[int, str], sep_ids) -> tuple[np.ndarray, np.ndarray]:
    """(labels, segments) [S, T] of token windows: 1 code / 0 prose / -1 unknown or separator, and the
    document piece of each token. Pieces are cut at separator tokens; the piece after position 0 (a
    prepended BOS, not a document start) is parsed from `resync_offset` on."""
    labels = np.full(tokens.shape, -1, dtype=np.int8)
    segments = np.cumsum(np.isin(tokens, np.asarray(sep_ids)), axis=1)
    for i, row in enumerate(tokens):
        cuts = np.flatnonzero(np.isin(row, np.asarray(sep_ids))).tolist() + [len(row)]
        starts = [0, *[c + 1 for c in cuts[:-1]]]
        for a, b in zip(starts, cuts):
            if b > a:
                labels[i, a:b] = _segment_labels([texts[t] for t in row[a:b].tolist()], resync=a <= 1)
    return labels, segments


def label_windows(keys: Sequence[np.ndarray], labels, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n, window], y [n]): non-overlapping windows of `window` consecutive rows within each run
    of rows that share every key (e.g. sequence, document piece) and one label >= 0."""
    labels = np.asarray(labels)
    cols = np.stack([np.asarray(k) for k in keys] + [labels], 1)
    change = np.concatenate([[True], np.any(cols[1:] != cols[:-1], axis=1)])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(labels))
    rows, y = [], []
    for a, b in zip(starts, ends):
        if labels[a] >= 0:
            for w in range(a, b - window + 1, window):
                rows.append(np.arange(w, w + window))
                y.append(int(labels[a]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, window), np.asarray(y, dtype=np.int64)


def code_vs_prose_task(heldout, tokenizer, window=16, max_rows=2000, seed=0, split_by="row") -> ProbeTask:
    """Mean-pooled windows of `window` consecutive held-out tokens all inside reST code (label 1) or all
    surely outside (label 0), at most max_rows // 2 per class; `split_by="sequence"` keeps each sequence
    on one side. Text is each token decoded alone (helpers.data.probe_labels.sequence_offsets)."""
    toks = heldout.sequence_tokens
    labels, segments = code_labels(toks, _vocab_texts(tokenizer, toks), heldout.exclude_tokens)
    s, p = _grid_index(heldout)
    rows, y = label_windows([s, segments[s, p]], labels[s, p], window)
    keep = _cap(y, max_rows, seed)
    rows, y = rows[keep], y[keep]
    groups = s[rows[:, 0]] if split_by == "sequence" else None
    desc = f"reST code vs prose windows of {window} tokens, {heldout.describe()}"
    group = f"mean-pooled window of {window} tokens"
    return make_task(
        "code vs prose", desc, heldout.x, rows, y, group, ("prose", "code"), seed, groups, split_by
    )


def corpus_task(heldout_a, heldout_b, window=32, max_rows=2000, seed=0, split_by="row") -> ProbeTask:
    """Mean-pooled windows of `window` consecutive held-out tokens of two stores at the same layer:
    label 0 = heldout_a's corpus, 1 = heldout_b's; at most max_rows // 2 per class."""
    if heldout_a.layer != heldout_b.layer or heldout_a.x.shape[1] != heldout_b.x.shape[1]:
        raise ProbeError(
            f"corpus_task needs two views of one layer and width, got layers {heldout_a.layer} / "
            f"{heldout_b.layer}; build both HeldOut views with the same layer"
        )
    ra, _ = label_windows([heldout_a.seq_ids], np.zeros(heldout_a.n_tokens), window)
    rb, _ = label_windows([heldout_b.seq_ids], np.zeros(heldout_b.n_tokens), window)
    rows = np.concatenate([ra, rb + heldout_a.n_tokens])
    y = np.concatenate([np.zeros(len(ra)), np.ones(len(rb))]).astype(np.int64)
    keep = _cap(y, max_rows, seed)
    rows, y = rows[keep], y[keep]
    seq = np.concatenate([heldout_a.seq_ids, heldout_b.seq_ids + heldout_a.seq_ids.max() + 1])
    groups = seq[rows[:, 0]] if split_by == "sequence" else None
    names = (heldout_a.store.request.corpus, heldout_b.store.request.corpus)
    desc = f"{names[0]} vs {names[1]} windows of {window} tokens, layer {heldout_a.layer}"
    x = torch.cat([heldout_a.x, heldout_b.x])
    group = f"mean-pooled window of {window} tokens"
    return make_task(" vs ".join(names), desc, x, rows, y, group, names, seed, groups, split_by)
