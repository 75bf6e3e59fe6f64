"""The text excerpts an LLM judge sees for one direction ("latent"): explanation and test examples.

What: from one latent's activation at every held-out token (`grid_ST [n_seq, T]`, e.g.
`HeldOut.grid(sae, [f])[..., 0]`), the token ids (`HeldOut.sequence_tokens`) and which tokens count as
activating (`active_mask`), `sample_latent` draws
- train: the n_train highest-activation tokens (ties: earlier sequence, then earlier position, first),
  shown to the explainer;
- test_active: n_test other activating tokens, one drawn at random from each of n_test equal-count
  activation-quantile bins of the remaining activating tokens (highest bin first), so the test spans
  weak as well as strong activations;
- test_random: n_test tokens drawn uniformly among those that are not activating and whose whole
  window holds no activating token (the negatives of detection scoring).
Each is an `Example`: a window of `before` tokens, the anchor, and `after` tokens, clipped to the
sequence and never reaching position 0 (the BOS / attention sink, which the lab leaves out everywhere).

Why: this is the sampling of delphi's explainer and scorers (Paulo et al., "Automatically Interpreting
Millions of Features in Large Language Models", arXiv 2410.13928; github.com/EleutherAI/delphi): the
explanation comes from the top activations, the score from held-out activating examples spread over
activation quantiles (an explanation of the top only should not score well) and from random
non-activating contexts.

Activating: an SAE latent fires where it is > 0 (`active_mask(grid_ST)`). A dense baseline direction
(a neuron, a PCA or random direction) is nonzero almost everywhere, so the caller passes
`dense_top_fraction`: its top fraction of tokens by value counts as activating (delphi's comparison of
neurons with SAE latents does the same). The mask travels with each example (`Example.active`), so
the excerpts mark the same tokens the sampling used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BEFORE, AFTER = 12, 4  # tokens shown before / after the anchor (delphi shows ~32-token windows)


@dataclass
class Example:
    """One excerpt: token ids and activations of positions lo..hi of sequence `seq` around `position`."""

    seq: int  # row of grid_ST (a held-out sequence)
    position: int  # the anchor's position in the sequence
    tokens: np.ndarray  # [w] int64
    acts: np.ndarray  # [w] float32, this latent's activation at each token of the window
    anchor: int  # index of the anchor in the window: tokens[anchor] is (seq, position)
    active: np.ndarray | None = None  # [w] bool, the tokens that count as activating (None: acts > 0)

    def mask(self) -> np.ndarray:
        """[w] bool: the activating tokens of the window."""
        return self.acts > 0 if self.active is None else np.asarray(self.active, dtype=bool)


@dataclass
class LatentSample:
    """The explanation examples and the test examples of one latent."""

    latent: int
    train: list[Example]
    test_active: list[Example]
    test_random: list[Example]


def _check_grids(grid_ST: np.ndarray, tokens_ST: np.ndarray | None, active_ST: np.ndarray | None) -> None:
    """Raise a ValueError naming the fix unless the grids are 2-D [n_seq, T] of one shape."""
    if np.ndim(grid_ST) != 2:
        raise ValueError(
            f"grid_ST has shape {np.shape(grid_ST)}; pass one latent's [n_seq, T] values, "
            "e.g. HeldOut.grid(sae, [f])[..., 0]"
        )
    for name, other in (("tokens_ST", tokens_ST), ("active_ST", active_ST)):
        if other is not None and np.shape(other) != np.shape(grid_ST):
            raise ValueError(
                f"{name} has shape {np.shape(other)} but grid_ST has {np.shape(grid_ST)}; "
                "pass the same held-out sequences (HeldOut.sequence_tokens)"
            )
    if active_ST is not None and np.asarray(active_ST).dtype != bool:
        raise ValueError("active_ST must be a bool mask; build it with active_mask(grid_ST)")


def active_mask(
    grid_ST: np.ndarray, dense_top_fraction: float | None = None, valid_ST: np.ndarray | None = None
) -> np.ndarray:
    """[n_seq, T] bool: the tokens that count as activating; position 0 never does.

    None: grid > 0 (an SAE latent). A fraction f in (0, 1): grid >= the (1 - f) quantile of the values
    at the valid tokens (a dense direction's top f of tokens). `valid_ST` defaults to the nonzero
    entries (HeldOut.grid writes exactly 0 at the tokens its policy leaves out)."""
    grid_ST = np.asarray(grid_ST, dtype=np.float32)
    _check_grids(grid_ST, None, None)
    if valid_ST is not None and np.shape(valid_ST) != grid_ST.shape:
        raise ValueError(f"valid_ST has shape {np.shape(valid_ST)}; pass a bool mask shaped like grid_ST")
    valid = (grid_ST != 0) if valid_ST is None else np.asarray(valid_ST, dtype=bool).copy()
    valid[:, 0] = False
    if dense_top_fraction is None:
        return valid & (grid_ST > 0)
    if not 0 < dense_top_fraction < 1:
        raise ValueError(f"dense_top_fraction={dense_top_fraction}; pass a fraction in (0, 1), e.g. 0.01")
    if not valid.any():
        raise ValueError("no valid token (all values are 0 or at position 0); pass valid_ST")
    cut = np.quantile(grid_ST[valid], 1 - dense_top_fraction)
    return valid & (grid_ST >= cut)


def window(position: int, T: int, before: int = BEFORE, after: int = AFTER) -> tuple[int, int]:
    """(lo, hi) inclusive bounds of the window around `position`, clipped to 1..T-1 (never position 0)."""
    return max(1, position - before), min(T - 1, position + after)


def make_example(
    seq: int,
    position: int,
    grid_ST: np.ndarray,
    tokens_ST: np.ndarray,
    active_ST: np.ndarray,
    before: int = BEFORE,
    after: int = AFTER,
) -> Example:
    """The Example of anchor (seq, position)."""
    lo, hi = window(position, grid_ST.shape[1], before, after)
    return Example(
        int(seq),
        int(position),
        np.asarray(tokens_ST[seq, lo : hi + 1], dtype=np.int64),
        np.asarray(grid_ST[seq, lo : hi + 1], dtype=np.float32),
        int(position - lo),
        np.asarray(active_ST[seq, lo : hi + 1], dtype=bool),
    )


def ranked_active(grid_ST: np.ndarray, active_ST: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seq, pos) of the activating tokens past position 0, by value descending, then seq, then pos."""
    act = np.asarray(active_ST, dtype=bool).copy()
    act[:, 0] = False
    seq, pos = np.nonzero(act)
    order = np.lexsort((pos, seq, -grid_ST[seq, pos]))
    return seq[order], pos[order]


def clean_anchors(active_ST: np.ndarray, before: int = BEFORE, after: int = AFTER) -> tuple:
    """(seq, pos) of the tokens past position 0 whose whole window holds no activating token."""
    act = np.asarray(active_ST, dtype=bool)
    n_seq, T = act.shape
    pos = np.arange(1, T)
    lo, hi = np.maximum(1, pos - before), np.minimum(T - 1, pos + after)
    cum = np.concatenate([np.zeros((n_seq, 1), dtype=np.int64), np.cumsum(act, axis=1)], axis=1)
    n_active = cum[:, hi + 1] - cum[:, lo]  # [n_seq, T-1] activating tokens in each window
    seq, idx = np.nonzero(n_active == 0)
    return seq, pos[idx]


def stratified_draw(n_items: int, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into items sorted by value: one drawn from each of min(n_bins, n_items) equal-count bins."""
    bins = np.array_split(np.arange(n_items), min(n_bins, n_items))
    return np.array([b[rng.integers(len(b))] for b in bins], dtype=np.int64)


def can_sample(active_ST: np.ndarray, n_train: int = 10, before: int = BEFORE, after: int = AFTER) -> bool:
    """True if `sample_latent` can sample this latent: n_train + 2 activating tokens past position 0 and
    at least one window without any activating token."""
    act = np.asarray(active_ST, dtype=bool)
    return int(act[:, 1:].sum()) >= n_train + 2 and len(clean_anchors(act, before, after)[0]) > 0


def sample_latent(
    latent: int,
    grid_ST: np.ndarray,
    tokens_ST: np.ndarray,
    active_ST: np.ndarray,
    n_train: int = 10,
    n_test: int = 10,
    seed: int = 0,
    before: int = BEFORE,
    after: int = AFTER,
) -> LatentSample:
    """Train, test-active and test-random examples of one latent (module docstring). The draws use
    `np.random.default_rng([seed, latent])`: reproducible, and different for each latent.
    ValueError (check `can_sample` first to skip such latents) when the latent has fewer than
    n_train + 2 activating tokens or no window free of activating tokens."""
    grid_ST = np.asarray(grid_ST, dtype=np.float32)
    _check_grids(grid_ST, tokens_ST, active_ST)
    seq, pos = ranked_active(grid_ST, active_ST)
    if len(seq) < n_train + 2:
        raise ValueError(
            f"latent {latent} has {len(seq)} activating tokens; sampling needs at least n_train + 2 = "
            f"{n_train + 2} (n_train for the explanation, 2 for the test): skip it (see can_sample)"
        )
    rand_seq, rand_pos = clean_anchors(active_ST, before, after)
    if len(rand_seq) == 0:
        raise ValueError(
            f"latent {latent}: no {before}+{after}-token window is free of activating tokens, so there is "
            "no negative example: skip it (see can_sample) or pass a smaller dense_top_fraction"
        )
    rng = np.random.default_rng([seed, latent])
    rest = stratified_draw(len(seq) - n_train, n_test, rng) + n_train
    rand = rng.choice(len(rand_seq), size=min(n_test, len(rand_seq)), replace=False)

    def examples(ss, ps) -> list[Example]:
        return [make_example(s, p, grid_ST, tokens_ST, active_ST, before, after) for s, p in zip(ss, ps)]

    return LatentSample(
        int(latent),
        examples(seq[:n_train], pos[:n_train]),
        examples(seq[rest], pos[rest]),
        examples(rand_seq[rand], rand_pos[rand]),
    )


def sample_latents(
    grid_STL: np.ndarray,
    tokens_ST: np.ndarray,
    latents,
    dense_top_fraction: float | None = None,
    **kw,
) -> tuple[list[LatentSample], list[int]]:
    """(samples, skipped latents) for the columns of `grid_STL [n_seq, T, len(latents)]` (HeldOut.grid),
    each column's activating tokens from `active_mask(..., dense_top_fraction)`; `kw` go to
    `sample_latent`. Latents `can_sample` refuses are skipped and returned in the second list."""
    grid_STL = np.asarray(grid_STL, dtype=np.float32)
    latents = [int(f) for f in latents]
    if grid_STL.ndim != 3 or grid_STL.shape[2] != len(latents):
        raise ValueError(
            f"grid_STL has shape {grid_STL.shape} for {len(latents)} latents; pass HeldOut.grid(sae, latents)"
        )
    shape = {k: kw[k] for k in ("n_train", "before", "after") if k in kw}
    samples, skipped = [], []
    for j, f in enumerate(latents):
        active = active_mask(grid_STL[..., j], dense_top_fraction)
        if not can_sample(active, **shape):
            skipped.append(f)
            continue
        samples.append(sample_latent(f, grid_STL[..., j], tokens_ST, active, **kw))
    return samples, skipped
