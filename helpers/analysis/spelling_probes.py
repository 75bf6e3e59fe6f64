"""First-letter probes on the residual stream, built as SAEBench's absorption eval builds them.

What: the vocabulary (`alpha_tokens`, SAEBench vocab.py `get_alpha_tokens`), the in-context prompt
(`icl_prompt`, prompting.py `create_icl_prompt` + `first_letter_formatter`), residuals at each word's
token (`word_residuals`), a 26-way one-vs-rest linear probe trained as probing.py trains it
(`train_probe`) and its per-letter F1 on held-out words (`letter_f1`). `first_letter_probes(model,
layer)` runs them all and returns `SpellingProbes` (the F1 table and SAEBench's criterion: absorption
is scored only if at least 20 letters have probe F1 > 0.6, main.py) and `SpellingActivations` (the
word residuals and labels that helpers.analysis.spelling_absorption scores an SAE on).
Why: absorption (issue #28, part 3c) asks whether an SAE's first-letter latents miss words that the
residual stream still spells; that question needs a probe that reads the letter first.

Differences from SAEBench, mostly for speed on a CPU (its defaults are kept everywhere else):
- `max_words` words are sampled (seeded) from the vocabulary instead of using all of it.
- Prompts are packed: one sequence holds `n_icl` ICL examples and then `words_per_prompt` read words,
  each in the same "{word} has the first letter: X" format. Attention is causal, so the residual at
  read word j is exactly that of SAEBench's prompt for it with the n_icl + j examples before it as
  its ICL examples (`words_per_prompt=1` is SAEBench's prompt itself). It costs ~10 tokens per word
  (40 words a sequence) instead of ~88.
- The word's token is found from the tokenizer's character offsets, not at a fixed -6; for the last
  word of a sequence both agree (`word_token_pos` derives SAEBench's -6 from the template).
- Residuals are resid_pre of `layer` (this project's SAE hook); SAEBench reads blocks.L.hook_resid_post.
- Fewer words mean fewer probe steps (2,400 words: 1,900 steps; SAEBench on SmolLM2's 47,078 words:
  ~29,000). On SmolLM2 layer 12, 50 / 100 / 200 / 400 epochs gave 21 / 21 / 22 / 21 letters over
  F1 0.6, so the recipe's 50 are kept.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from helpers.model.models import spec_of
from helpers.model.residuals import residuals
from helpers.sae.fast.ops import serial

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ALPHA = set(LETTERS + LETTERS.upper())
TEMPLATE = "{word} has the first letter:"  # eval_config.py prompt_template
SAEBENCH_TOKEN_POS = -6  # eval_config.py prompt_token_pos: the word's token, counted from the prompt's end
N_ICL = 10  # feature_absorption.py / probing.py max_icl_examples
TRAIN_FRACTION = 0.8  # probing.py create_dataset_probe_training train_test_fraction
MIN_PROBE_F1 = 0.6  # eval_config.py min_GT_probe_f1 (main.py counts letters with F1 > this)
MIN_LETTERS = 20  # eval_config.py min_feats_for_eval


# --- vocabulary and prompts (vocab.py, prompting.py) ------------------------------------------------


def is_alpha_token(text: str) -> bool:
    """vocab.py get_alpha_tokens' filter: drop ONE leading space, then a non-empty run of ASCII letters."""
    text = text[1:] if text.startswith(" ") else text
    return bool(text) and all(c in ALPHA for c in text)


def token_text(tokenizer, token: str) -> str:
    """vocab.py convert_tokens_to_string: a vocabulary entry's text, with the leading space that some
    sentencepiece tokenizers drop from a "▁" token put back."""
    text = tokenizer.convert_tokens_to_string([token])
    if token.startswith("▁") and not text.startswith(" "):
        text = " " + text
    return text


def alpha_tokens(tokenizer) -> list[str]:
    """vocab.py get_alpha_tokens(tokenizer): the text of every vocabulary token that `is_alpha_token`, in
    id order, each text once (SAEBench keeps dict order and duplicates; both are immaterial)."""
    entries = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    texts = (token_text(tokenizer, tok) for tok, _ in entries)
    return list(dict.fromkeys(t for t in texts if is_alpha_token(t)))


def first_letter(word: str) -> str:
    """prompting.py first_letter with its defaults: " " + the first alphabetic character, upper-cased."""
    return " " + next(c for c in word.strip() if c.isalpha()).upper()


def letter_index(word: str) -> int:
    """probing.py answer_class_fn: the answer's letter as a class 0..25."""
    return LETTERS.index(first_letter(word).strip().lower())


