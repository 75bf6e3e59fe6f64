"""Word-aligned activations across models with different tokenizers: one row per whitespace-separated word.

What: `words_of(text)` (character spans of the words), `last_token_of_words` (each word's LAST token in
one tokenizer's window), `align_documents` (the words every model kept, in one order, with each model's
token index of each) and `aligned_activations` (each model's activations at those tokens, [n_words, d]).

Why: two models that read the same documents through different tokenizers have no common token axis, so
their activations cannot be compared row by row. Words are a unit both share; a causal model has read a
whole word only at the word's last token, so that is the row each model contributes.

Which token is a word's last: the last token whose character span overlaps the word's characters (tokens
with empty spans never count). A token that carries whitespace before the word (SentencePiece's "▁word",
GPT-2's "Ġword", a "\\nword" piece) overlaps only that word and so counts for it; punctuation attached to a
word ("features;") is part of the word; a token made only of whitespace belongs to no word; byte-level
tokens that split one character share that character's span, so the last of them counts. A token that
spans two words (rare: a merge across whitespace) counts for both.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import torch

from helpers.model.hooks import hook_activations, hook_width, parse_hook
from helpers.model.models import spec_of

_WORD = re.compile(r"\S+")


def words_of(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the whitespace-separated words of `text`: the unit that every
    tokenizer's activations are aligned on."""
    return [m.span() for m in _WORD.finditer(text)]


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids, character offsets) of `text` without special tokens, from a transformers fast tokenizer
    or a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} gives no character offsets; load a fast tokenizer "
            "(AutoTokenizer.from_pretrained(..., use_fast=True)) or pass a tokenizers.Tokenizer"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def last_token_of_words(
    text: str, tokenizer, max_tokens: int, bos_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids [T], word_token_idx [W], n_words) of one document in one tokenizer.

    input_ids: the window the model reads, `bos_id` first when given, at most `max_tokens` tokens in all.
    word_token_idx: for each of the W words of `words_of(text)`, the index in input_ids of its last token
    (see the module docstring), or -1 where the word is dropped: its last token falls beyond the window
    (words cut off by `max_tokens`) or no token covers it. n_words: how many words were kept (>= 0).
    Why the whole text is tokenized before truncating: a word whose first tokens fit but whose last does
    not must be dropped, not read half-way."""
    shift = int(bos_id is not None)
    if max_tokens < 1 + shift:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for a word; use max_tokens >= {1 + shift}")
    ids, offsets = _encode(tokenizer, text)
    spans = words_of(text)
    starts, ends = [s for s, _ in spans], [e for _, e in spans]
    last = [-1] * len(spans)
    for t, (ts, te) in enumerate(offsets):
        if te <= ts:  # special or empty-span tokens cover no character
            continue
        # words overlapping [ts, te): end > ts and start < te
        for w in range(bisect.bisect_right(ends, ts), bisect.bisect_left(starts, te)):
            last[w] = max(last[w], t)
    word_token_idx = torch.tensor([t + shift if t >= 0 else -1 for t in last], dtype=torch.long)
    word_token_idx[word_token_idx >= max_tokens] = -1
    input_ids = torch.tensor(([bos_id] if shift else []) + ids, dtype=torch.long)[:max_tokens]
    return input_ids, word_token_idx, int((word_token_idx >= 0).sum())


@dataclass
class AlignedBatch:
    """Documents read by several models, and the words that every model kept, in one order.

    input_ids[m][d]: model m's window of document d, LongTensor [T_md] (ragged; BOS first when given).
    token_idx[m]: LongTensor [n_words], each kept word's last-token index within its document's window
    in model m. doc_idx / word_idx: LongTensor [n_words], the document of each word and its index in
    `words_of(texts[doc])`; words: the words themselves. Words are ordered by document, then position."""

    input_ids: list[list[torch.Tensor]]
    token_idx: list[torch.Tensor]
    doc_idx: torch.Tensor
    word_idx: torch.Tensor
    words: list[str]

    @property
    def n_words(self) -> int:
        """How many words every model kept (the rows of `aligned_activations`)."""
        return len(self.words)

    def padded(self, model: int, pad_id: int = 0, docs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [D, T_max], attention_mask [D, T_max]) of model `model`'s windows of `docs` (default
        all), padded on the right with `pad_id`: the batch a causal model reads in one forward pass."""
        seqs = [
            self.input_ids[model][d] for d in (range(len(self.input_ids[model])) if docs is None else docs)
        ]
        t_max = max((len(s) for s in seqs), default=0)
        ids_dt = torch.full((len(seqs), t_max), pad_id, dtype=torch.long)
        mask_dt = torch.zeros((len(seqs), t_max), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids_dt[i, : len(s)] = s
            mask_dt[i, : len(s)] = 1
        return ids_dt, mask_dt


def align_documents(texts, tokenizers: list, max_tokens, bos_ids=None) -> AlignedBatch:
    """The AlignedBatch of `texts` read through each of `tokenizers`: a word is kept only if EVERY model
    kept it in its window (`last_token_of_words`), so each model's rows describe the same words in the
    same order. `max_tokens` (window length, BOS included) and `bos_ids` are one value for all models or
    one per model (a bos id of None prepends nothing)."""
    n = len(tokenizers)
    if n == 0:
        raise ValueError("no tokenizers given; pass one tokenizer per model")
    windows = list(max_tokens) if isinstance(max_tokens, list | tuple) else [max_tokens] * n
    bos = list(bos_ids) if isinstance(bos_ids, list | tuple) else [bos_ids] * n
    if len(windows) != n or len(bos) != n:
        raise ValueError(
            f"{n} tokenizers but {len(windows)} max_tokens and {len(bos)} bos_ids; "
            "give one value or one per model"
        )
    input_ids: list[list[torch.Tensor]] = [[] for _ in range(n)]
    token_idx: list[list[torch.Tensor]] = [[] for _ in range(n)]
    doc_idx, word_idx, words = [], [], []
    for d, text in enumerate(texts):
        per_model = [last_token_of_words(text, tok, windows[m], bos[m]) for m, tok in enumerate(tokenizers)]
        keep_w = torch.stack([w for _, w, _ in per_model]).ge(0).all(0)
        kept = keep_w.nonzero().flatten()
        for m, (ids, w_idx, _) in enumerate(per_model):
            input_ids[m].append(ids)
            token_idx[m].append(w_idx[kept])
        spans = words_of(text)
        doc_idx.append(torch.full((len(kept),), d, dtype=torch.long))
        word_idx.append(kept)
        words += [text[spans[i][0] : spans[i][1]] for i in kept.tolist()]
    empty = torch.zeros(0, dtype=torch.long)
    return AlignedBatch(
        input_ids=input_ids,
        token_idx=[torch.cat(t) if t else empty for t in token_idx],
        doc_idx=torch.cat(doc_idx) if doc_idx else empty,
        word_idx=torch.cat(word_idx) if word_idx else empty,
        words=words,
    )


def _hooks_per_model(hooks_or_layers, n_models: int) -> list[list]:
    """One list of hooks / layers per model: `hooks_or_layers` is shared, or already one list per model."""
    items = list(hooks_or_layers)
    if items and all(isinstance(h, list | tuple) for h in items):
        if len(items) != n_models:
            raise ValueError(f"{len(items)} hook lists for {n_models} models; give one list or one per model")
        return [list(h) for h in items]
    return [items] * n_models


@torch.no_grad()
def aligned_activations(
    models, batch: AlignedBatch, hooks_or_layers, precision: str = "float32", batch_size: int = 8
) -> list[dict]:
    """Per model, {hook or layer: activations [n_words, d]} at each kept word's last token: row i of
    every model describes the same word `batch.words[i]`.

    hooks_or_layers: int layers (resid_pre, keyed by the int) and/or SAELens hook names or HookPoints
    (keyed by the name), shared by all models or one list per model. Each model reads its own windows,
    `batch_size` documents per forward pass, padded on the RIGHT with token 0 and no attention mask:
    causal attention never lets a real token see the padding after it, so its activations equal an
    unpadded pass (positions also start at 0 as unpadded); documents with no kept word are skipped."""
    if len(models) != len(batch.input_ids):
        raise ValueError(
            f"{len(models)} models but the batch was aligned for {len(batch.input_ids)}; pass them in the "
            "order of align_documents' tokenizers"
        )
    out = []
    for m, (model, wanted) in enumerate(zip(models, _hooks_per_model(hooks_or_layers, len(models)))):
        keys = [h if isinstance(h, int) else parse_hook(h).name for h in wanted]
        names = [
            parse_hook(f"blocks.{h}.hook_resid_pre") if isinstance(h, int) else parse_hook(h) for h in wanted
        ]
        rows: dict = {k: [] for k in keys}
        n_docs = len(batch.input_ids[m])
        for start in range(0, n_docs, batch_size):
            in_chunk = (batch.doc_idx >= start) & (batch.doc_idx < start + batch_size)
            if not in_chunk.any():
                continue
            ids_bt, _ = batch.padded(m, 0, range(start, min(start + batch_size, n_docs)))
            acts = hook_activations(model, ids_bt, names, precision)
            b_idx, t_idx = batch.doc_idx[in_chunk] - start, batch.token_idx[m][in_chunk]
            for key, point in zip(keys, names):
                rows[key].append(acts[point.name][b_idx, t_idx])
        out.append(
            {
                k: torch.cat(rows[k]) if rows[k] else torch.zeros(0, hook_width(model, spec_of(model), p))
                for k, p in zip(keys, names)
            }
        )
    return out
