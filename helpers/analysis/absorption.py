"""Feature absorption on a planted hierarchy: how often a child's latent swallows its parent's direction.

What: `absorption(codes_NM, W_dec_MD, data)` counts, per (parent, child) pair of a
helpers.data.toy.Hierarchy, the samples where the child fires, the parent's latent stays silent and
another active latent carries the parent's direction instead (Chanin et al. 2024, arXiv 2409.14507);
`hierarchy_scores(sae, data)` adds L0, FVU and the parents' and children's MMCS into one
`HierarchyScores`; `random_decoder_baseline(sae, data)` gives the same numbers for an untrained SAE
of the same class and size.
Why: sparsity rewards an SAE for folding "parent + child" into one latent, so a parent latent that
fails to fire exactly when a child is present is a known failure of SAEs (and what Matryoshka SAEs
aim to fix); a planted hierarchy is the one place the true features are known and it can be counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from helpers.analysis.similarity import unit_rows
from helpers.data.toy import Hierarchy, feature_recovery
from helpers.sae.metrics import fvu as fvu_of
from helpers.sae.metrics import l0 as l0_of

TWIN_SEED_OFFSET = 7_777_777
"""Added to an untrained twin's seed: torch.Generator(0).randn(M, D) would start with the same rows as
make_hierarchy_data(seed=0)'s parent directions (same D), a decoder that already holds the parents."""


@dataclass
class AbsorptionResult:
    """Absorption counts of one SAE on one Hierarchy, per (parent, child) pair and pooled."""

    parent_latent: Tensor
    """[n_parents] int64: each parent's latent P (highest decoder cosine with u_p)."""
    parent_latent_cos: Tensor
    """[n_parents] float: that cosine."""
    pair_parent: Tensor
    """[n_children] int64: the parent feature of each (parent, child) pair."""
    pair_child: Tensor
    """[n_children] int64: the child feature of each pair."""
    child_active: Tensor
    """[n_children] int64: samples where the child fires (hence its parent too)."""
    parent_missed: Tensor
    """[n_children] int64: of those, samples where P's code is 0."""
    absorbed: Tensor
    """[n_children] int64: of those, samples where P is 0 and an absorbing latent is active."""
    tau: float
    """Threshold on cos(W_dec[j], v) for latent j to count as carrying the parent's direction."""

    @property
    def rate(self) -> float:
        """Pooled absorption rate: absorbed samples / child-active samples (nan if no child fired)."""
        n = int(self.child_active.sum())
        return int(self.absorbed.sum()) / n if n else math.nan

    @property
    def parent_miss(self) -> float:
        """Pooled share of child-active samples where the parent latent is 0."""
        n = int(self.child_active.sum())
        return int(self.parent_missed.sum()) / n if n else math.nan


@dataclass
class HierarchyScores:
    """One SAE on a planted hierarchy: reconstruction, recovery of parents and children, absorption."""

    architecture: str
    """SAE architecture (a random baseline: "random <architecture>")."""
    seed: int
    """Seed of the SAE (its init; for a baseline, of the untrained weights)."""
    l0: float
    """Mean active latents per sample on the evaluated rows."""
    fvu: float
    """Fraction of variance unexplained on those rows."""
    parent_mmcs: float
    """Mean over parent features of the max cosine with any decoder row."""
    child_mmcs: float
    """Mean over child features of the max cosine with any decoder row."""
    absorption: float
    """Pooled absorption rate (`AbsorptionResult.rate`)."""
    parent_miss: float
    """Pooled parent-miss rate (`AbsorptionResult.parent_miss`)."""
    setting: str = ""
    """What was chosen for this SAE (e.g. the l1 that matched the L0), if anything."""


