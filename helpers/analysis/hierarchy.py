"""Nested dictionaries on real activations: what a Matryoshka SAE's prefixes are, against flat SAEs.

What:
- `prefix_fvu`: FVU on held-out rows when only the first n latents (index order) decode, for each n.
  A Matryoshka SAE is trained so that each prefix reconstructs on its own; a TopK / BatchTopK SAE's
  index order is arbitrary, so its first n latents should reconstruct about as well as any n of its
  latents chosen at random (~ n/m of what the whole SAE explains).
- `prefix_vs_narrow`: each prefix of the Matryoshka SAE against a separately trained narrow TopK SAE of
  the prefix's width, by notebook 07's stitching rule (helpers.analysis.stitching: each prefix latent
  takes its best decoder match in the narrow SAE; identical / split above cos 0.7, novel below), beside
  the same rule on a flat SAE's first latents and on the random-rotation null model.
- `pair_match`: one-to-one (Hungarian) decoder matching of two SAEs, shared at cos > 0.7, with the
  random-rotation baseline: the Matryoshka SAE against the factor grid's BatchTopK SAE of its width.
Why: the Matryoshka claim is that its early latents form a small dictionary of their own (general
features), which a flat SAE's early latents do not; these say how far that holds on the offline model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.analysis import convergence
from helpers.analysis.similarity import hungarian_match, null_shared_fraction, shared_fraction
from helpers.analysis.stitching import null_stitching_split, stitching_split
from helpers.training import experiments

ROWS = 4096  # held-out rows encoded at once


@torch.no_grad()
def prefix_fvu(sae: Any, x: torch.Tensor, widths: Sequence[int], batch_size: int = ROWS) -> np.ndarray:
    """[len(widths)] FVU of x decoded from latents [0, w) alone (codes of the whole SAE's encode, the
    later latents zeroed): 1 - explained / total, total = sum ||x - mean(x)||^2 over the rows."""
    widths = [int(w) for w in widths]
    err = torch.zeros(len(widths), dtype=torch.float64)
    mean = x.double().mean(0)
    total = float(((x.double() - mean) ** 2).sum())
    W, b = sae.W_dec.detach(), sae.b_dec.detach()
    for xb in torch.split(x, batch_size):
        codes = sae.encode(xb)
        x_hat = b.expand_as(xb).clone()
        start = 0
        for i, w in enumerate(widths):  # widths ascending: add each slice once
            x_hat += codes[:, start:w] @ W[start:w]
            start = w
            err[i] += float(((xb - x_hat).double() ** 2).sum())
    return (err / max(total, 1e-30)).numpy()


@dataclass(frozen=True)
class PrefixCurves:
    """FVU against the number of latents that decode, per SAE, on the same held-out rows."""

    widths: tuple[int, ...]
    """The prefix widths (the Matryoshka SAE's)."""
    fvu: dict[str, np.ndarray]
    """{label: FVU at each width} decoding each SAE's first latents in index order."""
    narrow: dict[int, float]
    """{width: FVU} of separately trained narrow SAEs, each decoding all of its own latents."""

    def table(self) -> pd.DataFrame:
        rows = {
            f"first {w}": {lab: float(v[i]) for lab, v in self.fvu.items()} for i, w in enumerate(self.widths)
        }
        df = pd.DataFrame(rows).T
        df["narrow TopK (own width)"] = [self.narrow.get(w, float("nan")) for w in self.widths]
        return df


def prefix_curves(
    saes: Mapping[str, Any], narrow: Mapping[int, Any], x: torch.Tensor, widths: Sequence[int]
) -> PrefixCurves:
    """`prefix_fvu` of every SAE in `saes` at `widths`, and each narrow SAE's own FVU on x."""
    fvu = {label: prefix_fvu(sae, x, widths) for label, sae in saes.items()}
    own = {int(w): float(prefix_fvu(s, x, [s.cfg.d_sae])[0]) for w, s in narrow.items()}
    return PrefixCurves(tuple(int(w) for w in widths), fvu, own)


def _rows(sae: Any, width: int) -> torch.Tensor:
    return sae.W_dec.detach()[:width]


def prefix_vs_narrow(
    matryoshka: Any, flat: Any, narrow: Mapping[int, Any], flat_label: str = "BatchTopK"
) -> pd.DataFrame:
    """Per narrow SAE of width w: the share of the Matryoshka's first w latents that are the narrow
    SAE's (stitching rule: identical or split at cos > 0.7), of `flat`'s first w latents, and of the
    Matryoshka prefix against the narrow decoder turned by a random rotation (the null model)."""
    rows = []
    for w, small in sorted(narrow.items()):
        ours = stitching_split(small.W_dec.detach(), _rows(matryoshka, w)).fractions()
        theirs = stitching_split(small.W_dec.detach(), _rows(flat, w)).fractions()
        null = null_stitching_split(small.W_dec.detach(), _rows(matryoshka, w)).fractions()
        rows.append(
            {
                "width": int(w),
                "Matryoshka prefix": ours["identical"] + ours["split"],
                f"{flat_label} first latents": theirs["identical"] + theirs["split"],
                "random rotation": null["identical"] + null["split"],
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PairMatch:
    """Hungarian decoder matching of two SAEs and its random-rotation baseline."""

    shared: float
    """Share of matched pairs at cos > 0.7."""
    median_cos: float
    """Median cosine of the matched pairs."""
    null: float
    """The same share against the second SAE's decoder turned by a Haar-random rotation."""


def pair_match(a: Any, b: Any) -> PairMatch:
    """One-to-one decoder matching of SAEs a and b (`similarity.hungarian_match`), with its null model."""
    A, B = a.W_dec.detach(), b.W_dec.detach()
    m = hungarian_match(A, B)
    sims = np.asarray(m[2])
    return PairMatch(shared_fraction(sims), float(np.median(sims)), null_shared_fraction(A, B))


def summary(vs_flat: PairMatch, curves: PrefixCurves, in_narrow: pd.DataFrame) -> dict:
    """The fields of findings.MatryoshkaFindings (all but the verdict): the match against the flat SAE of
    the same width, FVU of the first prefix and of the whole SAEs, and `prefix_vs_narrow`'s shares."""
    return {
        "vs_batchtopk": float(vs_flat.shared),
        "vs_batchtopk_null": float(vs_flat.null),
        "first_width": int(curves.widths[0]),
        "fvu_first": {k: float(v[0]) for k, v in curves.fvu.items()},
        "fvu_full": {k: float(v[-1]) for k, v in curves.fvu.items()},
        "prefix_in_narrow": {
            int(r["width"]): [float(v) for v in r.drop("width").to_numpy()] for _, r in in_narrow.iterrows()
        },
    }


@dataclass(frozen=True)
class HierarchySAEs:
    """Notebook 08's SAEs on the main layer: the Matryoshka pair's runs and verdict, the narrow TopK runs,
    and the SAEs its sections compare (`flat`: the Matryoshka SAE, the grid's BatchTopK SAE of its width
    and the base TopK SAE)."""

    matryoshka: Any
    """The Matryoshka pair's first SAERun."""
    twin: Any
    """Its seed twin's SAERun."""
    narrow: list
    """The narrow TopK SAERuns (experiments.hierarchy_runs)."""
    verdict: str
    """The Matryoshka pair's convergence verdict line (notebook 02's criteria)."""
    flat: dict[str, Any]
    """{"Matryoshka", "BatchTopK", "TopK (base)": SAE}."""


def hierarchy_saes(profile: Any, d_model: int, store_root: Any, sae_root: Any) -> HierarchySAEs:
    """Train notebook 08's SAEs unless they are on disk (`experiments.trained`, resuming checkpoints),
    then the Matryoshka pair's verdict (`convergence.pair_verdict`) and the three SAEs compared."""
    mat, twin, narrow = experiments.hierarchy_runs(profile, d_model)
    experiments.trained([mat, twin, *narrow], profile, store_root, sae_root)
    role = experiments.roles(profile, d_model)
    flat = {
        "Matryoshka": experiments.load(mat, sae_root),
        "BatchTopK": experiments.load(role["batchtopk"], sae_root),
        "TopK (base)": experiments.load(role["base"], sae_root),
    }
    verdict = convergence.pair_verdict(mat, twin, sae_root).line()
    return HierarchySAEs(mat, twin, narrow, verdict, flat)