def icl_prompt(word: str, examples: list[str], template: str = TEMPLATE) -> str:
    """prompting.py create_icl_prompt(...).base as probing.py calls it: example separator "\\n",
    prepend_separator_to_first_example=True, each example followed by its answer, then the word's
    template without an answer."""
    shots = [template.format(word=ex) + first_letter(ex) for ex in examples]
    return "\n" + "\n".join(shots) + "\n" + template.format(word=word)


def word_token_pos(tokenizer, template: str = TEMPLATE) -> int:
    """SAEBench's word position counted from the prompt's end: -(tokens of the template after the word
    + 1). " has the first letter:" is 5 tokens in GPT-2-style BPE (SmolLM2, Gemma), hence its -6."""
    after = template.split("{word}")[1]
    return -(len(tokenizer(after, add_special_tokens=False).input_ids) + 1)


@dataclass
class ChainPrompt:
    """One packed sequence: ICL examples, then the words read, all in the template's format."""

    text: str
    """The sequence's text; it ends with the last read word's template (no answer), so it equals
    `icl_prompt(words[-1], examples + words[:-1])`."""
    words: list[str]
    """The read words, in order."""
    ends: list[int]
    """Character index in `text` where each read word ends (its last token ends there)."""


def chain_prompt(words: list[str], examples: list[str], template: str = TEMPLATE) -> ChainPrompt:
    """`examples` then `words` as consecutive "{word} has the first letter: X" lines (see ChainPrompt)."""
    before, after = template.split("{word}")
    seq, text, ends = [*examples, *words], "\n", []
    for i, w in enumerate(seq):
        text += before + w
        if i >= len(examples):
            ends.append(len(text))
        text += after + (first_letter(w) + "\n" if i < len(seq) - 1 else "")
    return ChainPrompt(text, list(words), ends)


def chain_prompts(words: list[str], n_icl: int, per_prompt: int, rng: random.Random) -> list[ChainPrompt]:
    """Chains over one split: `per_prompt` consecutive words each, after n_icl ICL examples drawn from
    the same split without the chain's own words (probing.py: ICL examples come from the word's split;
    prompting.py's contamination check keeps a word out of its own examples)."""
    out = []
    for i in range(0, len(words), per_prompt):
        group = words[i : i + per_prompt]
        taken = set(group)
        pool = [w for w in words if w not in taken]
        out.append(chain_prompt(group, rng.sample(pool, min(n_icl, len(pool)))))
    return out


# --- residuals ---------------------------------------------------------------------------------------


@torch.no_grad()
def word_residuals(
    model, prompts: list[ChainPrompt], layer: int, batch_size: int = 16, precision: str = "float32"
) -> tuple[Tensor, list[str]]:
    """(resid_pre of `layer` at each read word's last token [n, d], those words).

    Each text is tokenized whole (as TransformerLens tokenizes SAEBench's prompt) after the model's
    BOS; the word's token is the one whose character span ends where the word ends (a word whose
    end falls inside a token is dropped). Sequences of similar length are batched and right-padded
    with BOS: causal attention keeps padding out of every earlier position. A prompt longer than the
    model's context is cut there, and the words past the cut are not read (a byte-level tiny model)."""
    spec = spec_of(model)
    tok, bos, n_ctx = model.tokenizer, spec.bos_id, spec.n_ctx
    seqs = []
    for p in prompts:
        enc = tok(p.text, add_special_tokens=False, return_offsets_mapping=True)
        end_to_tok = {e: i for i, (_, e) in enumerate(enc["offset_mapping"])}
        hits = [(w, end_to_tok[e] + 1) for w, e in zip(p.words, p.ends) if e in end_to_tok]
        seqs.append(([bos, *enc["input_ids"]][:n_ctx], [h for h in hits if h[1] < n_ctx]))
    seqs.sort(key=lambda s: len(s[0]))
    rows, words = [], []
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        T = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), T), bos, dtype=torch.long)
        for b, (s, _) in enumerate(batch):
            ids[b, : len(s)] = torch.tensor(s)
        x = residuals(model, ids, [layer], precision=precision)[layer]
        for b, (_, hits) in enumerate(batch):
            rows += [x[b, pos] for _, pos in hits]
            words += [w for w, _ in hits]
    return torch.stack(rows).float(), words


# --- probe (probing.py) ------------------------------------------------------------------------------


