"""Autointerp: an LLM explains a latent from its top examples, then scores the explanation on held-out ones.

What (definitions after delphi's explainer, DetectionScorer and FuzzingScorer; Paulo et al.,
"Automatically Interpreting Millions of Features in Large Language Models", arXiv 2410.13928,
github.com/EleutherAI/delphi), on the samples of helpers.analysis.latent_samples:
- explanation: the judge reads the train examples with the activating tokens marked <<like this>>
  (adjacent marked tokens merged into one span) and replies with one short phrase (greedy);
- detection: each test excerpt, unmarked, with the explanation: "Does this text contain what the
  explanation describes?" test_active excerpts are positives (label 1), test_random negatives (0);
- fuzzing: each test_active excerpt twice, once with its activating tokens marked (label 1) and once
  with as many randomly chosen non-activating tokens of the same window marked (label 0; delphi marks
  the same number of wrong tokens as there are right ones), seeded: "Do the marked tokens match the
  explanation?"
Each answer is P(Yes) from the judge's logits (helpers.analysis.judges). Scores per latent and kind:
`balanced_accuracy` of P(Yes) > 0.5 ((TPR + TNR) / 2, so 0.5 is chance whatever the class balance)
and `auroc` (Mann-Whitney: the chance that a random positive gets a higher P(Yes) than a random
negative, ties counting 1/2).

`score_latents` sends every prompt of every latent through the judge in two batches (all
explanations, then all detection + fuzzing questions) and, given `out_dir`, writes latent_<id>.json
with the explanation chat, every scored chat with its label and P(Yes), and the sampled anchors, so
each number can be audited by reading what the judge read.

Why: the lab's interpretability proxy (baselines.token_concentration) sees only the current token;
an explanation scored by an LLM sees context. With the offline 135M judge the scores are weak in
absolute terms; they are meant for comparisons under one judge (SAE latents vs baseline directions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from helpers.analysis.judges import Chat, Judge
from helpers.analysis.latent_samples import Example, LatentSample

Decode = Callable[[list[int]], str]
MAX_EXPLANATION = 120  # characters kept of an explanation

EXPLAIN_SYSTEM = (
    "You are studying a neuron of a language model. You are given text excerpts where the neuron fires; "
    "the tokens where it fires are marked <<like this>>. Reply with one short phrase describing what the "
    "marked tokens have in common. Reply with the phrase only."
)
DETECTION_SYSTEM = (
    "You check explanations of a neuron of a language model. You are given an explanation of what the "
    "neuron responds to and a text excerpt. Answer Yes if the text contains what the explanation "
    "describes, otherwise No. Answer with one word: Yes or No."
)
FUZZING_SYSTEM = (
    "You check explanations of a neuron of a language model. You are given an explanation of what the "
    "neuron responds to and a text excerpt in which some tokens are marked <<like this>>. Answer Yes if "
    "the marked tokens match the explanation, otherwise No. Answer with one word: Yes or No."
)
DETECTION_QUESTION = "Does this text contain what the explanation describes? Answer Yes or No."
FUZZING_QUESTION = "Do the marked tokens match the explanation? Answer Yes or No."


@dataclass
class Explanation:
    latent: int
    text: str  # the cleaned reply (`clean_explanation`)
    chat: Chat  # what the judge read


@dataclass
class Judgement:
    """One Yes/No question: kind "detection" or "fuzzing", the excerpt as shown, the true label."""

    kind: str
    text: str
    label: int
    p_yes: float
    seq: int = -1  # the excerpt's anchor
    position: int = -1


@dataclass
class LatentScore:
    latent: int
    explanation: str
    detection_balanced_accuracy: float
    detection_auroc: float
    fuzzing_balanced_accuracy: float  # NaN where no window had a non-activating token to mark
    fuzzing_auroc: float
    judgements: list[Judgement]


# --- rendering ----------------------------------------------------------------------------------------
def _marked(text: str) -> str:
    """<<text>>, leading whitespace outside the marks ("a << cat>>" reads as "a <<cat>>"); a token that is
    all whitespace keeps its marks around it."""
    body = text.lstrip()
    return f"{text[: len(text) - len(body)]}<<{body}>>" if body else f"<<{text}>>"


def render(example: Example, decode: Decode, mark: bool, mask: np.ndarray | None = None) -> str:
    """The excerpt as text; with `mark`, the tokens of `mask` (default: the example's activating tokens)
    inside <<...>>, adjacent marked tokens in one span, a leading space outside. Each run of tokens is
    decoded together, so a multi-token character or word survives."""
    tokens = [int(t) for t in example.tokens]
    if not mark:
        return decode(tokens)
    marked = np.asarray(example.mask() if mask is None else mask, dtype=bool)
    if marked.shape != (len(tokens),):
        raise ValueError(
            f"mask has shape {marked.shape}; pass one bool per token of the window ({len(tokens)})"
        )
    parts, start = [], 0
    for end in range(1, len(tokens) + 1):
        if end == len(tokens) or marked[end] != marked[start]:
            text = decode(tokens[start:end])
            parts.append(_marked(text) if marked[start] else text)
            start = end
    return "".join(parts)


def one_line(text: str) -> str:
    """Newlines as spaces and the ends stripped, so each excerpt stays on its own line."""
    return text.replace("\r", " ").replace("\n", " ").strip()


def clean_explanation(reply: str) -> str:
    """The first non-empty line of a reply (its first list item where that line only announces a list),
    without an "Explanation:"-like prefix, final period or quotes, at most 120 characters."""
    lines = [s.strip() for s in reply.splitlines() if s.strip()]
    line = lines[0] if lines else ""
    if len(lines) > 1 and line.endswith(":"):  # "...have in common:" then a list: its first item
        line = re.sub(r"^(\d+[.)]|[*+-])\s*", "", lines[1]).replace("**", "")
    line = re.sub(r"^(explanation|answer|phrase|description)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().rstrip(".").strip("\"'`“”‘’").strip()[:MAX_EXPLANATION]


# --- chats ------------------------------------------------------------------------------------------
def explanation_chat(sample: LatentSample, decode: Decode) -> Chat:
    """The explainer's chat: the train examples numbered, activating tokens marked."""
    lines = [f"{i}. {one_line(render(e, decode, mark=True))}" for i, e in enumerate(sample.train, 1)]
    user = "Excerpts:\n" + "\n".join(lines) + "\n\nWhat do the marked tokens have in common?"
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def question_chat(kind: str, explanation: str, excerpt: str) -> Chat:
    """The Yes/No chat of one detection or fuzzing judgement."""
    system, question = (
        (DETECTION_SYSTEM, DETECTION_QUESTION) if kind == "detection" else (FUZZING_SYSTEM, FUZZING_QUESTION)
    )
    user = f"Explanation: {explanation}\n\nText: {one_line(excerpt)}\n\n{question}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def explain(
    judge: Judge, samples: list[LatentSample], decode: Decode, max_new_tokens: int = 24
) -> list[Explanation]:
    """One explanation per latent, all generated in one batch."""
    chats = [explanation_chat(s, decode) for s in samples]
    replies = judge.generate(chats, max_new_tokens) if chats else []
    return [Explanation(s.latent, clean_explanation(r), c) for s, r, c in zip(samples, replies, chats)]


