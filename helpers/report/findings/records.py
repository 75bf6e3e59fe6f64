"""The findings a run records: one typed record per finding, and its sentences, written once.

What: a frozen dataclass per finding a notebook records (below, in the README's order; `RECORD_TYPES`),
each field documented. A record's `sentences()` holds that finding's sentence templates: the ONE
place its prose lives. The README block (`helpers.report.findings.render`) and the notebook's printed
summary (`print(record)`, i.e. `record.summary()`) both render from them. `to_json`/`from_json` are
the record's JSON form (its type name and values, helpers.report.findings.base); a missing or unknown
field fails loudly, naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from helpers.report.findings.base import Finding


def _pm(values, fmt: str = "+.3f") -> str:
    return ", ".join(f"{v:{fmt}}" for v in values)


def _times(values, fmt: str) -> str:
    return ", ".join(f"{v:{fmt}}x" for v in values)


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
    """Training tokens each."""
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
    """Fraction of the base SAE's latents that never fire on the held-out tokens."""
    fvu_min: float
    """Lowest held-out FVU across the SAEs."""
    fvu_max: float
    """Highest held-out FVU across the SAEs."""
    batchtopk_l0: float
    """Inference L0 of the BatchTopK SAE."""
    relu_l0: float
    """L0 of the ReLU+L1 SAE."""

    def sentences(self) -> list[str]:
        return [
            f"**SAEs** ({self.n_saes} of them, {self.train_tokens:,} tokens each, d_sae {self.d_sae}): "
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
    """Position features (corrected eta^2 >= 0.5, first token skipped) per layer: {layer: count}."""

    def sentences(self) -> list[str]:
        per_layer = ", ".join(f"L{k} {v}" for k, v in self.position_features.items())
        return [
            f"**Position.** The first token's mean nonzero SAE activation is {self.first_ratio_max:.0f}x the "
            f"rest at layer {self.first_ratio_layer}; position features (corrected eta^2 >= 0.5) per layer: "
            f"{per_layer}."
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

    def sentences(self) -> list[str]:
        ranked = " > ".join(f"{f} {v:.1%}" for f, v in self.ranking.items())
        return [
            "**Which factor changes features most** (Hungarian shared fraction on decoder rows at cos > 0.7, "
            f"seed pairs as the noise floor at {self.seed_floor:.1%}): {ranked}."
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
            f"**Cross-corpus.** In-domain {better} out-of-domain: mean held-out FVU {self.fvu_in:.3f} on "
            f"an SAE's own corpus against {self.fvu_out:.3f} on the other "
            f"({self.fvu_out / self.fvu_in:.1f}x), "
            f"CE increase spliced in {self.ce_in:+.3f} against {self.ce_out:+.3f} nats ({cells})."
        ]


# ---------------------------------------------------------------------------- 05 UMAP atlas
@dataclass(frozen=True)
class AtlasFindings(Finding):
    key: ClassVar[str] = "atlas"
    notebook: ClassVar[str] = "05"
    example: int
    """The feature page's example latent (interventions.pick_features)."""
    match: float
    """Its best decoder cosine in the seed twin."""
    density: float
    """Fraction of tokens it fires on."""
    context: list[int]
    """Latents added by the second rule (interventions.pick_context_features); may be empty."""

    def sentences(self) -> list[str]:
        more = (
            " The second rule (top contexts over several tokens) adds latents "
            f"{', '.join(str(c) for c in self.context)}."
            if self.context
            else ""
        )
        return [
            "**Atlas.** The feature page's example latent (rule: found by both seeds at cos > 0.9, firing on "
            f"0.05-2% of tokens) is latent {self.example} (match {self.match:.2f}, density "
            f"{self.density:.2%}).{more}"
        ]


# ---------------------------------------------------------------------------- 06 using features
@dataclass(frozen=True)
class CaaComparison:
    """The CAA vector against the SAE latent whose decoder row matches it best, at equal KL."""

    cos_best: float
    """Best |cos| of the contrastive (mean-difference) vector with an SAE decoder row."""
    latent: int
    """That SAE latent."""
    kl: float
    """The KL (nats/token) at which the two steering curves are compared."""
    lift_caa: float
    """How many times more probable the CAA vector makes its targets there (NaN: its curve stops below)."""
    lift_sae: float
    """The same for the SAE latent."""
    winner: str | None
    """Which one steers more cheaply (None: no comparison)."""
    sentence: str
    """The comparison's sentence (helpers.analysis.steering_vectors.Cheaper.sentence, where it lives)."""


@dataclass(frozen=True)
class UsingFeaturesFindings(Finding):
    key: ClassVar[str] = "using_features"
    notebook: ClassVar[str] = "06"
    features: list[int]
    """The latents studied, picked by rule (seed-stable, 0.05-2% density)."""
    kinds: list[str]
    """Per latent, "token" (pick_features) or "context" (pick_context_features)."""
    tokens: list[str]
    """Per latent, its most common top-activating token."""
    effect_lift_a4: list[float]
    """Per latent, how many times more probable steering at 4x its typical activation makes the tokens
    it promotes, on unseen text."""
    lens_lift_a4: list[float]
    """Per latent, the same for its logit-lens tokens."""
    kl_a4: list[float]
    """Per latent, the KL (nats/token) of that steering."""
    ablation_fired: list[float]
    """Per latent, next-token loss change (nats) of zero-ablation where it fired."""
    ablation_elsewhere: list[float]
    """Per latent, the same where it did not fire."""
    ablation_mean_fired: list[float]
    """Per latent, mean-ablation's loss change where it fired."""
    ablation_resample_fired: list[float]
    """Per latent, resample-ablation's loss change where it fired."""
    caa: CaaComparison
    """Contrastive activation addition against the best-matching SAE latent."""
    k: int
    """Terms per token every dictionary keeps (the SAE's k)."""
    fvu: dict[str, float]
    """Held-out FVU at k terms per token: {"SAE" or baseline name: FVU}."""
    mmcs: dict[str, float]
    """Mean best |cos| of the SAE's decoder rows to each dictionary ("SAE": itself, 1)."""
    proxy_median: dict[str, float]
    """Median share of a direction's top-20 tokens on its most common token, per dictionary."""
    n_ica: int
    """Components ICA kept."""
    ica_converged: bool
    """Whether FastICA converged in its iteration budget."""

    def sentences(self) -> list[str]:
        feats = ", ".join(
            f"{n} ({t!r}{', context' if k == 'context' else ''})"
            for n, t, k in zip(self.features, self.tokens, self.kinds)
        )
        base = {n: v for n, v in self.fvu.items() if n != "SAE"}
        mmcs = {n: v for n, v in self.mmcs.items() if n != "SAE"}
        c = self.caa
        return [
            f"**Using features** (latents {feats}, picked by rule): steering at 4x their typical activation "
            f"made the tokens it promotes {_times(self.effect_lift_a4, '.1f')} as probable on unseen text at "
            f"KL {_pm(self.kl_a4, '.2f')} nats/token; their logit-lens tokens moved "
            f"{_times(self.lens_lift_a4, '.2f')}. Zero-ablation changed next-token loss by "
            f"{_pm(self.ablation_fired)} nats where each fired.",
            f"**Ablations** where each latent fired (nats): zero {_pm(self.ablation_fired)}; mean "
            f"{_pm(self.ablation_mean_fired)}; resample {_pm(self.ablation_resample_fired)}.",
            f"**CAA vs SAE steering.** The mean-difference vector between the corpora has best |cos| "
            f"{c.cos_best:.2f} with an SAE decoder row (latent {c.latent}). {c.sentence}",
            f"**SAE vs baselines** at {self.k} terms per token (held-out FVU): SAE {self.fvu['SAE']:.3f}; "
            + ", ".join(f"{n} {v:.3f}" for n, v in base.items())
            + ". MMCS (mean best |cos| of the SAE's decoder rows to each basis): "
            + ", ".join(f"{n} {v:.2f}" for n, v in mmcs.items())
            + ". Token-concentration proxy (median share of a direction's top-20 tokens on one token): SAE "
            f"{self.proxy_median['SAE']:.0%}, "
            + ", ".join(f"{n} {v:.0%}" for n, v in self.proxy_median.items() if n != "SAE")
            + f". ICA kept {self.n_ica} components"
            + ("." if self.ica_converged else " and did not converge in its iteration budget."),
        ]


# ---------------------------------------------------------------------------- 07 dictionaries
@dataclass(frozen=True)
class CrosscoderFindings(Finding):
    key: ClassVar[str] = "crosscoder"
    notebook: ClassVar[str] = "07"
    layers: list[int]
    """The layers the crosscoder reads side by side."""
    n_live: int
    """Latents that fire on the held-out tokens."""
    d_sae: int
    """Latents in all."""
    spans: float
    """Fraction of live latents that span layers (no layer holds 70% of the decoder norm)."""
    one_layer: dict[str, float]
    """Fraction of live latents held by one layer: {kind, e.g. "L8 only": fraction}."""
    shared: dict[int, float]
    """{layer: fraction shared one-to-one with that layer's SAE at cos > 0.7}."""
    random_shared: float
    """The same for random directions (the largest over layers)."""
    fvu_cc: dict[int, float]
    """{layer: held-out FVU of the crosscoder}."""
    fvu_sae: dict[int, float]
    """{layer: held-out FVU of that layer's SAE}."""
    l0_cc: float
    """The crosscoder's L0 in total."""
    l0_sae: float
    """The per-layer SAEs' L0 summed over the layers."""
    verdict: str
    """The crosscoder pair's convergence verdict line."""

    def sentences(self) -> list[str]:
        layers = ", ".join(f"L{k} {v:.1%}" for k, v in self.shared.items())
        fvu = ", ".join(f"L{k} {self.fvu_cc[k]:.3f} vs {self.fvu_sae[k]:.3f}" for k in self.fvu_cc)
        alone = ", ".join(f"{k} {v:.0%}" for k, v in self.one_layer.items())
        return [
            f"**Crosscoder** over layers {', '.join(map(str, self.layers))} ({self.n_live} of {self.d_sae} "
            f"latents live): {self.spans:.0%} span layers (no layer holds 70% of the decoder norm); {alone}. "
            f"Shared one-to-one with the per-layer SAEs at cos > 0.7: {layers} (random directions "
            f"{self.random_shared:.1%}). FVU per layer, crosscoder vs per-layer SAE, at L0 "
            f"{self.l0_cc:.0f} vs {self.l0_sae:.0f} in total: {fvu}. {self.verdict}"
        ]


@dataclass(frozen=True)
class TiedRow:
    """One SAE of the tied-vs-untied table."""

    architecture: str
    """The SAE's architecture."""
    tied: bool
    """Whether its encoder is its decoder's transpose."""
    fvu: float
    """Held-out FVU at the main layer."""
    l0: float
    """Held-out L0."""
    seed_shared: float
    """Fraction shared with its seed twin (NaN where it has none)."""
    enc_dec_cos: float
    """Median cosine of each latent's encoder row to its decoder row."""


@dataclass(frozen=True)
class TiedFindings(Finding):
    key: ClassVar[str] = "tied"
    notebook: ClassVar[str] = "07"
    table: dict[str, TiedRow]
    """{SAE label, e.g. "TopK tied": TiedRow}."""
    random_shared: float
    """Shared fraction of the seed-pair matching for random directions."""
    verdict: str
    """The tied seed pair's convergence verdict line."""

    def sentences(self) -> list[str]:
        rows = "; ".join(
            f"{name}: FVU {r.fvu:.3f}, L0 {r.l0:.1f}, enc/dec cos {r.enc_dec_cos:.2f}"
            + (f", seed-pair shared {r.seed_shared:.1%}" if not math.isnan(r.seed_shared) else "")
            for name, r in self.table.items()
        )
        return [
            f"**Tied vs untied** (held-out, main layer): {rows} (random-direction baseline "
            f"{self.random_shared:.1%}). Tied pair: {self.verdict}"
        ]


@dataclass(frozen=True)
class StitchingFindings(Finding):
    key: ClassVar[str] = "stitching"
    notebook: ClassVar[str] = "07"
    fractions: dict[str, float]
    """Of the base SAE's live latents against the half-width SAE: {"identical"|"split"|"novel": fraction}."""
    random: dict[str, float]
    """The same against random directions."""
    n_live: int
    """Live latents of the base SAE."""
    verdict: str
    """The base pair's convergence verdict line."""

    def sentences(self) -> list[str]:
        s, r = self.fractions, self.random
        return [
            f"**Width stitching** (base SAE against the half-width one, {self.n_live} live latents): "
            f"{s['identical']:.0%} identical, {s['split']:.0%} split, {s['novel']:.0%} novel, i.e. "
            f"{s['identical'] + s['split']:.0%}/{s['novel']:.0%} against the published 65/35 (random "
            f"directions: {r['novel']:.0%} novel)."
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
)
"""Every record type, in the README's order."""
