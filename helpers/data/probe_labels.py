"""Labels for sparse probing that need no hub: WordNet parts of speech and reST code spans.

What:
- `wordnet_pos(root)`: lowercase single-word lemmas that WordNet lists under exactly ONE part of speech
  (index.noun / index.verb / index.adj / index.adv of Debian's wordnet-base), mapped to "noun" / "verb" /
  "adj" / "adv". Lemmas only: the inflections of noun.exc / verb.exc / adj.exc / adv.exc ("ran", "geese")
  are NOT added, so a token "runs" is simply not in the lexicon.
- `pos_lexicon(root)`: `wordnet_pos` less stop words and words that may inflect another part of speech's
  lemma (the words whose part of speech a probe can be asked about).
- `rst_code_spans(text)`: character spans of the code in reStructuredText (docutils' literal blocks,
  doctest blocks and Sphinx's code directives; rules at the function).
- `token_char_labels(offsets, spans)` / `token_char_overlaps`: which tokens lie inside / touch a span.
- `token_texts(tokenizer, ids)` and `sequence_offsets(texts)`: the text of each token decoded on its
  own, and the character offsets of the tokens in their concatenation. The activation store keeps token
  ids only; decoding each token alone and concatenating is the simplest way to get text with exact
  per-token offsets (a character split over two byte-level tokens decodes to U+FFFD in both: offsets
  stay consistent, that character is lost).
- `resync_offset(text)`: where a text that starts mid-document can first be parsed (a store's window
  begins anywhere in a document, possibly inside a code block).
Why: sparse probing (SAEBench, Karvonen et al. 2025, sparse_probing/) needs binary labels on the
lab's own offline text: noun vs verb tokens, code vs prose windows of the python-docs reST sources.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

POS_FILES = {"noun": "index.noun", "verb": "index.verb", "adj": "index.adj", "adv": "index.adv"}
WORD = re.compile(r"[a-z]+")
CODE_DIRECTIVES = ("code-block", "code", "sourcecode", "doctest", "testcode", "testsetup", "testoutput")
DIRECTIVE = re.compile(r"\.\.\s+([\w-]+)::")
CODE_DIRECTIVE = re.compile(r"\.\.\s+(" + "|".join(CODE_DIRECTIVES) + r")::(\s|$)")
OPTION = re.compile(r":[\w-]+:")
BULLET = re.compile(r"([-*+]|\d+\.|#\.|\(?\d+\))\s+")


class LabelError(ValueError):
    """Missing or malformed label source; the message names the fix."""


# --- WordNet -------------------------------------------------------------------------------------
def _stamp(path: str) -> tuple[str, int, int]:
    """(path, mtime, size): the cache key of a file's parse, so an edited file is read again."""
    st = Path(path).stat()
    return path, st.st_mtime_ns, st.st_size


def _lemmas(path: str) -> frozenset[str]:
    """Single lowercase-letter lemmas of one WordNet index file (license header lines start with 2 spaces)."""
    return _read_lemmas(*_stamp(path))


