"""Notebook 06's study of one SAE: its picked features, what using them does, and the two baselines it
has to beat (a contrastive steering vector, and PCA / ICA / random / neuron dictionaries).

What: `caa_vs_latent` (the mean-difference vector between two corpora against the SAE latent whose
decoder row matches it best, steering the same targets), `baseline_comparison` (the four baselines fitted
on training rows and compared with the SAE on the held-out rows), and `FeatureStudy`, which holds the
inputs every part shares (model, SAE, held-out views, picked features, profile sizes) and computes each
part (`steering_curves`, `generations`, `ablations`, `caa`, `baselines`) on its first call and keeps it.
`summary()` gathers the parts into the fields of `report.findings.UsingFeaturesFindings`.
Why: a notebook section can then run alone after the setup cell (it computes what it needs), and the
findings section asks every part again for free once the sections ran.
Every held-out number reads the one held-out view (`helpers.analysis.heldout.HeldOut`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from helpers.analysis import baselines
from helpers.analysis.feature_use import (
    Features,
    ablations,
    at_alpha,
    features_of,
    generations,
    steering_curves,
)
from helpers.analysis.heldout import N_EVAL_SHARDS
from helpers.analysis.interventions import SteeringCurve, effect_targets, steering_curve
from helpers.analysis.steering_vectors import Cheaper, best_matching_latent, cheaper, mean_difference


# ------------------------------------------------------------------ contrastive activation addition
@dataclass
class CaaResult:
    """The CAA vector v (main corpus minus the other) against the SAE latent closest to it."""

    v_norm: float  # ||v||, the CAA steering unit
    median_norm: float  # median residual norm of the main corpus's held-out tokens, for scale
    cos: np.ndarray  # [n] cos of v with its n closest SAE decoder rows, descending
    latents: np.ndarray  # [n] those latents
    latent: int  # the latent steered (the closest one that fires: `best_matching_latent`)
    targets: list[int]  # the tokens v promotes most on the other corpus's text
    caa_curve: SteeringCurve  # steering v, alphas x ||v||
    latent_curve: SteeringCurve  # steering the latent, alphas x its typical activation
    cmp: Cheaper  # lift of the targets at the same KL
    latent_cos: float  # cos of v with W_dec[latent] (`latent` may sit below the top of `latents`)

    @property
    def curves(self) -> dict[str, SteeringCurve]:
        return {"CAA (mean difference)": self.caa_curve, f"SAE latent {self.latent}": self.latent_curve}

    def describe(self, decode: Callable) -> str:
        """||v||, its closest decoder rows and its targets, in three lines."""
        rows = ", ".join(f"{int(i)}: {float(c):.2f}" for c, i in zip(self.cos, self.latents))
        return (
            f"||v|| = {self.v_norm:.2f} (median residual norm of the held-out tokens "
            f"{self.median_norm:.2f})\n"
            f"best cos of v with SAE decoder rows: {rows}\n"
            "targets (promoted most by v on other text): " + " ".join(repr(decode([t])) for t in self.targets)
        )


def caa_vs_latent(
    model, layer: int, sae, held, other_held, n_seq: int, seq_len: int, caa_alphas, sae_alphas
) -> CaaResult:
    """v = mean(held.x) - mean(other_held.x) (`mean_difference`). Its targets: the ten tokens steering with
    v / 2 promotes most on the other corpus's held-out sequences n_seq..2 n_seq-1; then steer v (alphas x
    ||v||) and the best-matching latent (alphas x its typical activation) on sequences 0..n_seq-1 (first
    seq_len tokens) and compare their lift of the targets at the same KL (`cheaper`)."""
    v = mean_difference(held.x, other_held.x)
    v_norm = float(v.norm())
    v_unit = v / v_norm
    typical = held.typical(sae)
    cos, latents, latent = best_matching_latent(sae.W_dec.detach(), v_unit, typical)
    text = torch.from_numpy(other_held.sequence_tokens)
    steer_text, choose_text = text[:n_seq, :seq_len], text[n_seq : 2 * n_seq, :seq_len]
    targets = effect_targets(model, choose_text, layer, v_unit, 0.5 * v_norm)
    caa = steering_curve(model, steer_text, layer, v_unit, v_norm, caa_alphas, {"targets": targets})
    u = sae.W_dec[latent].detach()
    lat = steering_curve(
        model, steer_text, layer, u, float(typical[latent]), sae_alphas, {"targets": targets}
    )
    cmp = cheaper(caa, lat, "targets", "the CAA vector", f"SAE latent {latent}")
    median = float(held.x.norm(dim=1).median())
    cos_latent = float(torch.nn.functional.cosine_similarity(u.float(), v_unit.float(), dim=0))
    return CaaResult(v_norm, median, cos, latents, latent, targets, caa, lat, cmp, cos_latent)


# ------------------------------------------------------------------ baseline dictionaries
def fit_rows(held, n: int, n_shards: int = 4, seed: int = 0) -> torch.Tensor:
    """[n, d] rows drawn at random (`seed`) from the last n_shards training shards of the view's store,
    under the view's token policy (positions, separator tokens, massive-token cut): what baselines fit on."""
    train = held.store.split(N_EVAL_SHARDS)[0]
    x, _ = held.store.token_rows(
        held.layer, train[-n_shards:], held.exclude_positions, held.exclude_tokens, held.max_norm
    )
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


