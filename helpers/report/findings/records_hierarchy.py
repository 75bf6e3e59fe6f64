"""The typed record of notebook 08 (nested dictionaries and feature absorption); see records.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from helpers.report.findings.base import Finding

NAMES = {"topk": "TopK", "batchtopk": "BatchTopK", "relu": "ReLU+L1", "matryoshka_batchtopk": "Matryoshka"}


@dataclass(frozen=True)
class ToyAbsorptionFindings(Finding):
    key: ClassVar[str] = "toy_absorption"
    notebook: ClassVar[str] = "08"
    absorption: dict[str, list[float]]
    """Planted hierarchy: {architecture: absorption rate per seed} (helpers.analysis.absorption)."""
    random: dict[str, float]
    """The same rate for each architecture's untrained twin (the baseline)."""
    parent_miss: dict[str, float]
    """Mean over seeds of the share of child-active samples where the parent latent is off."""
    child_mmcs: dict[str, float]
    """Mean over seeds of the planted children's best decoder cosine."""
    l0: dict[str, float]
    """Mean held-out L0 per architecture (matched by k, and by the l1 calibration for ReLU+L1)."""

    def sentences(self) -> list[str]:
        order = sorted(self.absorption, key=lambda a: sum(self.absorption[a]) / len(self.absorption[a]))
        parts = "; ".join(
            f"{NAMES.get(a, a)} {' and '.join(f'{v:.3f}' for v in self.absorption[a])} "
            f"(untrained {self.random.get(a, float('nan')):.3f}; parent miss {self.parent_miss[a]:.3f}, "
            f"child MMCS {self.child_mmcs[a]:.2f}, L0 {self.l0[a]:.1f})"
            for a in order
        )
        return [f"**Absorption on a planted hierarchy** (per seed, lowest first): {parts}."]


@dataclass(frozen=True)
class MatryoshkaFindings(Finding):
    key: ClassVar[str] = "matryoshka"
    notebook: ClassVar[str] = "08"
    verdict: str
    """The Matryoshka seed pair's convergence verdict line."""
    vs_batchtopk: float
    """Matryoshka vs the grid's BatchTopK SAE of the same width: shared latents (Hungarian, cos > 0.7)."""
    vs_batchtopk_null: float
    """... its random-rotation baseline."""
    first_width: int
    """The first prefix's width."""
    fvu_first: dict[str, float]
    """{label: held-out FVU decoding the SAE's first `first_width` latents alone}."""
    fvu_full: dict[str, float]
    """{label: held-out FVU of the whole SAE}."""
    prefix_in_narrow: dict[int, list[float]]
    """{width: [Matryoshka prefix, BatchTopK first latents, random rotation]}: share of those latents that
    a narrow TopK SAE of that width has (stitching rule: identical or split at cos > 0.7)."""

    def sentences(self) -> list[str]:
        first = ", ".join(f"{k} {v:.3f}" for k, v in self.fvu_first.items())
        full = ", ".join(f"{k} {v:.3f}" for k, v in self.fvu_full.items())
        narrow = "; ".join(
            f"width {n}: Matryoshka prefix {v[0]:.0%}, BatchTopK first latents {v[1]:.0%}, random {v[2]:.0%}"
            for n, v in sorted(self.prefix_in_narrow.items())
        )
        return [
            f"**Matryoshka prefixes on the offline model.** The first {self.first_width} latents alone give "
            f"held-out FVU {first} (whole SAEs: {full}). Share of each prefix found in a narrow TopK SAE of "
            f"its width: {narrow}. Against the grid's BatchTopK SAE of the same width "
            f"{self.vs_batchtopk:.1%} shared (random rotation {self.vs_batchtopk_null:.1%}). "
            f"Matryoshka pair: {self.verdict}"
        ]


@dataclass(frozen=True)
class FirstLetterFindings(Finding):
    key: ClassVar[str] = "first_letter"
    notebook: ClassVar[str] = "08"
    layer: int
    """resid_pre layer probed."""
    letters_ok: int
    """Letters whose first-letter probe reaches F1 > 0.6 on test words (SAEBench scores at >= 20)."""
    letters_total: int
    """Letters probed."""
    median_f1: float
    """Median per-letter test F1 of the probe."""
    absorption: dict[str, float]
    """{SAE label: SAEBench's mean absorption fraction}; empty where the probes did not qualify."""
    k_sparse_f1: dict[str, float]
    """{SAE label: median over scored letters of the test F1 of its k-sparse probe on the main latents}:
    whether the SAE has latents that read the letter at all."""
    verdict: str
    """The convergence verdict line printed with the scores (the Matryoshka pair's)."""

    def sentences(self) -> list[str]:
        probe = (
            f"**First-letter probes** (SAEBench's prompt, resid_pre L{self.layer}): F1 > 0.6 on "
            f"{self.letters_ok} of {self.letters_total} letters (median {self.median_f1:.2f})"
        )
        if not self.absorption:
            return [f"{probe}, short of SAEBench's 20: first-letter absorption is not scored on this model."]
        scores = "; ".join(
            f"{k} {v:.3f} (k-sparse F1 of its letter latents {self.k_sparse_f1.get(k, float('nan')):.2f})"
            for k, v in self.absorption.items()
        )
        return [
            f"{probe}; SAEBench's mean absorption fraction: {scores}. An SAE whose letter latents read "
            "the letter poorly (low k-sparse F1) scores high absorption because they rarely fire where the "
            f"probe does: read each score beside its F1. Matryoshka pair: {self.verdict}"
        ]
