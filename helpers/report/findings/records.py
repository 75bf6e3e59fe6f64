"""The findings a run records: one typed record per finding, and its sentences, written once.

What: a frozen dataclass per finding a notebook records (below, in the README's order; `RECORD_TYPES`),
each field documented. A record's `sentences()` holds that finding's sentence templates: the ONE
place its prose lives. The README block (`helpers.report.findings.render`) and the notebook's printed
summary (`print(record)`, i.e. `record.summary()`) both render from them. `to_json`/`from_json` are
the record's JSON form (its type name and values, helpers.report.findings.base); a missing or unknown
field fails loudly, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from helpers.report.findings.base import Finding
from helpers.report.findings.records_across import CrossModelFindings, HookPointFindings, LayerCKAFindings
from helpers.report.findings.records_features import (
    AtlasFindings,
    CrosscoderFindings,
    StitchingFindings,
    TiedFindings,
    UsingFeaturesFindings,
)
from helpers.report.findings.records_hierarchy import (
    FirstLetterFindings,
    MatryoshkaFindings,
    ToyAbsorptionFindings,
)
from helpers.report.findings.records_interp import EmbeddingScoreFindings, LLMScoreFindings, ProbingFindings


# ---------------------------------------------------------------------------- 01 collect activations
@dataclass(frozen=True)
class CollectionFindings(Finding):
    key: ClassVar[str] = "collection"
    notebook: ClassVar[str] = "01"
    tokens_per_s: float
    """Tokens collected per second over all of the profile's stores (the collection cell's wall time)."""
    n_layers: int
    """How many resid_pre layers the main corpus's store holds."""
    tokens: int
    """Tokens in the main corpus's store."""
    precision: str
    """The precision the model's matmuls ran in ("bfloat16" or "float32")."""

    def sentences(self) -> list[str]:
        return [
            f"**Collection** ran at {self.tokens_per_s:,.0f} tokens/s over {self.n_layers} layers with "
            f"{self.precision} matmuls ({self.tokens:,} tokens on the main corpus)."
        ]


@dataclass(frozen=True)
class MassiveFindings(Finding):
    key: ClassVar[str] = "massive"
    notebook: ClassVar[str] = "01"
    layer: int
    """The main layer, where the massive tokens are counted."""
    count: int
    """Massive tokens there (norm above `ratio` x the layer's median)."""
    n_tokens: int
    """Non-separator tokens they are counted among."""
    ratio: float
    """The massive-norm cut, in multiples of the median norm."""
    max_x_median: float
    """The largest norm, in multiples of the median (0 when there is none)."""
    variance_share: float
    """Share of the variance about the mean that the massive tokens carry."""
    top: str
    """The most common massive token and position ("'\\n' at position 1 (27 times)", or "none")."""

    def sentences(self) -> list[str]:
        return [
            f"**Massive tokens are not only the first.** At layer {self.layer}, {self.count} of "
            f"{self.n_tokens:,} non-separator tokens exceed {self.ratio:g}x the median norm (up to "
            f"{self.max_x_median:.0f}x) and carry {self.variance_share:.0%} of the variance about the mean; "
            f"most common: {self.top}. SAEs train without them and FVU is reported without them."
        ]


# ---------------------------------------------------------------------------- 02 train SAEs
@dataclass(frozen=True)
class ConvergenceFindings(Finding):
    key: ClassVar[str] = "convergence"
    notebook: ClassVar[str] = "02"
    line: str
    """The verdict line (helpers.analysis.convergence.Verdict.line, where its wording lives)."""
    converged: bool
    """Whether the seed pair and every SAE met the convergence criteria."""

    def sentences(self) -> list[str]:
        return [f"**Convergence.** {self.line}"]


@dataclass(frozen=True)
class TrainingFindings(Finding):
    key: ClassVar[str] = "training"
    notebook: ClassVar[str] = "02"
    n_saes: int
    """SAEs the profile trained."""
    train_tokens: int
    """Training tokens of the base SAE (the most any SAE of the notebook saw)."""
    min_train_tokens: int
    """The fewest training tokens any of them saw (the per-layer SAEs away from the main layer)."""
    d_sae: int
    """Latents of the base SAE."""
    k: int
    """The TopK/BatchTopK k."""
    base_fvu: float
    """Held-out FVU of the base SAE, massive tokens left out."""
    base_fvu_all: float
    """The same with the massive tokens."""
    base_rel_err: float
    """Median per-token relative reconstruction error of the base SAE."""
    base_dead: float
    """Fraction of the base SAE's latents that did not fire in the trainer's last window of tokens."""
    fvu_min: float
    """Lowest held-out FVU across the SAEs."""
    fvu_max: float
    """Highest held-out FVU across the SAEs."""
    batchtopk_l0: float
    """Inference L0 of the BatchTopK SAE."""
    relu_l0: float
    """L0 of the ReLU+L1 SAE."""

    def _tokens(self) -> str:
        if self.min_train_tokens == self.train_tokens:
            return f"{self.train_tokens:,}"
        return f"{self.min_train_tokens:,}-{self.train_tokens:,}"

    def sentences(self) -> list[str]:
        return [
            f"**SAEs** ({self.n_saes} of them, {self._tokens()} tokens each, d_sae {self.d_sae}): "
            f"held-out FVU of the base SAE {self.base_fvu:.3f} without massive tokens "
            f"({self.base_fvu_all:.3f} with them), median per-token relative error {self.base_rel_err:.3f}, "
            f"dead {self.base_dead:.1%}; "
            f"across SAEs FVU {self.fvu_min:.3f}-{self.fvu_max:.3f}, BatchTopK inference L0 "
            f"{self.batchtopk_l0:.1f} (k {self.k}), ReLU+L1 L0 {self.relu_l0:.1f}."
        ]


