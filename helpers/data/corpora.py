"""Text corpora, loaded through `datasets`, and cut into fixed-length token windows.

Offline corpora come from Debian packages (or Python's own stdlib) and are prepared once into
`data/corpora/<name>.jsonl` (one {"text": document} per line), then loaded with
`datasets.load_dataset("json", ...)`, which works offline. Hub corpora are the reference post's; a
profile may also name a local file or folder of text (notes, docs, code: .txt, .md, .rst, .py; or
.jsonl / .parquet rows), or any hub dataset (`load_corpus(source=...)`).
Provenance and licences: data/README.md.

Every sequence we feed the model is `[BOS] + (seq_len - 1)` tokens of the concatenated corpus,
documents joined by the same separator token, like SAELens' `prepend_bos` contexts.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import subprocess
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.hub import from_hub_or_cache
from helpers.paths import data_dir


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    description: str
    source: str  # "debian" | "python" | "hub" | "synthetic"
    licence: str
    install_hint: str  # how to get it, named in errors


CORPORA: dict[str, CorpusSpec] = {
    "python-docs": CorpusSpec(
        "python-docs",
        "Python 3.11 documentation, reStructuredText sources (technical prose)",
        "debian",
        "PSF License",
        "apt-get install python3.11-doc",
    ),
    "kjv": CorpusSpec(
        "kjv",
        "King James Bible, one document per chapter (archaic literary English)",
        "debian",
        "public domain",
        "apt-get install bible-kjv bible-kjv-text",
    ),
    "fortunes": CorpusSpec(
        "fortunes",
        "fortune cookie database, one document per fortune (jokes, quotes)",
        "debian",
        "public domain / BSD (see /usr/share/doc/fortunes-min/copyright)",
        "apt-get install fortunes",
    ),
    "wordnet": CorpusSpec(
        "wordnet",
        "WordNet 3.0 glosses, 40 glosses per document (dictionary definitions)",
        "debian",
        "WordNet 3.0 license (BSD-like)",
        "apt-get install wordnet-base",
    ),
    "python-code": CorpusSpec(
        "python-code",
        "CPython standard library source files (code)",
        "python",
        "PSF License",
        "a CPython installation with its stdlib sources",
    ),
    "pile-10k": CorpusSpec(
        "pile-10k",
        "NeelNanda/pile-10k: first 10k documents of the Pile (the post's data)",
        "hub",
        "see the Pile's datasheet",
        "the Hugging Face hub",
    ),
    "tinystories": CorpusSpec(
        "tinystories",
        "roneneldan/TinyStories (the post's second dataset)",
        "hub",
        "CDLA-Sharing",
        "the Hugging Face hub",
    ),
    "synthetic-a": CorpusSpec(
        "synthetic-a",
        "seeded random 'sentences' over vocabulary A (tests only)",
        "synthetic",
        "generated",
        "nothing",
    ),
    "synthetic-b": CorpusSpec(
        "synthetic-b",
        "seeded random 'sentences' over vocabulary B (tests only)",
        "synthetic",
        "generated",
        "nothing",
    ),
}


class CorpusError(ValueError):
    pass


def get_corpus_spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    return CORPORA[name]


# --- document readers (name -> list of documents) ----------------------------------------------


def _python_docs() -> list[str]:
    roots = sorted(glob.glob("/usr/share/doc/python3*-doc/html/_sources"))
    files = sorted(glob.glob(f"{roots[-1]}/**/*.rst.txt", recursive=True)) if roots else []
    return [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]


def _kjv() -> list[str]:
    if not Path("/usr/bin/bible").exists():
        return []
    out = subprocess.run(
        ["bible", "-l0", "gen1:1-rev22:21"], capture_output=True, text=True, check=False
    ).stdout
    # Chapters start with a header line such as "Genesis 1" after a blank line.
    chapters = re.split(r"\n(?=\S[^\n]* \d+\n\n)", out.strip("\n"))
    return [re.sub(r"\n +", "\n", c).strip() for c in chapters if c.strip()]


def _fortunes() -> list[str]:
    docs = []
    for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if "." in Path(f).name or os.path.isdir(f) or os.path.islink(f):
            continue
        text = Path(f).read_text(encoding="utf-8", errors="replace")
        docs += [d.strip() for d in text.split("\n%\n") if d.strip()]
    return docs


def _wordnet() -> list[str]:
    glosses = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(f"/usr/share/wordnet/data.{pos}")
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            word = head.split()[4].replace("_", " ")
            glosses.append(f"{word}: {gloss.strip()}")
    return ["\n".join(glosses[i : i + 40]) for i in range(0, len(glosses), 40)]


def _python_code() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


_WORDS = {
    "synthetic-a": "the a cat dog sat ran on under mat tree big small red blue and then".split(),
    "synthetic-b": "def return if else for in x y z 0 1 2 ( ) : = + import print".split(),
}


def synthetic_documents(name: str, n_docs: int = 400, seed: int = 0) -> list[str]:
    """Zipf-distributed random 'sentences' over a small vocabulary; A and B share no words."""
    rng = random.Random(f"{name}-{seed}")
    words = _WORDS[name]
    weights = [1 / (r + 1) for r in range(len(words))]
    docs = []
    for _ in range(n_docs):
        sentences = [
            " ".join(rng.choices(words, weights, k=rng.randint(4, 12))) + "."
            for _ in range(rng.randint(3, 15))
        ]
        docs.append(" ".join(sentences))
    return docs


_READERS: dict[str, Callable[[], list[str]]] = {
    "python-docs": _python_docs,
    "kjv": _kjv,
    "fortunes": _fortunes,
    "wordnet": _wordnet,
    "python-code": _python_code,
}


# --- loading through `datasets` ----------------------------------------------------------------


def prepare_local(name: str, root: Path | None = None) -> Path:
    """Write data/corpora/<name>.jsonl once (atomically); return its path."""
    spec = get_corpus_spec(name)
    path = Path(root or data_dir() / "corpora") / f"{name}.jsonl"
    if path.exists() and path.stat().st_size > 0:
        return path
    docs = [d for d in _READERS[name]() if d.strip()]
    if not docs:
        raise CorpusError(
            f"corpus {name!r} is missing or empty on this machine; "
            f"install it with `{spec.install_hint}` (`make setup` does this)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    os.replace(tmp, path)
    return path


# A local corpus file's suffix -> its `datasets` builder. Plain-text kinds (notes, docs, code) are all
# "text": each file is one document, so one folder may mix them; JSON lines and parquet rows carry a
# 'text' key and each row is a document.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
LOCAL_BUILDERS = {
    **dict.fromkeys(TEXT_SUFFIXES, "text"),
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


def local_files(source: str | Path) -> tuple[str, list[str]]:
    """(datasets builder, files) of a local corpus: one .txt/.md/.rst/.py/.jsonl/.json/.parquet file, or
    a folder searched recursively for such files, skipping hidden files and folders (.git, .venv,
    .ipynb_checkpoints: copies, not the user's text). A folder may mix the plain-text kinds (.txt, .md,
    .rst, .py: each file one document) but not text with .jsonl or .parquet, whose rows are the
    documents: one builder reads the whole corpus."""
    path = Path(source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in LOCAL_BUILDERS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        raise CorpusError(
            f"corpus source {str(source)!r} is neither a built-in corpus ({', '.join(sorted(CORPORA))}), "
            "'hf:<dataset id>', nor an existing file or folder"
        )
    kinds = sorted({LOCAL_BUILDERS.get(p.suffix, p.suffix or "no suffix") for p in files})
    if not files or kinds[0] not in LOCAL_BUILDERS.values():
        raise CorpusError(
            f"{path}: no .txt, .md, .rst, .py, .jsonl or .parquet files to read; put the corpus's text there"
        )
    if len(kinds) > 1:
        raise CorpusError(f"{path} mixes {' and '.join(kinds)} files; keep one kind per corpus folder")
    return kinds[0], [str(p) for p in files]


def check_source(name: str, source: str | None = None) -> None:
    """Fail fast, before a model loads or a store folder is made, on a corpus that cannot be read: an
    unknown built-in name, or a local source that is missing or holds no readable files (a hub source
    is checked when it loads). A typo must not leave a store folder whose manifest records it."""
    if source is None or source == name:
        get_corpus_spec(name)
    elif source not in CORPORA and not source.startswith("hf:"):
        local_files(source)


def _load_local(source: str):
    import datasets

    builder, files = local_files(source)
    # a text file is one document; a stray non-UTF-8 byte reads as U+FFFD, as in the built-in readers
    kw = {"sample_by": "document", "encoding_errors": "replace"} if builder == "text" else {}
    return datasets.load_dataset(builder, data_files=files, split="train", **kw)


def _load_hub(repo: str, name: str, max_docs: int | None, streaming: bool = False):
    """A hub dataset's train split, downloaded into the HF cache once (or read from it offline)."""
    import datasets

    def load():
        if not streaming:
            return datasets.load_dataset(repo, split="train")
        stream = datasets.load_dataset(repo, split="train", streaming=True)
        return datasets.Dataset.from_list(list(stream.take(max_docs or 50_000)))

    return from_hub_or_cache(f"corpus {name!r} ({repo})", load)