@dataclass
class BaselineResult:
    """`baselines.compare` of the SAE with the four baselines on the held-out rows."""

    table: pd.DataFrame  # one row per dictionary, the SAE first
    concentration: dict[str, baselines.Concentration]  # the proxy of every dictionary
    k: int  # terms per token every dictionary keeps (the SAE's k)
    n_ica: int  # components ICA kept
    ica_info: dict  # FastICA's convergence: converged, n_iter
    ica_subspace: float  # share of the held-out variance inside ICA's principal subspace

    def ica_note(self) -> str:
        return (
            f"ICA: {self.n_ica} components (their subspace holds {self.ica_subspace:.1%} of the held-out "
            f"variance), converged: {self.ica_info['converged']} after {self.ica_info['n_iter']} iterations"
        )


def baseline_comparison(sae, held, n_fit: int, max_ica: int = 256) -> BaselineResult:
    """Fit PCA, ICA (min(max_ica, d) components), a random rotation and the neurons on n_fit training rows
    (`fit_rows`), then compare them with the SAE on the held-out rows at the SAE's k terms per token."""
    x_fit = fit_rows(held, n_fit)
    n_ica = min(max_ica, x_fit.shape[1])
    dictionaries = baselines.fit_all(x_fit, n_ica)
    k = sae.cfg.k or 32
    table, conc = baselines.compare(sae, dictionaries, held.x, held.token_ids, k=k)
    ica_info = next(d.info for d in dictionaries if d.name == "ICA")
    return BaselineResult(table, conc, k, n_ica, ica_info, baselines.variance_share(x_fit, held.x, n_ica))