# --- the excerpts to judge ----------------------------------------------------------------------------
def wrong_marks(example: Example, rng: np.random.Generator) -> np.ndarray | None:
    """[w] bool: as many non-activating tokens as the example has activating ones (at least 1), drawn at
    random; None when the window has no non-activating token."""
    truth = example.mask()
    off = np.flatnonzero(~truth)
    if len(off) == 0:
        return None
    n = min(max(int(truth.sum()), 1), len(off))
    out = np.zeros(len(truth), dtype=bool)
    out[rng.choice(off, size=n, replace=False)] = True
    return out


def detection_items(sample: LatentSample, decode: Decode) -> list[Judgement]:
    """Unmarked test excerpts: test_active (label 1), then test_random (label 0); p_yes still NaN."""
    return [
        Judgement("detection", render(e, decode, mark=False), label, float("nan"), e.seq, e.position)
        for label, group in ((1, sample.test_active), (0, sample.test_random))
        for e in group
    ]


def fuzzing_items(sample: LatentSample, decode: Decode, rng: np.random.Generator) -> list[Judgement]:
    """Each test_active excerpt with its activating tokens marked (label 1), then each with wrong marks
    (label 0, `wrong_marks`); p_yes still NaN."""
    right = [
        Judgement("fuzzing", render(e, decode, mark=True), 1, float("nan"), e.seq, e.position)
        for e in sample.test_active
    ]
    wrong = []
    for e in sample.test_active:
        marks = wrong_marks(e, rng)
        if marks is not None:
            wrong.append(
                Judgement("fuzzing", render(e, decode, True, marks), 0, float("nan"), e.seq, e.position)
            )
    return right + wrong


# --- metrics ------------------------------------------------------------------------------------------
def _labels(labels) -> np.ndarray:
    y = np.asarray(labels).astype(int).reshape(-1)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(
            f"labels hold only class {int(y[0]) if len(y) else '-'}; the score needs positives and negatives"
        )
    return y


