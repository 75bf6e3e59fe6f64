"""Width stitching: which latents of a wider SAE are the narrower one's, split from it, or new.

Leask, Bussmann et al., "Stitching SAEs of Different Sizes" (2024; GPT-2 small and Pythia-410M): about
65% of the larger SAE's latents are "reconstruction" latents (identical to a smaller-SAE latent, or a
finer version of one) and ~35% are novel; the max decoder cosine to the smaller SAE predicts which.

The rule here (decoder rows, `helpers.analysis.matching.feature_splitting`): each latent j of the
wide SAE takes its best match p(j) in the narrow one, c_j = max_i cos(W_dec_wide_j, W_dec_narrow_i).
- novel: c_j <= threshold (0.7, the lab's shared-latent cosine);
- identical: c_j > threshold and j is the only wide latent above threshold whose best match is p(j);
- split: c_j > threshold and p(j) is the best match, above threshold, of two or more wide latents.

What: `stitching_split` (that rule), `null_stitching_split` (its chance level, the lab's null model),
`comparison_table` (ours, the null model's and the published shares side by side) and `example_lines`
(a few latents of each kind with their top contexts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.analysis.matching import feature_splitting
from helpers.analysis.similarity import NULL_SEED, SHARED_COS, rotate_rows

KINDS = ("identical", "split", "novel")
PUBLISHED = {"identical or split": 0.65, "novel": 0.35}  # Leask, Bussmann et al. 2024 (GPT-2, Pythia-410M)


@dataclass
class StitchingSplit:
    """Every wide latent's kind (KINDS), its best cosine to the narrow SAE and that match (-1: novel)."""

    kind: np.ndarray  # [n_wide] str
    best_cos: np.ndarray  # [n_wide]
    parent: np.ndarray  # [n_wide] int, -1 where novel
    threshold: float

    def fractions(self, keep: np.ndarray | None = None) -> dict[str, float]:
        """Share of each kind among the wide latents (`keep`: a boolean mask, e.g. the live ones)."""
        k = self.kind if keep is None else self.kind[keep]
        return {name: float((k == name).mean()) if len(k) else float("nan") for name in KINDS}

    def examples(self, kind: str, n: int = 3) -> list[int]:
        """Up to n wide latents of `kind`: the most confident first (highest cosine; novel: lowest)."""
        idx = np.flatnonzero(self.kind == kind)
        order = np.argsort(self.best_cos[idx])
        return idx[order if kind == "novel" else order[::-1]][:n].tolist()


def stitching_split(narrow: Any, wide: Any, threshold: float = SHARED_COS) -> StitchingSplit:
    """Classify each row of `wide` ([n_wide, d] decoder rows) against `narrow` ([n_narrow, d])."""
    fs = feature_splitting(narrow, wide, threshold=threshold, n_examples=0)
    parent = fs.best_parent.numpy()
    counts = fs.counts.numpy()
    kind = np.full(len(parent), "novel", dtype=object)
    matched = parent >= 0
    kind[matched] = np.where(counts[parent[matched]] >= 2, "split", "identical")
    return StitchingSplit(kind.astype(str), fs.best_cos.numpy(), parent, threshold)


def null_stitching_split(
    narrow: Any, wide: Any, threshold: float = SHARED_COS, seed: int = NULL_SEED
) -> StitchingSplit:
    """The chance level of `stitching_split`: the same rule against the narrow decoder turned by a
    Haar-random rotation (the lab's null model, `similarity.null_shared_fraction`)."""
    return stitching_split(rotate_rows(narrow, seed), wide, threshold)


def comparison_table(ours: Mapping[str, float], null: Mapping[str, float]) -> pd.DataFrame:
    """The shares of each kind (`StitchingSplit.fractions`) of our split and of the null model's (a random
    rotation of the narrow decoder), with "identical or split" summed, beside PUBLISHED."""
    rows = [
        {"": name, **f, "identical or split": f["identical"] + f["split"]}
        for name, f in (("ours", ours), ("random rotation", null))
    ]
    rows.append({"": "published (GPT-2, Pythia-410M)", **PUBLISHED})
    return pd.DataFrame(rows, columns=["", *KINDS, "identical or split"])


def example_lines(split: StitchingSplit, contexts: Callable[[int], list[str]], n: int = 2) -> list[str]:
    """Lines to print for `split.examples(kind, n)` of every kind: per wide latent "<kind>: base latent j,
    best cos 0.83 to half-width latent p" (no match named where novel), then its top contexts
    `contexts(j)` (e.g. `HeldOut.examples`; none for a latent that never fires), indented."""
    out = []
    for kind in KINDS:
        for j in split.examples(kind, n):
            p = int(split.parent[j])
            match = f" to half-width latent {p}" if p >= 0 else ""
            out.append(f"{kind}: base latent {j}, best cos {split.best_cos[j]:.2f}{match}")
            out += [f"     {line}" for line in contexts(j)]
    return out