@torch.no_grad()
def absorption(codes_NM: Tensor, W_dec_MD: Tensor, data: Hierarchy, tau: float = 0.3) -> AbsorptionResult:
    """Absorption counts of an SAE's codes [N, M] (rows = data.X's samples) and decoder [M, D].

    The rule. For each parent p with true direction u_p, its parent latent P is the latent whose
    decoder row has the highest cosine with u_p. For each child c of p with direction u_c, let
    v = (u_p - <u_p, u_c> u_c) / ||u_p - <u_p, u_c> u_c||, the unit part of u_p orthogonal to u_c.
    On each sample where c is active (hence p too), the sample is ABSORBED if (a) P's code is 0 and
    (b) some other active latent j != P (code != 0) has <W_dec[j] / ||W_dec[j]||, v> >= tau: a latent
    carries the parent's direction beyond what the child's own direction explains (a latent along
    u_c alone has cosine 0 with v and never counts). It is a PARENT MISS if (a) holds, with or
    without such a latent. Pooled rates: absorbed (or missed) samples / child-active samples over
    all children. A second latent along u_p that fires instead of P counts as absorbing too.
    """
    if codes_NM.shape != (data.X.shape[0], W_dec_MD.shape[0]):
        raise ValueError(
            f"codes {tuple(codes_NM.shape)} must be [n_samples={data.X.shape[0]}, d_sae={W_dec_MD.shape[0]}]"
        )
    on_NM = codes_NM.detach().to(data.active.device) != 0
    w_MD = unit_rows(W_dec_MD.detach().float()).to(data.directions.device)
    u_FD = data.directions / data.directions.norm(dim=1, keepdim=True)
    parents, children = data.parents, data.children
    cos_PM = u_FD[parents] @ w_MD.t()
    p_cos, p_lat = cos_PM.max(dim=1)
    latent_of = dict(zip(parents.tolist(), p_lat.tolist()))
    counts = torch.zeros(3, len(children), dtype=torch.int64)
    for i, c in enumerate(children.tolist()):
        p = int(data.parent_of[c])
        u_p, u_c = u_FD[p], u_FD[c]
        v = u_p - (u_p @ u_c) * u_c
        v = v / v.norm().clamp_min(1e-12)
        carries_M = (w_MD @ v) >= tau
        carries_M[latent_of[p]] = False
        rows = data.active[:, c]
        missed_n = ~on_NM[rows, latent_of[p]]
        absorbed_n = missed_n & (on_NM[rows] & carries_M).any(dim=1)
        counts[:, i] = torch.stack([rows.sum(), missed_n.sum(), absorbed_n.sum()])
    return AbsorptionResult(
        parent_latent=p_lat,
        parent_latent_cos=p_cos,
        pair_parent=data.parent_of[children],
        pair_child=children,
        child_active=counts[0],
        parent_missed=counts[1],
        absorbed=counts[2],
        tau=tau,
    )


def _decode(sae: Any, codes: Tensor) -> Tensor:
    if hasattr(sae, "decode"):
        return sae.decode(codes)
    b = getattr(sae, "b_dec", None)
    return codes @ sae.W_dec + (b if b is not None else 0)


@torch.no_grad()
def hierarchy_scores(
    sae: Any, data: Hierarchy, tau: float = 0.3, architecture: str | None = None, seed: int | None = None
) -> HierarchyScores:
    """Scores of `sae` (anything with `.encode(x)` and `.W_dec` [M, D]; `.decode` or b_dec if present)
    on data.X: L0, FVU, parent / child MMCS (helpers.data.toy.feature_recovery) and absorption.
    architecture and seed default to sae.cfg's where it has one."""
    cfg = getattr(sae, "cfg", None)
    arch = architecture or getattr(cfg, "architecture", type(sae).__name__)
    if seed is None:
        seed = int((getattr(cfg, "metadata", None) or {}).get("seed", -1))
    codes = sae.encode(data.X)
    x_hat = _decode(sae, codes).to(data.X.device)
    W_dec = sae.W_dec.detach().float().to(data.X.device)
    rec = feature_recovery(data.directions, W_dec)
    res = absorption(codes, W_dec, data, tau)
    return HierarchyScores(
        architecture=arch,
        seed=seed,
        l0=float(l0_of(codes)),
        fvu=float(fvu_of(data.X, x_hat)),
        parent_mmcs=float(rec[data.parents].mean()),
        child_mmcs=float(rec[data.children].mean()),
        absorption=res.rate,
        parent_miss=res.parent_miss,
    )


@torch.no_grad()
def untrained_twin(sae: Any, seed: int = 0, calibrate_on: Tensor | None = None) -> Any:
    """A freshly initialised SAE of sae's class and config (a helpers.sae.SAE: `type(sae)(cfg)
    .init_weights(generator)`, the generator seeded with TWIN_SEED_OFFSET + seed so that its rows are
    not the first randn rows of a data generator of the same seed). One with an inference threshold
    (`calibrate_threshold`, BatchTopK) gets it from `calibrate_on`, else it fires every positive
    pre-activation."""
    twin = type(sae)(sae.cfg).init_weights(torch.Generator().manual_seed(TWIN_SEED_OFFSET + seed))
    if calibrate_on is not None and hasattr(twin, "calibrate_threshold"):
        twin.calibrate_threshold(list(calibrate_on.split(4096)))
    return twin


def random_decoder_baseline(sae: Any, data: Hierarchy, seed: int = 0, tau: float = 0.3) -> HierarchyScores:
    """`hierarchy_scores` of an untrained SAE of the same architecture and size as `sae` (its codes on
    data.X): `untrained_twin(sae, seed)` for a helpers.sae.SAE; any other object (anything with
    `.encode` and `.W_dec`) is taken to be untrained already. Architecture reads "random <arch>"."""
    twin = untrained_twin(sae, seed, data.X) if hasattr(sae, "init_weights") else sae
    arch = getattr(getattr(sae, "cfg", None), "architecture", type(sae).__name__)
    return hierarchy_scores(twin, data, tau, architecture=f"random {arch}", seed=seed)
