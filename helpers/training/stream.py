"""The trainer's view of a batch source: exact batches, the input scale, the layer blocks.

What: `rechunk` (exact [size, d] batches from pieces of any length, after skipping rows, with a width
check), `norm_scale` (s = sqrt(d) / mean ||x|| from the first rows; a crosscoder's input has one
block per layer and gets one scale per block, so every layer reaches mean norm sqrt(d_model)),
`scale_blocks` and `chain`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from helpers.sae import SAEError


def rechunk(it: Iterator[Tensor], size: int, skip: int = 0, d_in: int | None = None) -> Iterator[Tensor]:
    """Exact [size, d] batches from pieces of any length, after discarding `skip` rows."""
    buf, n = [], 0
    for piece in it:
        piece = torch.as_tensor(piece)
        if piece.ndim != 2:
            raise SAEError(f"batches must be [n, d_in] tensors, got shape {tuple(piece.shape)}")
        if d_in is not None and piece.shape[1] != d_in:
            raise SAEError(
                f"activations have width {piece.shape[1]} but the SAE expects d_in={d_in}; "
                "did you collect another model or layer?"
            )
        if skip:
            drop = min(skip, piece.shape[0])
            piece, skip = piece[drop:], skip - drop
        buf.append(piece)
        n += piece.shape[0]
        while n >= size:
            cat = torch.cat(buf) if len(buf) > 1 else buf[0]
            yield cat[:size]
            rest = cat[size:]  # kept only when non-empty, so that the next exact piece is not copied
            buf, n = ([rest] if len(rest) else []), n - size


def norm_scale(xs: list[Tensor], d_in: int, n_blocks: int = 1) -> float | Tensor:
    """sqrt(d) / mean ||x|| over the rows of xs: a float for one block (d = d_in), else a [n_blocks]
    tensor with one scale per layer block (d = d_in / n_blocks)."""
    x = torch.cat(xs).float()
    d = d_in // n_blocks
    mean_norm = x.view(len(x), n_blocks, d).norm(dim=2).mean(0)  # [n_blocks]
    if not bool((mean_norm > 0).all()):
        raise SAEError("the first batches have zero mean norm; cannot normalise the activations")
    s = math.sqrt(d) / mean_norm
    return float(s[0]) if n_blocks == 1 else s


def scale_blocks(x: Tensor, scale: Tensor) -> Tensor:
    """x [n, L*d] with block l multiplied by scale[l]."""
    L = scale.shape[0]
    return (x.view(x.shape[0], L, -1) * scale.to(x.dtype)[None, :, None]).view(x.shape)


def chain(first: list[Tensor], rest: Iterator[Tensor]) -> Iterator[Tensor]:
    yield from first
    yield from rest
