"""Input checks a user meets first: one line naming the input and the fix, never a parser's or
torch's traceback (each raise is `from None`, so the library's own error is not chained in).

token ids (dtype, range, empty), arrays of any kind as tensors (`as_tensor`, `as_matrix`),
non-empty / non-degenerate arrays, and files that are missing, truncated or not what they claim
(JSON, safetensors, npy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class InputError(ValueError):
    """A user-supplied input is wrong; the message names it and the fix."""


def check_token_ids(
    ids, vocab_size: int | None = None, name: str = "input_ids", vocab_of: str = "the model"
) -> torch.Tensor:
    """Token ids as a LongTensor, after checking they are integers in 0..vocab_size-1.

    Float ids are refused, not truncated (2.7 -> 2 would silently read another token)."""
    t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise InputError(
            f"{name} has dtype {t.dtype}; token ids must be integers: pass the "
            f"tokenizer's ids (torch.long), not floats (they would be truncated)"
        )
    if t.numel() == 0:
        raise InputError(
            f"{name} is empty (shape {tuple(t.shape)}); pass at least one sequence of at least one token"
        )
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        top = "vocab - 1" if vocab_size is None else vocab_size - 1
        raise InputError(
            f"{name} holds a negative token id ({lo}); ids must be in 0..{top}: "
            f"replace padding (-1, -100) with a real token id, e.g. the BOS id"
        )
    if vocab_size is not None and hi >= vocab_size:
        raise InputError(
            f"{name} holds token id {hi} but the vocabulary of {vocab_of} has "
            f"{vocab_size} tokens (ids 0..{vocab_size - 1}); tokenize with the "
            f"tokenizer of {vocab_of}"
        )
    return t.long()


def vocab_size_of(model) -> int | None:
    """Rows of the input embedding of an nnsight / transformers model, or None if unknown."""
    m = getattr(model, "_module", model)
    try:
        return int(m.get_input_embeddings().weight.shape[0])
    except AttributeError:
        cfg = getattr(m, "config", None)
        return getattr(cfg, "vocab_size", None)


def as_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (tensor, numpy array or nested lists) as a detached torch tensor, in `dtype` when given."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


def as_matrix(
    x, name: str, fix: str = "pass [n, d] rows", finite: bool = False, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """x as a 2-D [n, d] tensor in `dtype`; one line naming `name` and `fix` otherwise (and on
    nan/inf when `finite`)."""
    t = as_tensor(x)
    if t.ndim != 2:
        raise InputError(f"{name} must be 2-D [n, d], got shape {tuple(t.shape)}; {fix}")
    t = t.to(dtype)
    if finite and not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains nan/inf; drop or zero those rows first")
    return t


def check_rows(x, name: str, min_rows: int = 1) -> None:
    """x must have at least `min_rows` rows (first axis)."""
    n = int(x.shape[0]) if getattr(x, "ndim", 0) >= 1 else 0
    if n < min_rows:
        raise InputError(
            f"{name} has {n} rows (shape {tuple(x.shape)}); pass at least {min_rows} "
            f"row{'s' if min_rows > 1 else ''} of data"
        )


# ------------------------------------------------------------------------------- files
def read_json(
    path, what: str = "JSON file", fix: str = "restore or regenerate it", error: type = InputError
) -> dict:
    """Parse a JSON object from `path`; missing, empty, truncated or non-object files raise one line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found; {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not text (binary data); {fix}") from None
    except json.JSONDecodeError as err:
        raise error(
            f"{what} {path} is not valid JSON (truncated or edited? {err.msg} at line "
            f"{err.lineno}, column {err.colno}); {fix}"
        ) from None
    if not isinstance(obj, dict):
        raise error(f"{what} {path} holds a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


def require_keys(obj: dict, keys, path, what: str, fix: str, error: type = InputError) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise error(f"{what} {path} lacks {', '.join(map(repr, missing))}; {fix}")


def load_safetensors(
    path, fix: str = "save the file again", error: type = InputError
) -> dict[str, torch.Tensor]:
    """safetensors.torch.load_file with one-line errors for missing or damaged files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"safetensors file {path} not found; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise error(
            f"{path} is not a readable safetensors file ({path.stat().st_size} bytes; {first}); {fix}"
        ) from None


def load_npy(path, fix: str, mmap_mode: str | None = "r", error: type = InputError) -> np.ndarray:
    """np.load of one .npy with one-line errors for missing, truncated or non-npy files."""
    path = Path(path)
    if not path.is_file():
        raise error(f"array file {path} not found; {fix}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise error(
            f"{path} is not a readable .npy array ({path.stat().st_size} bytes; {first}); {fix}"
        ) from None
