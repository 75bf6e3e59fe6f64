"""The typed records of notebook 09 (features across models and hook points); see records.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from helpers.report.findings.base import Finding


@dataclass(frozen=True)
class LayerCKAFindings(Finding):
    key: ClassVar[str] = "layer_cka"
    notebook: ClassVar[str] = "09"
    models: list[str]
    """[first model, second model]."""
    n_words: int
    """Word-aligned rows the CKA is computed on (held-out text, massive rows left out)."""
    main_layer: int
    """The first model's main layer."""
    matched_layer: int
    """The second model's layer with the highest linear CKA to it."""
    cka_matched: float
    """That CKA."""
    cka_shuffled: float
    """The same pair of layers with the second model's rows permuted (word alignment broken)."""
    monotone: float
    """Spearman correlation between each first-model layer's depth and the depth of its best match."""

    def sentences(self) -> list[str]:
        a, b = self.models
        return [
            f"**Layers across models** (linear CKA on {self.n_words:,} word-aligned held-out rows): {a} "
            f"resid_pre L{self.main_layer} is closest to {b} L{self.matched_layer} "
            f"(CKA {self.cka_matched:.2f}; "
            f"words shuffled {self.cka_shuffled:.2f}); depth of the best match vs depth, Spearman "
            f"{self.monotone:.2f}."
        ]


@dataclass(frozen=True)
class CrossModelFindings(Finding):
    key: ClassVar[str] = "cross_model"
    notebook: ClassVar[str] = "09"
    models: list[str]
    """[first model, second model]."""
    layers: list[int]
    """The two resid_pre layers whose SAEs are matched."""
    threshold: float
    """Activation correlation above which a one-to-one matched pair counts as shared."""
    shared: dict[str, float]
    """{comparison: share of the first SAE's live latents whose one-to-one partner clears the threshold}:
    the other model's SAE, the first model's seed twin (noise floor), its own neurons, shuffled words,
    random directions of the other model."""
    best_shared: dict[str, float]
    """{comparison: share of those latents whose best partner (many-to-one) clears the threshold}."""
    cap: dict[str, float]
    """{comparison: the most the one-to-one share can be, min(1, candidates / live latents)}."""
    median_best: dict[str, float]
    """{comparison: median over live latents of the best correlation}."""
    verdicts: list[str]
    """Convergence verdict lines of the first and second model's seed pairs."""

    def sentences(self) -> list[str]:
        parts = "; ".join(
            f"{k} {v:.1%}{self._cap(k)} (many-to-one {self.best_shared[k]:.1%}, median best r "
            f"{self.median_best[k]:.2f})"
            for k, v in self.shared.items()
        )
        a, b = self.models
        return [
            f"**SAE latents across models** ({a} L{self.layers[0]} vs {b} L{self.layers[1]}, one-to-one by "
            f"activation correlation over aligned words, shared at r > {self.threshold}): {parts}. "
            f"{a} pair: {self.verdicts[0]} {b} pair: {self.verdicts[1]}"
        ]

    def _cap(self, k: str) -> str:
        return f" of at most {self.cap[k]:.1%}" if self.cap[k] < 1 else ""


@dataclass(frozen=True)
class HookPointFindings(Finding):
    key: ClassVar[str] = "hook_points"
    notebook: ClassVar[str] = "09"
    layer: int
    """The layer whose hook points get one SAE each."""
    rows: dict[str, dict[str, float]]
    """{hook: {fvu, l0, dead, position_features, in_resid, in_resid_null, resid_cos, resid_cos_null}}
    (in_resid: share of latents
    with a resid_pre latent at decoder cosine > 0.7; absent for the MLP hidden activation, another
    space)."""
    verdict: str
    """The base SAE pair's convergence verdict (notebook 02): the resid_pre side of the overlap."""

    def sentences(self) -> list[str]:
        parts = "; ".join(
            f"{h.split('.', 2)[-1]}: FVU {r['fvu']:.3f}, L0 {r['l0']:.1f}, dead {r['dead']:.1%}, "
            f"{int(r['position_features'])} position features"
            + (
                f", {r['in_resid']:.1%} with a resid_pre latent at cos > 0.7 "
                f"(random {r['in_resid_null']:.1%}; median best cos {r['resid_cos']:.2f}, "
                f"random {r['resid_cos_null']:.2f})"
                if "in_resid" in r
                else ""
            )
            for h, r in self.rows.items()
        )
        return [
            f"**Hook points of layer {self.layer}** (one SAE each, held-out): {parts}. "
            f"Base pair: {self.verdict}"
        ]
