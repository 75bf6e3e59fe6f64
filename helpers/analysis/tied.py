"""Tied against untied SAEs: reconstruction at matched L0, seed agreement, encoder/decoder alignment.

Why: the EleutherAI sparse-coding channel compared tied (W_enc = W_dec^T) and untied dictionaries and
reported that at the same reconstruction the features active per token fell from ~100 untied to ~20
tied; untied SAEs' encoder and decoder directions are reported near cosine 0.5 per latent (a latent's
encoder also suppresses what the other latents explain, so it leaves its decoder direction).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.analysis.similarity import NULL_SEED, hungarian_match, null_shared_fraction, shared_fraction

PUBLISHED = {"L0 untied": 100, "L0 tied": 20, "median enc/dec cos untied": 0.5}


def encoder_decoder_cosine(sae) -> np.ndarray:
    """[d_sae] cos(W_enc[:, j], W_dec[j]) per latent (exactly 1 for a tied SAE)."""
    E, D = sae.W_enc.detach().float().t(), sae.W_dec.detach().float()
    return ((E * D).sum(1) / (E.norm(dim=1) * D.norm(dim=1)).clamp_min(1e-12)).numpy()


def seed_shared(a, b) -> float:
    """Fraction of latents shared one-to-one (Hungarian on decoder rows, cos > 0.7) by two SAEs."""
    return shared_fraction(hungarian_match(a.W_dec.detach(), b.W_dec.detach()).similarities)


def random_shared(sae, twin=None, seed: int = NULL_SEED) -> float:
    """The chance level of `seed_shared(sae, twin)`: the lab's null model
    (`similarity.null_shared_fraction`, the twin's decoder turned by a Haar-random rotation); without a
    twin, `sae` is matched against its own rotated decoder."""
    other = sae if twin is None else twin
    return null_shared_fraction(sae.W_dec.detach(), other.W_dec.detach(), seed=seed)


def tied_table(rows: dict[str, dict]) -> pd.DataFrame:
    """One row per SAE: {name: {"architecture", "tied", "fvu", "l0", "sae", "seed_twin" (or None)}} ->
    FVU, L0, seed-pair shared fraction (where a twin exists), median encoder/decoder cosine."""
    out = []
    for name, r in rows.items():
        twin = r.get("seed_twin")
        out.append(
            {
                "SAE": name,
                "architecture": r["architecture"],
                "tied": r["tied"],
                "held-out FVU": r["fvu"],
                "L0": r["l0"],
                "seed-pair shared": seed_shared(r["sae"], twin) if twin is not None else float("nan"),
                "median enc/dec cos": float(np.median(encoder_decoder_cosine(r["sae"]))),
            }
        )
    return pd.DataFrame(out)