def balanced_accuracy(labels, predicted) -> float:
    """(TPR + TNR) / 2 of boolean predictions; ValueError when a class is missing."""
    y, p = _labels(labels), np.asarray(predicted, dtype=bool).reshape(-1)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions for {len(y)} labels; pass one per label")
    return float((p[y == 1].mean() + (~p[y == 0]).mean()) / 2)


def average_ranks(scores) -> np.ndarray:
    """1-based ranks, tied scores sharing the mean of their ranks."""
    _, inverse, counts = np.unique(
        np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True
    )
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse.reshape(-1)]


def auroc(labels, scores) -> float:
    """Area under the ROC curve by Mann-Whitney U: P(score of a positive > score of a negative), ties 1/2."""
    y, s = _labels(labels), np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores for {len(y)} labels; pass one per label")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    u = average_ranks(s)[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _pair(judgements: list[Judgement]) -> tuple[float, float]:
    """(balanced accuracy, AUROC) of some judgements; NaN when a class is missing."""
    y = np.array([j.label for j in judgements], dtype=int)
    p = np.array([j.p_yes for j in judgements], dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    return balanced_accuracy(y, p > 0.5), auroc(y, p)


def latent_score(explanation: Explanation, judgements: list[Judgement]) -> LatentScore:
    """The four scores of one latent from its answered judgements."""
    det = _pair([j for j in judgements if j.kind == "detection"])
    fuz = _pair([j for j in judgements if j.kind == "fuzzing"])
    return LatentScore(explanation.latent, explanation.text, *det, *fuz, judgements)


# --- the pipeline -------------------------------------------------------------------------------------
def _nan_to_none(x: float) -> float | None:
    return None if x != x else x


def write_audit(path: Path, sample: LatentSample, explanation: Explanation, score: LatentScore) -> None:
    """latent_<id>.json: the explanation chat and reply, the scores, every scored chat, the anchors."""
    anchors = {
        k: [[e.seq, e.position] for e in getattr(sample, k)] for k in ("train", "test_active", "test_random")
    }
    record = {
        "latent": sample.latent,
        "explanation": explanation.text,
        "explanation_chat": explanation.chat,
        "scores": {
            k: _nan_to_none(getattr(score, k))
            for k in (
                "detection_balanced_accuracy",
                "detection_auroc",
                "fuzzing_balanced_accuracy",
                "fuzzing_auroc",
            )
        },
        "judgements": [
            {**asdict(j), "chat": question_chat(j.kind, explanation.text, j.text)} for j in score.judgements
        ],
        "anchors": anchors,
    }
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False))


def score_explained(
    judge: Judge,
    samples: list[LatentSample],
    explanations: list[Explanation],
    decode: Decode,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> list[LatentScore]:
    """Detection and fuzzing of given explanations (one per sample, e.g. `explain`'s, or explanations that
    are true by construction to check the judge), all questions in one yes_probability batch. Fuzzing's
    wrong marks draw from `np.random.default_rng([seed, latent])`. `out_dir`: write latent_<id>.json."""
    if len(explanations) != len(samples):
        raise ValueError(f"{len(explanations)} explanations for {len(samples)} samples; pass one per sample")
    items = [
        detection_items(s, decode) + fuzzing_items(s, decode, np.random.default_rng([seed, s.latent]))
        for s in samples
    ]
    chats = [question_chat(j.kind, x.text, j.text) for x, group in zip(explanations, items) for j in group]
    answers = np.asarray(judge.yes_probability(chats) if chats else [], dtype=np.float64)
    if answers.shape != (len(chats),):
        raise ValueError(f"judge {judge.name} gave {answers.shape} answers for {len(chats)} chats")
    p_yes = iter(answers.tolist())
    for group in items:
        for j in group:
            j.p_yes = float(next(p_yes))
    scores = [latent_score(x, group) for x, group in zip(explanations, items)]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for s, x, sc in zip(samples, explanations, scores):
            write_audit(out / f"latent_{s.latent}.json", s, x, sc)
    return scores


def score_latents(
    judge: Judge,
    samples: list[LatentSample],
    decode: Decode,
    out_dir: str | Path | None = None,
    seed: int = 0,
    max_new_tokens: int = 24,
) -> list[LatentScore]:
    """Explain and score every sampled latent (module docstring): one generate batch for the
    explanations (`explain`), then `score_explained`."""
    explanations = explain(judge, samples, decode, max_new_tokens)
    return score_explained(judge, samples, explanations, decode, out_dir, seed)
