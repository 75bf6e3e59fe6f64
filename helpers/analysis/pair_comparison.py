"""One pair of SAEs compared the post's ways: how alike are A and B, and is that more than chance?

What: for a pair (A, B) of SAEs, `topk_by_variant` (each latent of B's k best cosines in A, for
decoder rows, encoder directions and the neuron baseline: the post's histograms), `topk_summary`
(top-1 ratio at 0.7, median top-1 cosine, MMCS), `post_comparison` (the post's two headline findings
read on a seed pair and a corpus pair), `one_to_one` / `one_to_one_table` (Hungarian shared
fractions on decoder, encoder and both combined, each beside its chance level,
`helpers.analysis.similarity.null_shared_fraction`) and `published_comparison` (ours beside the
published numbers, `PUBLISHED`).
Why: notebook 04's sections 1, 2 and 7 read the same two pairs; computing them here once keeps each
section a few lines, and lets section 7 recompute what it needs instead of reading another section's
variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.analysis.matching import variant_dictionaries
from helpers.analysis.similarity import (
    NULL_SEED,
    SHARED_COS,
    hungarian_match,
    hungarian_match_combined,
    null_shared_fraction,
    null_shared_fraction_combined,
    shared_fraction,
    topk_cosine,
)


def topk_by_variant(
    sae_A: Any, sae_B: Any, variants: Sequence[str] = ("decoder", "encoder", "neuron"), k: int = 4
) -> dict[str, np.ndarray]:
    """{variant: topk_BK [n_B, k]}: for each latent of B, the cosines of its k best matches in A under
    each matching variant (`variant_dictionaries`), descending (numpy float32)."""
    out = {}
    for variant in variants:
        A, B = variant_dictionaries(sae_A, sae_B, variant)
        out[variant] = topk_cosine(A, B, k)[0].cpu().numpy()
    return out


def topk_summary(topk: Mapping[str, Mapping[str, Any]], threshold: float = SHARED_COS) -> pd.DataFrame:
    """One row per (factor, variant) of `topk` {factor: {variant: topk_BK [n_B, k]}}: the top-1 ratio
    (fraction of B's latents whose best cosine is > threshold, the post's number), the median top-1
    cosine and MMCS (the mean top-1 cosine)."""
    rows = []
    for factor, by_variant in topk.items():
        for variant, values in by_variant.items():
            top1 = np.asarray(values, dtype=np.float64).reshape(len(values), -1)[:, 0]
            rows.append(
                {
                    "factor": factor,
                    "variant": variant,
                    f"top1_ratio@{threshold:g}": float((top1 > threshold).mean()),
                    "median_top1": float(np.median(top1)),
                    "mmcs": float(top1.mean()),
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PostComparison:
    """The post's two headline findings read on our seed and corpus pairs (decoder / encoder top-1 ratios)."""

    seed_decoder: float  # top-1 ratio of the seed pair, decoder rows
    corpus_decoder: float  # top-1 ratio of the corpus pair, decoder rows
    seed_encoder: float  # top-1 ratio of the seed pair, encoder directions

    @property
    def corpus_changes_more(self) -> bool:
        """The post's first finding: the corpus pair shares fewer decoder features than the seed pair."""
        return self.corpus_decoder < self.seed_decoder

    @property
    def encoder_below_decoder(self) -> bool:
        """The post's second finding: encoder directions match worse than decoder rows (seed pair)."""
        return self.seed_encoder < self.seed_decoder

    @property
    def agrees(self) -> bool:
        return self.corpus_changes_more and self.encoder_below_decoder

    def sentence(self) -> str:
        return (
            f"Decoder top-1 ratio across seeds {self.seed_decoder:.2f} vs across corpora "
            f"{self.corpus_decoder:.2f}: the {'corpus' if self.corpus_changes_more else 'seed'} changes "
            f"features more. Encoder vs decoder across seeds: {self.seed_encoder:.2f} vs "
            f"{self.seed_decoder:.2f}."
        )