def train_probe(
    x: Tensor,
    y: Tensor,
    n_classes: int = 26,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-2,
    end_lr: float = 1e-5,
    weight_decay: float = 1e-4,
    l1: float = 0.0,
    min_steps: int = 0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """(W [n_classes, d], b [n_classes]) of a one-vs-rest logistic probe, trained as probing.py
    train_multi_probe does: nn.Linear's init, BCEWithLogits on one-hot targets with pos_weight =
    negatives / positives per class, Adam (L2 `weight_decay`), shuffled minibatches, the learning rate
    decayed exponentially per epoch from lr to end_lr. Defaults: the first-letter probe
    (common.py train_and_save_probes: batch 64, 50 epochs, lr 1e-2; probing.py train_linear_probe_for_task:
    weight decay 1e-4). `l1` adds l1 * mean over classes of sum |W| (k_sparse_probing.py
    train_sparse_multi_probe). Seeded; a class with no positives gets pos_weight 1 (SAEBench's would be inf).

    `min_steps` raises the number of epochs until there are at least that many optimizer steps (the
    schedule still spans them all): SAEBench trains on the whole vocabulary, so a full-batch probe on our
    few thousand words would otherwise take 50 steps where SAEBench takes hundreds. Sparse inputs (SAE
    codes, < 5% non-zero) are multiplied as CSR. Small steps (the first-letter probe's 64 x d) run on one
    thread (`serial`): ~1,900 of them stall on a busy 2-core machine when each op waits for a second one."""
    x, y = x.float(), y.long()
    n, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(d)
    W = ((torch.rand(n_classes, d, generator=gen) * 2 - 1) * bound).requires_grad_()
    b = ((torch.rand(n_classes, generator=gen) * 2 - 1) * bound).requires_grad_()
    target = torch.nn.functional.one_hot(y, n_classes).float()
    pos = target.sum(0)
    pos_weight = torch.where(pos > 0, (n - pos) / pos.clamp(min=1), torch.ones_like(pos))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam([W, b], lr=lr, weight_decay=weight_decay)
    epochs = max(epochs, math.ceil(min_steps / math.ceil(n / batch_size)))
    gamma = math.exp(math.log(end_lr / lr) / epochs)
    small = min(batch_size, n) * d * n_classes < 4_000_000
    full = _csr(x) if n <= batch_size and x.numel() > 1_000_000 and (x != 0).float().mean() < 0.05 else None
    with torch.enable_grad(), serial() if small else contextlib.nullcontext():
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * gamma**epoch
            # one full batch: the mean loss does not depend on the row order, so skip the shuffle
            for idx in [None] if full is not None else torch.randperm(n, generator=gen).split(batch_size):
                opt.zero_grad()
                logits = torch.sparse.mm(full, W.T) + b if idx is None else x[idx] @ W.T + b
                loss = loss_fn(logits, target if idx is None else target[idx])
                if l1:
                    loss = loss + l1 * W.abs().sum(-1).mean()
                loss.backward()
                opt.step()
    return W.detach(), b.detach()


def _csr(x: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        return x.to_sparse_csr()


def letter_f1(scores: Tensor, y: Tensor) -> pd.DataFrame:
    """Per-letter precision, recall and F1 of `scores > 0` (k_sparse_probing.py build_metrics_df's
    f1_probe, the number main.py's criterion reads); 0 where undefined (sklearn's zero_division)."""
    pred = (scores > 0).numpy()
    truth = y.numpy()[:, None] == np.arange(scores.shape[1])[None]
    tp = (pred & truth).sum(0)
    fp, fn = (pred & ~truth).sum(0), (~pred & truth).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.nan_to_num(tp / (tp + fp))
        rec = np.nan_to_num(tp / (tp + fn))
        f1 = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
    return pd.DataFrame(
        {"f1": f1, "precision": prec, "recall": rec}, index=pd.Index(list(LETTERS), name="letter")
    )


# --- results and entry points ------------------------------------------------------------------------


@dataclass
class SpellingActivations:
    """The words' residuals and first-letter labels, split as probing.py splits the vocabulary."""

    x_train: Tensor
    """Residual at each training word's token [n_train, d]."""
    y_train: Tensor
    """Its first letter, 0..25 [n_train] (long)."""
    words_train: list[str]
    """The training words, row by row."""
    x_test: Tensor
    """Residual at each test word's token [n_test, d]."""
    y_test: Tensor
    """Its first letter, 0..25 [n_test] (long)."""
    words_test: list[str]
    """The test words, row by row."""


@dataclass
class SpellingProbes:
    """A first-letter probe at one layer, its per-letter test F1 and SAEBench's criterion on them."""

    layer: int
    """resid_pre layer the words' residuals were read at."""
    model: str
    """Model name ("" for activations given directly)."""
    f1: pd.DataFrame
    """Index letter a..z; columns f1, precision, recall (test split, logit > 0), n_train, n_test."""
    weight: Tensor
    """Probe weights [26, d] (row = letter)."""
    bias: Tensor
    """Probe biases [26]."""
    n_train: int
    """Training words."""
    n_test: int
    """Test words."""
    n_letters_ok: int
    """Letters with test F1 > min_f1."""
    criterion_met: bool
    """n_letters_ok >= min_letters: SAEBench scores absorption only then (main.py)."""
    min_f1: float = MIN_PROBE_F1
    """F1 a letter must exceed (eval_config.py min_GT_probe_f1)."""
    min_letters: int = MIN_LETTERS
    """Letters that must exceed it (eval_config.py min_feats_for_eval)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each phase (prompts, residuals, probe)."""

    @property
    def verdict(self) -> str:
        f = self.f1["f1"]
        low = f[f <= self.min_f1].sort_values()
        low = ", ".join(f"{k} {v:.2f}" for k, v in low.iloc[:5].items()) + (" ..." if len(low) > 5 else "")
        where = f"layer {self.layer}" + (f" of {self.model}" if self.model else "")
        return (
            f"{where}: {self.n_letters_ok}/26 letters reach probe F1 > {self.min_f1} on {self.n_test} test "
            f"words (median {f.median():.2f}; lowest: {low or 'none'}), so absorption "
            + ("can be scored" if self.criterion_met else "cannot be scored")
            + f" (SAEBench needs >= {self.min_letters})."
        )


def fit_letter_probes(
    acts: SpellingActivations, layer: int = -1, model: str = "", seed: int = 0, **train_kw
) -> SpellingProbes:
    """Train the probe on acts' training split and score each letter on its test split (probing.py)."""
    t0 = time.perf_counter()
    W, b = train_probe(acts.x_train, acts.y_train, seed=seed, **train_kw)
    table = letter_f1(acts.x_test.float() @ W.T + b, acts.y_test)
    table["n_train"] = np.bincount(acts.y_train.numpy(), minlength=26)
    table["n_test"] = np.bincount(acts.y_test.numpy(), minlength=26)
    n_ok = int((table["f1"] > MIN_PROBE_F1).sum())
    return SpellingProbes(
        layer,
        model,
        table,
        W,
        b,
        len(acts.y_train),
        len(acts.y_test),
        n_ok,
        n_ok >= MIN_LETTERS,
        seconds={"probe": time.perf_counter() - t0},
    )


def first_letter_probes(
    model,
    layer: int,
    max_words: int = 3000,
    seed: int = 0,
    n_icl: int = N_ICL,
    words_per_prompt: int = 40,
    batch_size: int = 16,
    precision: str = "float32",
) -> tuple[SpellingProbes, SpellingActivations]:
    """SAEBench's first-letter probe at resid_pre `layer` of an nnsight model from `load_model`.

    `max_words` vocabulary words (`alpha_tokens` of model.tokenizer, sampled with `seed`) are split
    80/20 (probing.py), read in packed ICL prompts (module docstring) and probed (`fit_letter_probes`).
    Measured (SmolLM2-135M, layer 12, defaults, 2 Zen 3 cores): 24.5 s with the machine otherwise idle
    (22.7 s residuals, 1.6 s probe; the model's load, 3.8 s, not included), 53 s with the other core
    busy; 21/26 letters passed, so the criterion held."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    vocab = alpha_tokens(model.tokenizer)
    words = rng.sample(vocab, min(max_words, len(vocab)))
    cut = int(len(words) * TRAIN_FRACTION)
    splits = {"train": words[:cut], "test": words[cut:]}
    prompts = {k: chain_prompts(v, n_icl, words_per_prompt, rng) for k, v in splits.items()}
    t1 = time.perf_counter()
    got = {k: word_residuals(model, p, layer, batch_size, precision) for k, p in prompts.items()}
    t2 = time.perf_counter()
    labels = {k: torch.tensor([letter_index(w) for w in got[k][1]], dtype=torch.long) for k in got}
    acts = SpellingActivations(
        got["train"][0], labels["train"], got["train"][1], got["test"][0], labels["test"], got["test"][1]
    )
    probes = fit_letter_probes(acts, layer, spec_of(model).name, seed)
    probes.seconds = {"prompts": t1 - t0, "residuals": t2 - t1, **probes.seconds}
    return probes, acts


def summary(probes: SpellingProbes) -> dict:
    """The probe's fields of findings.FirstLetterFindings: layer, letters over min_f1, letters probed and
    the median per-letter F1."""
    return {
        "layer": int(probes.layer),
        "letters_ok": int(probes.n_letters_ok),
        "letters_total": len(probes.f1),
        "median_f1": float(probes.f1["f1"].median()),
    }
