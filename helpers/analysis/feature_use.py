"""Using a few picked latents, feature by feature: steering curves, generations and ablations, and the
tables notebook 06 prints from them.

What: `Features` (the latents the stated rules pick on the held-out view, `HeldOut.pick`, with their
labels and steering units), one runner per experiment that loops over them (`steering_curves`,
`generations`, `ablations`: each calls the single-latent tools of `helpers.analysis.interventions`) and
the tables read from the results (`feature_table`, `steering_table`, `zero_ablation_table`,
`ablation_table`, `ablation_spread`).
Why: each experiment is the same few calls per latent; writing them once keeps the notebook to what
it measures and why, and lets the tests check the loops on a tiny model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from helpers.analysis.interventions import (
    ABLATIONS,
    AblationEffect,
    Clamp,
    Steer,
    ablation_effect,
    effect_targets,
    firing_sequences,
    generate,
    steering_curve,
)


@dataclass(frozen=True)
class Features:
    """The latents a notebook uses, picked by rule, with what every experiment needs of them."""

    ids: list[int]
    kinds: list[str]  # per latent: "token" (rule 1, pick_features) or "context" (rule 2)
    tokens: list[str]  # per latent: its most common top-activating held-out token, decoded
    scales: np.ndarray  # [n] typical activation on the held-out view: the unit of steering alpha

    @property
    def labels(self) -> list[str]:
        """'f<id> <token> (<kind>)' per latent: the key of every per-feature result."""
        return [f"f{f} {t!r} ({k})" for f, t, k in zip(self.ids, self.tokens, self.kinds)]

    def items(self) -> Iterator[tuple[int, float, str]]:
        """(latent, typical activation, label) per latent."""
        return zip(self.ids, (float(s) for s in self.scales), self.labels)


def features_of(held, sae, picked, decode: Callable) -> Features:
    """The picked latents (`HeldOut.pick` -> `Picked`) with their rule, top token and typical activation
    on the held-out view `held`."""
    ids = list(picked.all)
    top_token = held.stats(sae).top_token
    return Features(
        ids,
        ["token" if f in picked.token else "context" for f in ids],
        [decode([int(top_token[f])]) for f in ids],
        held.typical(sae)[ids],
    )


def feature_table(held, sae, picked, feats: Features, lens: Mapping[int, object], n_lens: int = 6):
    """One row per latent: rule, held-out density, best cosine in the seed twin, proxy share (of its top-20
    tokens on one token), that token, typical activation and the first n_lens tokens its logit lens
    promotes (`lens` {latent: feature_card.LogitLens})."""
    s = held.stats(sae)
    rows = [
        {
            "feature": f,
            "rule": kind,
            "fires on": f"{s.density[f]:.2%}",
            "twin cos": round(float(picked.twin_cos[f]), 2),
            "top-20 share": s.share[f],
            "its most common token": repr(tok),
            "typical activation": round(scale, 2),
            "logit lens (promoted)": " ".join(repr(t) for t, _, _ in lens[f].promoted[:n_lens]),
        }
        for (f, scale, _), kind, tok in zip(feats.items(), feats.kinds, feats.tokens)
    ]
    return pd.DataFrame(rows).set_index("feature")


# ------------------------------------------------------------------ steering
def steering_curves(
    model,
    layer: int,
    sae,
    feats: Features,
    lens_ids: Mapping[int, list[int]],
    curve_text: Tensor,
    target_text: Tensor,
    alphas,
    target_alpha: float = 4.0,
) -> dict[str, dict]:
    """Per latent f: its effect tokens (`effect_targets`: the ten whose log-probability rises most when
    steering with target_alpha x its typical activation on target_text [B, T]), then its steering curve
    on curve_text [B, T] (`steering_curve`) for two target sets, "lens" (lens_ids[f]) and "effect".
    Returns {label: {"alphas", "lens_lift", "effect_lift", "kl": [n_alphas], "effect_tokens": ids}}, the
    layout `report.plots.steering.plot_steering_curves` reads."""
    out = {}
    for f, scale, label in feats.items():
        u = sae.W_dec[f].detach()
        effect = effect_targets(model, target_text, layer, u, target_alpha * scale)
        curve = steering_curve(
            model, curve_text, layer, u, scale, alphas, {"lens": list(lens_ids[f]), "effect": effect}
        )
        out[label] = {
            "alphas": np.asarray(alphas),
            "lens_lift": curve.lift("lens"),
            "effect_lift": curve.lift("effect"),
            "kl": curve.kl,
            "effect_tokens": effect,
        }
    return out


def at_alpha(curves: Mapping[str, Mapping], key: str, alpha: float) -> list[float]:
    """curves[label][key] at `alpha` (one of the measured alphas), per label."""
    out = []
    for c in curves.values():
        hit = np.flatnonzero(np.asarray(c["alphas"]) == alpha)
        if not len(hit):
            raise ValueError(f"alpha {alpha} was not measured; measured: {list(c['alphas'])}")
        out.append(float(c[key][hit[0]]))
    return out


def steering_table(curves: Mapping[str, Mapping], alpha: float, decode: Callable, n_tokens: int = 6):
    """One row per latent at `alpha`: lift of its effect tokens and of its logit-lens tokens, the KL paid
    (nats/token) and its first n_tokens effect tokens."""
    return pd.DataFrame(
        {
            "effect lift": at_alpha(curves, "effect_lift", alpha),
            "lens lift": at_alpha(curves, "lens_lift", alpha),
            "KL": at_alpha(curves, "kl", alpha),
            "effect tokens": [
                " ".join(repr(decode([t])) for t in c["effect_tokens"][:n_tokens]) for c in curves.values()
            ],
        },
        index=pd.Index(list(curves), name="feature"),
    )


def generations(
    model, layer: int, sae, feats: Features, prompt: Tensor, new_tokens: int, decode: Callable
) -> pd.DataFrame:
    """Greedy continuations of prompt [1, P], one row per latent: clean, steered with 2x and 8x its typical
    activation, and with the latent clamped to 4x it (error term kept)."""
    text = lambda edit: repr(decode(generate(model, prompt, layer, edit, new_tokens)[0].tolist()))  # noqa: E731
    clean = text(None)
    rows = []
    for f, scale, _ in feats.items():
        u = sae.W_dec[f].detach()
        edits = {"steer a=2": Steer(u, 2 * scale), "steer a=8": Steer(u, 8 * scale)}
        edits["clamp 4x"] = Clamp(sae, f, value=4 * scale)
        rows.append({"feature": f, "clean": clean, **{name: text(e) for name, e in edits.items()}})
    return pd.DataFrame(rows, columns=["feature", "clean", "steer a=2", "steer a=8", "clamp 4x"]).set_index(
        "feature"
    )


# ------------------------------------------------------------------ ablation
def ablations(
    model, layer: int, sae, held, feats: Features, length: int, n_seq: int = 4, modes=ABLATIONS
) -> dict[str, dict[str, AblationEffect]]:
    """Each latent ablated in every mode (`ablation_effect`, error term kept) on the n_seq held-out
    sequences whose first `length` positions hold its most firings (`firing_sequences` on `held.grid`).
    The pool of mean and resample ablation is its value at every held-out token (`held.values`), the
    resample seed the latent id. Returns {label: {mode: AblationEffect}}."""
    grid = held.grid(sae, feats.ids)[:, :length]  # [n_held_seq, length, n_features]
    tokens = torch.from_numpy(held.sequence_tokens)
    out = {}
    for j, (f, _, label) in enumerate(feats.items()):
        text = tokens[firing_sequences(grid[..., j], n_seq, length), :length]
        pool = held.values(sae, [f])[:, 0]
        out[label] = {
            m: ablation_effect(model, text, layer, sae, f, mode=m, pool=pool, seed=f) for m in modes
        }
    return out


def zero_ablation_table(variants: Mapping[str, Mapping], decode: Callable, n_rises: int = 3, before: int = 4):
    """One row per latent: the mean change of next-token loss (nats) under zero-ablation where it fired
    and elsewhere, and the n_rises predictions whose loss rose most ('context' -> 'token' +rise)."""
    rows = {}
    for label, by_mode in variants.items():
        e = by_mode["zero"]
        rises = e.rises_text(decode, n_rises, before=before)
        rows[label] = {
            "fired": e.mean_where(True),
            "elsewhere": e.mean_where(False),
            "largest rises": "; ".join(f"{c!r} -> {t!r} +{d:.2f}" for c, t, d in rises),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("feature")


def ablation_table(variants: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per latent, two columns per mode: '<mode>: fired' and '<mode>: elsewhere', the mean change
    of next-token loss (nats) at predicting positions where the latent fired / did not."""
    rows = {
        label: {
            f"{m}: {where}": e.mean_where(fired)
            for m, e in by_mode.items()
            for where, fired in (("fired", True), ("elsewhere", False))
        }
        for label, by_mode in variants.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("feature")


def ablation_spread(table: pd.DataFrame, modes=ABLATIONS) -> str:
    """How far the ablation modes disagree where the latent fired: the largest and median (over latents)
    of max - min across modes, and each mode's mean, as one sentence."""
    fired = table[[f"{m}: fired" for m in modes]]
    spread = fired.max(axis=1) - fired.min(axis=1)
    means = ", ".join(f"{m} ablation's {fired[f'{m}: fired'].mean():+.3f}" for m in modes)
    return (
        f"Across the {len(table)} features the {len(modes)} ablations differ by at most {spread.max():.3f} "
        f"nats where the latent fired (median {spread.median():.3f}); the mean effect there: {means}."
    )
