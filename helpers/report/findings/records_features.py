"""The findings records of notebooks 05-07 (the atlas, using features, other dictionaries); the records
of notebooks 01-04 and the list of every record type are helpers.report.findings.records."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from helpers.report.findings.base import Finding, signed_list, times_list


# ---------------------------------------------------------------------------- 05 UMAP atlas
@dataclass(frozen=True)
class AtlasFindings(Finding):
    key: ClassVar[str] = "atlas"
    notebook: ClassVar[str] = "05"
    example: int
    """The feature page's example latent: rule 1's first pick on the held-out view (HeldOut.pick, as 06)."""
    match: float
    """Its best decoder cosine in the seed twin."""
    density: float
    """Fraction of held-out tokens it fires on (HeldOut.density)."""
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
            "0.05-2% of held-out tokens, most single-token first) is latent "
            f"{self.example} (match {self.match:.2f}, density "
            f"{self.density:.2%}).{more}"
        ]


# ---------------------------------------------------------------------------- 06 using features
@dataclass(frozen=True)
class CaaComparison:
    """The CAA vector against the SAE latent whose decoder row matches it best, at equal KL."""

    cos_best: float
    """Best cos of the contrastive (mean-difference) vector with any SAE decoder row."""
    latent: int
    """The latent steered: the best-matching decoder row among latents that fire on held-out tokens."""
    cos_latent: float
    """cos of the contrastive vector with that latent's decoder row."""
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
            f"made the tokens it promotes {times_list(self.effect_lift_a4, '.1f')} as probable on unseen "
            "text at "
            f"KL {signed_list(self.kl_a4, '.2f')} nats/token; their logit-lens tokens moved "
            f"{times_list(self.lens_lift_a4, '.2f')}. Zero-ablation changed next-token loss by "
            f"{signed_list(self.ablation_fired)} nats where each fired.",
            f"**Ablations** where each latent fired (nats): zero {signed_list(self.ablation_fired)}; mean "
            f"{signed_list(self.ablation_mean_fired)}; resample {signed_list(self.ablation_resample_fired)}.",
            f"**CAA vs SAE steering.** The mean-difference vector between the corpora has best cos "
            f"{c.cos_best:.2f} with an SAE decoder row; the closest latent that fires, {c.latent}, has cos "
            f"{c.cos_latent:.2f}. {c.sentence}",
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
    """The same against a random rotation of each SAE decoder (the null model), the largest over layers."""
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
    l1_spans: float | None = None
    """The L1 crosscoder beside it (Profile.l1_crosscoder_beside): fraction of its live latents that
    span layers; None where none was trained."""
    l1_one_layer: dict[str, float] | None = None
    """... and of its live latents held by one layer, by kind."""
    l1_l0: float | None = None
    """... its held-out L0 (the BatchTopK crosscoder's is l0_cc)."""
    l1_drift: float | None = None
    """... its median decoder cosine to its own initial decoder (one seed: no seed-pair verdict)."""

    def sentences(self) -> list[str]:
        layers = ", ".join(f"L{k} {v:.1%}" for k, v in self.shared.items())
        fvu = ", ".join(f"L{k} {self.fvu_cc[k]:.3f} vs {self.fvu_sae[k]:.3f}" for k in self.fvu_cc)
        alone = ", ".join(f"{k} {v:.0%}" for k, v in self.one_layer.items())
        out = [
            f"**Crosscoder** over layers {', '.join(map(str, self.layers))} ({self.n_live} of {self.d_sae} "
            f"latents live): {self.spans:.0%} span layers (no layer holds 70% of the decoder norm); {alone}. "
            f"Shared one-to-one with the per-layer SAEs at cos > 0.7: {layers} (random-rotation baseline "
            f"{self.random_shared:.1%}). FVU per layer, crosscoder vs per-layer SAE, at L0 "
            f"{self.l0_cc:.0f} vs {self.l0_sae:.0f} in total: {fvu}. {self.verdict}"
        ]
        if self.l1_spans is not None:
            l1_alone = ", ".join(f"{k} {v:.0%}" for k, v in (self.l1_one_layer or {}).items())
            out.append(
                f"The same question to an **L1 crosscoder** (Anthropic's loss: a latent pays for each layer "
                f"it writes to) on the same layers, at held-out L0 {self.l1_l0:.0f} (the BatchTopK one: "
                f"{self.l0_cc:.0f}): {self.l1_spans:.0%} of its live latents span layers; {l1_alone}. One "
                f"seed, so no seed-pair verdict: its decoder's median cosine to its initialisation is "
                f"{self.l1_drift:.2f} (<= 0.30 counts as having left it)."
            )
        return out


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
    """Shared fraction of the seed-pair matching against a random rotation of the twin (the null model)."""
    verdict: str
    """The tied seed pair's convergence verdict line."""

    def sentences(self) -> list[str]:
        rows = "; ".join(
            f"{name}: FVU {r.fvu:.3f}, L0 {r.l0:.1f}, enc/dec cos {r.enc_dec_cos:.2f}"
            + (f", seed-pair shared {r.seed_shared:.1%}" if not math.isnan(r.seed_shared) else "")
            for name, r in self.table.items()
        )
        return [
            f"**Tied vs untied** (held-out, main layer): {rows} (random-rotation baseline "
            f"{self.random_shared:.1%}). Tied pair: {self.verdict}"
        ]


@dataclass(frozen=True)
class StitchingFindings(Finding):
    key: ClassVar[str] = "stitching"
    notebook: ClassVar[str] = "07"
    fractions: dict[str, float]
    """Of the base SAE's live latents against the half-width SAE: {"identical"|"split"|"novel": fraction}."""
    random: dict[str, float]
    """The same against a random rotation of the half-width decoder (the null model)."""
    n_live: int
    """Live latents of the base SAE."""
    verdict: str
    """The base pair's convergence verdict line."""

    def sentences(self) -> list[str]:
        s, r = self.fractions, self.random
        return [
            f"**Width stitching** (base SAE against the half-width one, {self.n_live} live latents): "
            f"{s['identical']:.0%} identical, {s['split']:.0%} split, {s['novel']:.0%} novel, i.e. "
            f"{s['identical'] + s['split']:.0%}/{s['novel']:.0%} against the published 65/35 "
            f"(random-rotation baseline: {r['novel']:.0%} novel)."
        ]
