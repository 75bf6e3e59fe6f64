"""Tied against untied SAEs: reconstruction at matched L0, seed agreement, encoder/decoder alignment.

Why: the EleutherAI sparse-coding channel compared tied (W_enc = W_dec^T) and untied dictionaries and
reported that at the same reconstruction the features active per token fell from ~100 untied to ~20
tied; untied SAEs' encoder and decoder directions are reported near cosine 0.5 per latent (a latent's
encoder also suppresses what the other latents explain, so it leaves its decoder direction).

What: `encoder_decoder_cosine` (per latent), `seed_shared` and its chance level `random_shared`,
`tied_table` (one row per SAE: held-out FVU and L0, seed-pair shared fraction, median enc/dec cosine),
`table_rows` (that table as the fields of `helpers.report.findings.TiedRow`) and
`published_comparison` (our numbers beside the published ones, one sentence).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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


def tied_table(
    saes: Mapping[str, tuple], reconstruction: Callable[[object], Mapping[str, float]]
) -> pd.DataFrame:
    """One row per SAE of `saes` {label: (sae, its seed twin or None)}: its architecture and whether it
    is tied (`sae.cfg`), held-out FVU and L0 (`reconstruction(sae)`, e.g. `HeldOut.reconstruction`),
    the seed-pair shared fraction (`seed_shared`; NaN without a twin) and the median
    encoder/decoder cosine (`encoder_decoder_cosine`)."""
    out = []
    for name, (sae, twin) in saes.items():
        st = reconstruction(sae)
        out.append(
            {
                "SAE": name,
                "architecture": sae.cfg.architecture,
                "tied": bool(sae.cfg.tied),
                "held-out FVU": float(st["fvu"]),
                "L0": float(st["l0"]),
                "seed-pair shared": seed_shared(sae, twin) if twin is not None else float("nan"),
                "median enc/dec cos": float(np.median(encoder_decoder_cosine(sae))),
            }
        )
    return pd.DataFrame(out)


def table_rows(table: pd.DataFrame) -> dict[str, dict]:
    """`tied_table` as {label: the fields of `helpers.report.findings.TiedRow`} (architecture, tied, fvu,
    l0, seed_shared, enc_dec_cos)."""
    return {
        str(r["SAE"]): {
            "architecture": str(r["architecture"]),
            "tied": bool(r["tied"]),
            "fvu": float(r["held-out FVU"]),
            "l0": float(r["L0"]),
            "seed_shared": float(r["seed-pair shared"]),
            "enc_dec_cos": float(r["median enc/dec cos"]),
        }
        for _, r in table.iterrows()
    }


def _row(table: pd.DataFrame, architecture: str, tied: bool) -> pd.Series:
    hit = table[(table["architecture"] == architecture) & (table["tied"] == tied)]
    if hit.empty:
        raise ValueError(f"the tied table has no {'tied' if tied else 'untied'} {architecture} SAE")
    return hit.iloc[0]


def published_comparison(table: pd.DataFrame) -> str:
    """One sentence: PUBLISHED (untied vs tied L0 at the same reconstruction, the untied enc/dec cosine)
    beside ours from `tied_table`: the untied TopK and ReLU+L1 enc/dec cosines, and the ReLU+L1 pair's L0
    and FVU untied vs tied (TopK L0 is k by construction, so the L0 comparison is the ReLU pair's)."""
    topk, relu, relu_tied = _row(table, "topk", False), _row(table, "relu", False), _row(table, "relu", True)
    return (
        f"Published: untied L0 ~{PUBLISHED['L0 untied']} vs tied ~{PUBLISHED['L0 tied']} at the same "
        f"reconstruction, untied enc/dec cosine ~{PUBLISHED['median enc/dec cos untied']}. Ours: untied "
        f"TopK enc/dec cosine {topk['median enc/dec cos']:.2f}, ReLU+L1 {relu['median enc/dec cos']:.2f}; "
        f"ReLU+L1 L0 {relu['L0']:.1f} untied vs {relu_tied['L0']:.1f} tied at FVU "
        f"{relu['held-out FVU']:.3f} vs {relu_tied['held-out FVU']:.3f}."
    )