# The hub corpora of the registry: (dataset id, streamed?). TinyStories is streamed: ~50k stories of 2.1M.
HUB_CORPORA = {"pile-10k": ("NeelNanda/pile-10k", False), "tinystories": ("roneneldan/TinyStories", True)}


def load_corpus(name: str, max_docs: int | None = None, source: str | None = None):
    """The corpus as a `datasets.Dataset` with a "text" column.

    `source` None reads the built-in corpus `name` (CORPORA). Otherwise it names where the text is: a
    built-in corpus, "hf:<dataset id>" (its train split, through the HF cache), or a local .txt/.md/.rst/
    .py/.jsonl/.parquet file or folder (each .txt, .md, .rst or .py file is one document; .jsonl and
    .parquet rows carry a 'text' key)."""
    import datasets

    datasets.disable_progress_bars()
    if source is not None and source != name and source in CORPORA:
        return load_corpus(source, max_docs)
    if source is not None and source != name:
        ds = _load_hub(source[3:], name, max_docs) if source.startswith("hf:") else _load_local(source)
        where, fix = f"corpus {name!r} ({source})", "check its files"
        if "text" not in ds.column_names:
            raise CorpusError(
                f"{where} has columns {ds.column_names}, no 'text'; write each document under a 'text' key"
            )
    else:
        spec = get_corpus_spec(name)
        where, fix = f"corpus {name!r}", f"install it with `{spec.install_hint}`"
        if spec.source == "synthetic":
            ds = datasets.Dataset.from_dict({"text": synthetic_documents(name)})
        elif spec.source == "hub":
            repo, streamed = HUB_CORPORA[name]
            ds = _load_hub(repo, name, max_docs, streaming=streamed)
        else:
            ds = datasets.load_dataset("json", data_files=str(prepare_local(name)), split="train")
    if len(ds) == 0:
        raise CorpusError(f"{where} loaded with no documents; {fix}")
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    return ds