# ---------------------------------------------------------------------------- 03 token positions
@dataclass(frozen=True)
class PositionFindings(Finding):
    key: ClassVar[str] = "positions"
    notebook: ClassVar[str] = "03"
    first_ratio_max: float
    """Largest ratio, over layers, of the first token's mean nonzero SAE activation to the rest's."""
    first_ratio_layer: int
    """The layer where that ratio is largest."""
    position_features: dict[int, int]
    """Position features per layer (corrected eta^2 >= 0.5, first token skipped): {layer: count}."""
    sink_latents: dict[int, int]
    """Sink latents per layer (>= 90% of their firings at position 0): {layer: count}."""

    def sentences(self) -> list[str]:
        per_layer = ", ".join(f"L{k} {v}" for k, v in self.position_features.items())
        sinks = ", ".join(f"L{k} {v}" for k, v in self.sink_latents.items())
        return [
            f"**Position.** The first token's mean nonzero SAE activation is {self.first_ratio_max:.0f}x the "
            f"rest at layer {self.first_ratio_layer}; position features (corrected eta^2 >= 0.5) per layer: "
            f"{per_layer}; sink latents (firing at position 0): {sinks}."
        ]


# ---------------------------------------------------------------------------- 04 feature matching
@dataclass(frozen=True)
class FactorFindings(Finding):
    key: ClassVar[str] = "factors"
    notebook: ClassVar[str] = "04"
    seed_floor: float
    """Mean Hungarian shared fraction (decoder rows, cos > 0.7) of the seed pairs: the noise floor."""
    ranking: dict[str, float]
    """{factor: mean shared fraction}, most to least disruptive, the seed factor left out."""
    null_shared: float
    """Chance level: mean shared fraction of all pairs with B's decoder randomly rotated (null model)."""

    def sentences(self) -> list[str]:
        ranked = " > ".join(f"{f} {v:.1%}" for f, v in self.ranking.items())
        return [
            "**Which factor changes features most** (Hungarian shared fraction on decoder rows at cos > 0.7, "
            f"seed-pair noise floor {self.seed_floor:.1%}, chance {self.null_shared:.1%}): {ranked}."
        ]


@dataclass(frozen=True)
class CorpusCell:
    """One SAE on one corpus's held-out tokens."""

    fvu: float
    """Held-out FVU of the SAE trained on one corpus, on the other's (or its own) tokens."""
    delta_ce: float
    """Next-token CE increase (nats) with the SAE spliced in there."""
    dead: float
    """Fraction of its latents silent there."""


@dataclass(frozen=True)
class CrossCorpusFindings(Finding):
    key: ClassVar[str] = "cross_corpus"
    notebook: ClassVar[str] = "04"
    fvu_in: float
    """Mean held-out FVU of each SAE on its own corpus."""
    fvu_out: float
    """Mean held-out FVU of each SAE on the other corpus."""
    ce_in: float
    """Mean CE increase (nats) spliced in on its own corpus."""
    ce_out: float
    """Mean CE increase (nats) spliced in on the other corpus."""
    cells: dict[str, CorpusCell]
    """{"<SAE's corpus>-><evaluated corpus>": CorpusCell}, every pair."""

    def sentences(self) -> list[str]:
        cells = "; ".join(f"{k} FVU {v.fvu:.3f}, dCE {v.delta_ce:+.3f}" for k, v in self.cells.items())
        better = "beats" if self.fvu_in < self.fvu_out else "does not beat"
        return [
            f"**Cross-corpus.** In-domain {better} out-of-domain: mean held-out FVU {self.fvu_in:.3f} on an "
            f"SAE's own corpus against {self.fvu_out:.3f} on the other ({self.fvu_out / self.fvu_in:.1f}x), "
            f"CE increase spliced in {self.ce_in:+.3f} against {self.ce_out:+.3f} nats ({cells})."
        ]


RECORD_TYPES: tuple[type[Finding], ...] = (
    CollectionFindings,
    MassiveFindings,
    ConvergenceFindings,
    TrainingFindings,
    PositionFindings,
    FactorFindings,
    CrossCorpusFindings,
    AtlasFindings,
    UsingFeaturesFindings,
    CrosscoderFindings,
    TiedFindings,
    StitchingFindings,
    ToyAbsorptionFindings,
    MatryoshkaFindings,
    FirstLetterFindings,
    LayerCKAFindings,
    CrossModelFindings,
    HookPointFindings,
    EmbeddingScoreFindings,
    LLMScoreFindings,
    ProbingFindings,
)
"""Every record type, in the README's order."""