@lru_cache(maxsize=8)
def _read_lemmas(path: str, _mtime: int, _size: int) -> frozenset[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = (line.split(" ", 1)[0] for line in f if not line.startswith("  "))
        return frozenset(w for w in first if WORD.fullmatch(w))


def wordnet_pos(root: str | Path = "/usr/share/wordnet") -> dict[str, str]:
    """{lemma: "noun" | "verb" | "adj" | "adv"} for the lowercase single words (letters a-z only: no
    underscores, hyphens or digits) listed in exactly one of the four WordNet index files. Lemmas only
    (module docstring)."""
    root = Path(root)
    missing = [name for name in POS_FILES.values() if not (root / name).exists()]
    if missing:
        raise LabelError(
            f"WordNet index files {missing} not found in {root}; install them with "
            "`apt install wordnet-base` (Debian) or pass root= the folder holding index.noun etc."
        )
    sets = {pos: _lemmas(str(root / name)) for pos, name in POS_FILES.items()}
    counts: dict[str, int] = {}
    for words in sets.values():
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    return {w: pos for pos, words in sets.items() for w in words if counts[w] == 1}


# WordNet's morphy detachment rules (morph.c): an inflected form -> its lemma, per part of speech
MORPHY = {
    "noun": (
        ("s", ""),
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ),
    "verb": (
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ),
    "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adv": (),
}
EXC_FILES = {"noun": "noun.exc", "verb": "verb.exc", "adj": "adj.exc", "adv": "adv.exc"}


def _exceptions(path: str) -> dict[str, tuple[str, ...]]:
    """{inflected form: its lemmas} of one WordNet .exc file ("geese goose"); {} if it is missing."""
    return _read_exceptions(*_stamp(path)) if Path(path).exists() else {}


@lru_cache(maxsize=8)
def _read_exceptions(path: str, _mtime: int, _size: int) -> dict[str, tuple[str, ...]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return {p[0]: tuple(p[1:]) for p in (line.split() for line in f) if len(p) > 1}


def _bases(word: str, pos: str, exceptions: dict[str, tuple[str, ...]]) -> set[str]:
    """Lemmas that `word` may inflect as `pos`: morphy's suffix rules and that part of speech's .exc list."""
    out = {word[: len(word) - len(suf)] + rep for suf, rep in MORPHY[pos] if word.endswith(suf)}
    return out | set(exceptions.get(word, ()))


def pos_lexicon(root: str | Path = "/usr/share/wordnet", exclude=None) -> dict[str, str]:
    """`wordnet_pos` without the words whose part of speech a token cannot show: stop words (`exclude`,
    default sklearn's ENGLISH_STOP_WORDS: WordNet lists "a", "it", "or", "may", "at" as nouns only, being
    letters, months or units) and words that may inflect a lemma of another part of speech ("using":
    use, verb; "values": value, verb), by WordNet's morphy suffix rules and .exc lists."""
    if exclude is None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS as exclude
    root, pos_of = Path(root), wordnet_pos(root)
    lemmas = {pos: _lemmas(str(root / name)) for pos, name in POS_FILES.items()}
    exc = {pos: _exceptions(str(root / name)) for pos, name in EXC_FILES.items()}

    def inflects_other(word: str, pos: str) -> bool:
        return any(_bases(word, other, exc[other]) & lemmas[other] for other in POS_FILES if other != pos)

    return {w: pos for w, pos in pos_of.items() if w not in exclude and not inflects_other(w, pos)}


# --- reST code spans -----------------------------------------------------------------------------
def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _blank(line: str) -> bool:
    return not line.strip()


def _body_indent(line: str) -> int:
    """Indentation of a paragraph's text: a bullet / enumerator's marker counts as indentation."""
    m = BULLET.match(line[_indent(line) :])
    return _indent(line) + (len(m.group(0)) if m else 0)


def _block_end(lines: list[str], start: int, parent: int) -> int:
    """Index after the last non-blank line from `start` on indented more than `parent`."""
    end = start
    for j in range(start, len(lines)):
        if _blank(lines[j]):
            continue
        if _indent(lines[j]) <= parent:
            break
        end = j + 1
    return end


def _literal_block(lines: list[str], i: int, para_indent: int) -> tuple[int, int] | None:
    """(first, end) line indices of the literal block after a paragraph ending "::" on line i."""
    if i + 1 < len(lines) and not _blank(lines[i + 1]):
        return None  # the paragraph goes on: "::" is not at its end
    j = i + 1
    while j < len(lines) and _blank(lines[j]):
        j += 1
    if j == len(lines) or _indent(lines[j]) <= para_indent:
        return None
    return j, _block_end(lines, j, para_indent)


def _directive_body(lines: list[str], i: int) -> tuple[int, int] | None:
    """(first, end) line indices of a code directive's body: options right after it are skipped."""
    parent = _indent(lines[i])
    j = i + 1
    while j < len(lines) and not _blank(lines[j]) and OPTION.match(lines[j].strip()):
        j += 1
    while j < len(lines) and _blank(lines[j]):
        j += 1
    if j == len(lines) or _indent(lines[j]) <= parent:
        return None
    return j, _block_end(lines, j, parent)


def _doctest_end(lines: list[str], i: int) -> int:
    j = i
    while j < len(lines) and not _blank(lines[j]):
        j += 1
    return j


def _code_line_ranges(lines: list[str]) -> list[tuple[int, int]]:
    """[first, end) line ranges of code, scanning once from the top."""
    out, i, para_start = [], 0, True
    para_indent = 0
    while i < len(lines):
        line = lines[i]
        if _blank(line):
            i, para_start = i + 1, True
            continue
        stripped = line.strip()
        if para_start:
            para_indent = _body_indent(line)
        block = None
        if CODE_DIRECTIVE.match(stripped):
            block = _directive_body(lines, i)
        elif para_start and stripped.startswith(">>> "):
            block = (i, _doctest_end(lines, i))
        elif stripped.endswith("::") and not DIRECTIVE.match(stripped) and not stripped.startswith(".. "):
            block = _literal_block(lines, i, para_indent)
        para_start = False
        if block is None:
            i += 1
            continue
        out.append(block)
        i, para_start = block[1], True
    return out


def rst_code_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint [start, end) character spans of the code in reST `text`:
    - literal blocks: a paragraph whose last line ends with "::" (not an explicit-markup ".. x::" line),
      then a blank line, then lines indented more than the paragraph's text; the block runs until the
      next non-blank line indented no more than the paragraph (blank lines inside it belong to it);
    - the indented bodies of `.. code-block::`, `.. code::`, `.. sourcecode::`, `.. doctest::` (and
      Sphinx's testcode / testsetup / testoutput) directives; ":option:" lines right after the
      directive are not code;
    - doctest blocks: a paragraph whose first line starts with ">>> ", up to the next blank line.
    A span runs from the start of its first line (indentation included) to the end of its last non-blank
    line (newline excluded). Not handled: quoted (unindented) literal blocks, `literalinclude`."""
    lines = text.splitlines(keepends=True)
    starts = np.concatenate([[0], np.cumsum([len(v) for v in lines])]).astype(int)
    return [
        (int(starts[a]), int(starts[b - 1] + len(lines[b - 1].rstrip("\r\n"))))
        for a, b in _code_line_ranges(lines)
    ]


def resync_offset(text: str) -> int:
    """Character offset from which `text`, cut from a document at an unknown point, parses as the
    document would: the first non-blank line indented 0 that follows a blank line (no literal block,
    directive body or doctest block can go on past it). len(text) when there is none."""
    lines = text.splitlines(keepends=True)
    pos = len(lines[0]) if lines else 0
    for prev, line in zip(lines, lines[1:]):
        if _blank(prev) and not _blank(line) and _indent(line) == 0:
            return pos
        pos += len(line)
    return len(text)


# --- tokens --------------------------------------------------------------------------------------
def token_texts(tokenizer, ids) -> list[str]:
    """Each token id decoded on its own (`tokenizer.decode([id])`), with the leading space that
    sentencepiece tokenizers drop from a "▁" token put back (`convert_ids_to_tokens`)."""
    out = []
    for i in (int(v) for v in ids):
        text = tokenizer.decode([i])
        raw = tokenizer.convert_ids_to_tokens(i)
        if isinstance(raw, str) and raw.startswith("▁") and not text.startswith(" "):
            text = " " + text
        out.append(text)
    return out


def sequence_offsets(texts: list[str]) -> tuple[str, np.ndarray]:
    """(the concatenated text, [n, 2] int64 (start, end) character offsets of each token in it)."""
    ends = np.cumsum([len(t) for t in texts], dtype=np.int64)
    return "".join(texts), np.stack([ends - np.array([len(t) for t in texts], dtype=np.int64), ends], 1)


def _span_arrays(spans) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(arr) and (np.any(arr[:, 1] < arr[:, 0]) or np.any(arr[1:, 0] < arr[:-1, 1])):
        raise LabelError("spans must be sorted, disjoint (start, end) pairs, as rst_code_spans returns")
    return arr[:, 0], arr[:, 1]


def token_char_labels(offsets, spans) -> np.ndarray:
    """[n] bool: token i's characters [start, end) lie within one of the (sorted, disjoint) spans."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    s, e = _span_arrays(spans)
    if not len(s):
        return np.zeros(len(off), dtype=bool)
    j = np.searchsorted(s, off[:, 0], side="right") - 1  # the last span starting at or before the token
    ok = j >= 0
    return ok & (off[:, 1] <= e[np.maximum(j, 0)]) & (off[:, 0] >= s[np.maximum(j, 0)])


def token_char_overlaps(offsets, spans) -> np.ndarray:
    """[n] bool: token i shares at least one character with a span (the complement is "surely outside")."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    s, e = _span_arrays(spans)
    if not len(s):
        return np.zeros(len(off), dtype=bool)
    j = np.searchsorted(s, off[:, 1], side="left") - 1  # the last span starting before the token ends
    return (j >= 0) & (e[np.maximum(j, 0)] > off[:, 0]) & (off[:, 1] > off[:, 0])
