"""SAEs on one layer's hook points (resid_pre, attn_out, mlp_out, the MLP hidden activation), side by side.

What: `hook_point_row` measures one SAE on the held-out shard of its own store: FVU, L0, dead share (no
firing on the held-out tokens), and position features (helpers.analysis.position_features on one
streaming pass); `residual_overlap` asks how many latents of an SAE on attn_out or mlp_out have a
resid_pre latent at decoder cosine > 0.7 (attn_out and mlp_out are written INTO the residual stream,
so their directions live in the same space as resid_pre's), beside the same count against a
Haar-random rotation of the resid_pre decoder (the null: what cos > 0.7 gives by chance at this width).
The MLP hidden activation (width d_mlp) lives in another space: no overlap is computed for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers import paths
from helpers.analysis.evaluate import reconstruction_eval
from helpers.analysis.position_features import position_features
from helpers.analysis.positions import position_pass
from helpers.analysis.similarity import SHARED_COS, rotate_rows, topk_cosine
from helpers.data.collect_hooks import collect_hooks
from helpers.data.store import ActivationStore
from helpers.model.models import get_spec, load_model
from helpers.training import across_runs, experiments
from helpers.training.experiments import max_norm

RESIDUAL_WRITERS = ("hook_attn_out", "hook_mlp_out")  # written into the residual: same space as resid_pre


@dataclass(frozen=True)
class HookPointRow:
    """One SAE of the hook-point table."""

    hook: str
    """The SAELens hook name it reads (blocks.L.hook_mlp_out, ...)."""
    width: int
    """Its input width (d_model, or d_mlp for mlp.hook_post)."""
    fvu: float
    """Held-out FVU (massive tokens and position 0 left out, as for every SAE of this lab)."""
    l0: float
    """Held-out mean active latents per token."""
    dead: float
    """Share of latents that never fire on the held-out tokens."""
    position_features: int
    """Latents whose activation position explains (eta^2 >= 0.5 among positions >= 1, or a sink)."""
    in_resid: float | None = None
    """Share of its latents with a resid_pre latent at decoder cosine > 0.7 (attn_out / mlp_out only)."""
    in_resid_null: float | None = None
    """The same share against a random rotation of the resid_pre decoder."""
    resid_cos: float | None = None
    """Median over its latents of the best decoder cosine with a resid_pre latent."""
    resid_cos_null: float | None = None
    """The same median against the rotated resid_pre decoder."""


def hook_point_row(sae, store, hook: str, layer: int, max_norm: float | None, progress: bool = False):
    """HookPointRow of `sae` (trained on `store`'s `layer`) on the store's held-out shard, without the
    residual overlap (`residual_overlap` adds it)."""
    _, held = store.split(1)
    rec = reconstruction_eval(sae, store, layer, held, exclude_positions=(0,), max_norm=max_norm)
    sequences = ((store.shard_tokens(s), store.shard_acts(s, layer)) for s in held)
    stats = position_pass(sequences, sae, store.seq_len, progress=progress, desc=hook).stats
    n_pos = len(position_features(stats, skip_first=True))
    return HookPointRow(hook, int(store.d_model), rec["fvu"], rec["l0"], rec["dead_fraction"], n_pos)


def residual_overlap(sae, resid_sae, threshold: float = SHARED_COS) -> tuple[float, float, float, float]:
    """(share of `sae`'s decoder rows whose best resid_pre decoder cosine exceeds `threshold`, the same
    share against the resid_pre decoder turned by a Haar-random rotation, the median best cosine, and
    its median against the rotation)."""
    A = sae.W_dec.detach().float()
    B = resid_sae.W_dec.detach().float()
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"decoders of width {A.shape[1]} and {B.shape[1]} live in different spaces; compare only "
            "SAEs on hooks written into the residual stream (attn_out, mlp_out) with resid_pre"
        )
    best = topk_cosine(B, A, 1)[0][:, 0]  # for each row of A, its best row of B
    null = topk_cosine(rotate_rows(B), A, 1)[0][:, 0]
    share, null_share = float((best > threshold).float().mean()), float((null > threshold).float().mean())
    return share, null_share, float(best.median()), float(null.median())


def hook_point_table(rows: list[HookPointRow]) -> pd.DataFrame:
    """The rows as a table, one line per hook point, in the order given."""
    df = pd.DataFrame([r.__dict__ for r in rows]).set_index("hook")
    return df.replace({None: np.nan})


def with_overlap(row: HookPointRow, sae, resid_sae) -> HookPointRow:
    """`row` with `residual_overlap` filled in where the hook writes into the residual stream."""
    if not any(row.hook.endswith(k) for k in RESIDUAL_WRITERS):
        return row
    share, null, cos, cos_null = residual_overlap(sae, resid_sae)
    extra = {"in_resid": share, "in_resid_null": null, "resid_cos": cos, "resid_cos_null": cos_null}
    return HookPointRow(**{**row.__dict__, **extra})


@dataclass
class HookPointSAEs:
    """The main layer's hook-point stores and SAEs (notebook 09): {kind: store}, {kind: SAERun}."""

    stores: dict
    runs: dict
    sae_root: object

    def load(self, kind: str):
        return experiments.load(self.runs[kind], self.sae_root)


def hook_point_saes(profile, model=None, progress: bool = True) -> HookPointSAEs:
    """Collect `profile.hook_kinds` at the main layer (one pass, helpers.data.collect_hooks) and train one
    SAE per kind (helpers.training.across_runs.hook_runs), unless they are on disk."""
    store_root, sae_root = paths.store_root(profile.name), paths.sae_dir(profile.name)
    layer, corpus = profile.main_layer, profile.main_corpus
    dirs = {k: store_root / paths.store_name(corpus, k) for k in profile.hook_kinds}
    if not all((d / "manifest.json").exists() for d in dirs.values()):
        collect_hooks(
            profile, store_root, model or load_model(profile.model), layer, profile.hook_kinds, progress
        )
    stores = {k: ActivationStore(d) for k, d in dirs.items()}
    runs = across_runs.hook_runs(profile, get_spec(profile.model).d_model)
    experiments.trained(list(runs.values()), profile, store_root, sae_root, progress)
    return HookPointSAEs(stores, runs, sae_root)


def hook_point_rows(profile, store, base, hooks: HookPointSAEs, progress: bool = False) -> pd.DataFrame:
    """The hook-point table of the main layer: the base resid_pre SAE on `store`, then every hook SAE on
    its own store, each with `residual_overlap` against the base SAE where it applies."""
    layer = profile.main_layer
    rows = [
        hook_point_row(
            base, store, f"blocks.{layer}.hook_resid_pre", layer, max_norm(store, layer, profile), progress
        )
    ]
    for kind, hstore in hooks.stores.items():
        sae = hooks.load(kind)
        name = f"blocks.{layer}.{kind}"
        row = hook_point_row(sae, hstore, name, layer, max_norm(hstore, layer, profile), progress)
        rows.append(with_overlap(row, sae, base))
    return hook_point_table(rows)


def record_rows(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The table as findings.HookPointFindings.rows: {hook: {column: value}}, NaN cells left out."""
    cols = (
        "fvu",
        "l0",
        "dead",
        "position_features",
        "in_resid",
        "in_resid_null",
        "resid_cos",
        "resid_cos_null",
    )
    return {h: {c: float(r[c]) for c in cols if r[c] == r[c]} for h, r in table.iterrows()}