# ------------------------------------------------------------------ the study
class FeatureStudy:
    """The picked features of `sae` on the held-out view `held` and what using them does; each part is
    computed on its first call and kept. Texts are the held-out sequences (`held.sequence_tokens`): rows
    0..n-1 carry the steering curves, n..2n-1 choose the effect tokens, row 2n is the generation prompt
    (n = profile.context_seqs, cut to profile.context_len tokens, the prompt to profile.prompt_len)."""

    ALPHAS = (0, 0.5, 1, 2, 4, 8)  # steering strengths, x the latent's typical activation
    REPORT_ALPHA = 4  # effect tokens are chosen, and the findings report, at this alpha
    CAA_ALPHAS = (0, 0.125, 0.25, 0.5, 1.0)  # x ||v||: 1 adds the whole mean difference
    SAE_ALPHAS = (0, 1, 2, 4, 8, 16, 32)  # x the latent's typical activation
    ABLATION_SEQS = 4  # held-out sequences each latent is ablated on

    def __init__(self, profile, model, sae, held, other_held, picked, lens: Mapping[int, object], decode):
        self.profile, self.model, self.sae, self.decode = profile, model, sae, decode
        self.held, self.other_held, self.picked, self.lens = held, other_held, picked, lens
        self.layer = held.layer
        self.features: Features = features_of(held, sae, picked, decode)
        self._parts: dict[str, object] = {}

    def _once(self, name: str, make: Callable):
        if name not in self._parts:
            self._parts[name] = make()
        return self._parts[name]

    def _text(self, block: int, length: int) -> torch.Tensor:
        n = self.profile.context_seqs
        return torch.from_numpy(self.held.sequence_tokens[block * n : (block + 1) * n, :length])

    def steering_curves(self) -> dict[str, dict]:
        """`feature_use.steering_curves` at ALPHAS, effect tokens chosen at REPORT_ALPHA."""
        lens_ids = {f: [i for _, i, _ in self.lens[f].promoted] for f in self.features.ids}
        T = self.profile.context_len
        args = (self.model, self.layer, self.sae, self.features, lens_ids, self._text(0, T), self._text(1, T))
        return self._once("steering", lambda: steering_curves(*args, self.ALPHAS, self.REPORT_ALPHA))

    @property
    def prompt(self) -> torch.Tensor:
        """[1, prompt_len] the generation prompt: the first held-out sequence after the two text blocks."""
        return self._text(2, self.profile.prompt_len)[:1]

    def generations(self) -> pd.DataFrame:
        """`feature_use.generations` of `prompt`."""
        args = (self.model, self.layer, self.sae, self.features, self.prompt, self.profile.new_tokens)
        return self._once("generations", lambda: generations(*args, self.decode))

    def ablations(self) -> dict[str, dict]:
        """`feature_use.ablations` on ABLATION_SEQS sequences of profile.ablation_len tokens."""
        args = (self.model, self.layer, self.sae, self.held, self.features, self.profile.ablation_len)
        return self._once("ablations", lambda: ablations(*args, self.ABLATION_SEQS))

    def caa(self) -> CaaResult:
        """`caa_vs_latent`: the main corpus minus the other, steered on the other corpus's text."""
        n, T = self.profile.context_seqs, self.profile.context_len
        args = (self.model, self.layer, self.sae, self.held, self.other_held, n, T)
        return self._once("caa", lambda: caa_vs_latent(*args, self.CAA_ALPHAS, self.SAE_ALPHAS))

    def baselines(self) -> BaselineResult:
        """`baseline_comparison` fitted on profile.steering_fit_tokens training rows."""
        return self._once(
            "baselines", lambda: baseline_comparison(self.sae, self.held, self.profile.steering_fit_tokens)
        )

    def summary(self) -> dict:
        """Every part's numbers as the fields of `report.findings.UsingFeaturesFindings` (plain values:
        build the record with `findings.from_values`); computes the parts not computed yet."""
        curves, variants, caa, base = self.steering_curves(), self.ablations(), self.caa(), self.baselines()

        def fired(mode: str, where: bool = True) -> list[float]:
            return [float(v[mode].mean_where(where)) for v in variants.values()]

        def cols(name: str) -> dict[str, float]:
            return {n: float(v) for n, v in base.table[name].items()}

        return {
            "features": self.features.ids,
            "kinds": self.features.kinds,
            "tokens": self.features.tokens,
            "effect_lift_a4": at_alpha(curves, "effect_lift", self.REPORT_ALPHA),
            "lens_lift_a4": at_alpha(curves, "lens_lift", self.REPORT_ALPHA),
            "kl_a4": at_alpha(curves, "kl", self.REPORT_ALPHA),
            "ablation_fired": fired("zero"),
            "ablation_elsewhere": fired("zero", False),
            "ablation_mean_fired": fired("mean"),
            "ablation_resample_fired": fired("resample"),
            "caa": {
                "cos_best": float(caa.cos[0]),
                "latent": caa.latent,
                "cos_latent": caa.latent_cos,
                "kl": float(caa.cmp.kl),
                "lift_caa": float(caa.cmp.lift_a),
                "lift_sae": float(caa.cmp.lift_b),
                "winner": caa.cmp.winner,
                "sentence": caa.cmp.sentence(),
            },
            "k": int(base.k),
            "fvu": cols("fvu"),
            "mmcs": cols("mmcs_to_sae"),
            "proxy_median": cols("proxy_median"),
            "n_ica": int(base.n_ica),
            "ica_converged": bool(base.ica_info["converged"]),
        }