def post_comparison(summary: pd.DataFrame, threshold: float = SHARED_COS) -> PostComparison:
    """`PostComparison` from a `topk_summary` table holding the "seed" and "corpus" pairs."""
    ratio = summary.set_index(["factor", "variant"])[f"top1_ratio@{threshold:g}"]
    return PostComparison(
        float(ratio["seed", "decoder"]), float(ratio["corpus", "decoder"]), float(ratio["seed", "encoder"])
    )


def one_to_one(
    sae_A: Any, sae_B: Any, threshold: float = SHARED_COS, seed: int = NULL_SEED
) -> list[dict[str, Any]]:
    """Hungarian matchings of B into A on decoder rows, encoder directions and both combined
    (Paulo & Belrose's mean of the two cosines): one row each with the shared fraction (matched pairs
    with similarity > threshold), its chance level (the same matching against B turned by a random
    rotation, `similarity.null_shared_fraction`), the mean matched similarity and whether the
    matching is certified optimal."""
    rows = []
    for variant in ("decoder", "encoder", "combined"):
        if variant == "combined":
            parts = (sae_A.W_dec, sae_B.W_dec, sae_A.W_enc.T, sae_B.W_enc.T)
            m = hungarian_match_combined(*parts)
            null = null_shared_fraction_combined(*parts, threshold=threshold, seed=seed)
        else:
            A, B = variant_dictionaries(sae_A, sae_B, variant)
            m, null = hungarian_match(A, B), null_shared_fraction(A, B, threshold, seed)
        rows.append(
            {
                "variant": variant,
                f"shared@{threshold:g}": shared_fraction(m.similarities, threshold),
                f"null_shared@{threshold:g}": null,
                "mean_matched_cos": float(m.similarities.mean()),
                "exact": bool(m.exact),
            }
        )
    return rows


def one_to_one_table(
    pairs: Mapping[str, tuple[Any, Any]], threshold: float = SHARED_COS, seed: int = NULL_SEED
) -> pd.DataFrame:
    """`one_to_one` of every pair {factor: (sae_A, sae_B)}, one table (a "factor" column first)."""
    rows = [{"factor": f} | row for f, (a, b) in pairs.items() for row in one_to_one(a, b, threshold, seed)]
    return pd.DataFrame(rows)


PUBLISHED = {  # the published side of `published_comparison` (the post; Paulo & Belrose 2025; EleutherAI)
    "decoder top-1 cosine across seeds (mode / median)": "~0.92 (post, GPT-2 L8)",
    "decoder top-1 ratio@0.7, seed pair vs corpus pair": "seed >> corpus (post)",
    "encoder top-1 cosine across corpora (peak)": "~0.2 (post)",
    "latents shared across seeds (Hungarian, enc+dec, >0.7)": (
        "~30% (Paulo & Belrose, 131k SAE, Llama-3-8B); ~53% (EleutherAI, Pythia-160m)"
    ),
}


def published_comparison(summary: pd.DataFrame, one_to_one_rows: pd.DataFrame) -> pd.DataFrame:
    """Our numbers beside the published ones (`PUBLISHED`), from a `topk_summary` and a
    `one_to_one_table` of the "seed" and "corpus" pairs (threshold 0.7); the shared fraction is
    shown with its chance level."""
    median = summary.set_index(["factor", "variant"])["median_top1"]
    post = post_comparison(summary)
    seed = one_to_one_rows.set_index(["factor", "variant"]).loc[("seed", "combined")]
    ours = [
        f"{median['seed', 'decoder']:.2f}",
        f"{post.seed_decoder:.2f} vs {post.corpus_decoder:.2f}",
        f"{median['corpus', 'encoder']:.2f}",
        f"{seed['shared@0.7']:.0%} (chance {seed['null_shared@0.7']:.0%})",
    ]
    return pd.DataFrame(
        [{"quantity": q, "published": p, "ours": o} for (q, p), o in zip(PUBLISHED.items(), ours)]
    )