def token_windows(
    texts, tokenizer, seq_len: int, bos_id: int, n_seq: int, seed: int = 0, corpus: str = "corpus"
) -> np.ndarray:
    """`n_seq` windows [n_seq, seq_len] (int32) of `[BOS] + seq_len-1` corpus tokens.

    Documents are tokenised without special tokens and joined with `bos_id` between them; the
    stream is cut into consecutive windows, and a seeded permutation picks which windows to keep
    (so a small budget samples the whole corpus, not its first pages). Deterministic."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short; use seq_len >= 2")
    ids: list[int] = []
    batch = 256
    for i in range(0, len(texts), batch):
        chunk = [t for t in texts[i : i + batch] if t]
        if not chunk:
            continue
        for doc in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids.extend(doc)
            ids.append(bos_id)
    body = seq_len - 1
    n_avail = len(ids) // body
    if n_avail == 0:
        raise CorpusError(f"corpus {corpus!r} is empty after tokenisation; check its files")
    if n_seq > n_avail:
        raise CorpusError(
            f"corpus {corpus!r} has {len(ids):,} tokens = {n_avail} sequences of "
            f"{seq_len}; ask for at most {n_avail * seq_len:,} tokens"
        )
    stream = np.asarray(ids[: n_avail * body], dtype=np.int32).reshape(n_avail, body)
    keep = np.random.default_rng(seed).permutation(n_avail)[:n_seq]
    out = np.empty((n_seq, seq_len), dtype=np.int32)
    out[:, 0] = bos_id
    out[:, 1:] = stream[keep]
    return out
