"""Notebook 02's evaluation table: every trained SAE on its held-out tokens, and spliced into the model.

What:
- `heldout_views(runs, store_root, massive_ratio)`: one `HeldOut` view per (corpus, layer) the runs
  read (each build is a pass over the store for the massive cut, so the SAEs of one stream share it);
- `reconstruction_table(runs, saes, views, dead)`: per SAE, `HeldOut.reconstruction` on its view
  (FVU, L0, median relative error, cosine, ...), the FVU again with the massive tokens kept, how many
  tokens the cut left out, the trainer's dead fraction and the share of latents silent on the view;
- `final_dead(runs, sae_root)`: the trainer's dead fraction of each SAE (its last window of tokens);
- `downstream(model, runs, saes, views, n_seq)`: `evaluate.downstream_eval` (CE and KL with the
  reconstruction spliced in) on the first n_seq held-out sequences of each corpus;
- `join(recon, downstream)`: the table notebook 02 writes to eval_table.csv; `summary_line(table)`.
Why: one held-out policy for every number (helpers.analysis.heldout), and the loops out of the notebook.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from helpers.analysis.evaluate import DownstreamResult, downstream_eval
from helpers.analysis.heldout import HeldOut
from helpers.data.store import ActivationStore
from helpers.training.experiments import SAERun, sae_path
from helpers.training.run_dir import load_eval_summary

RECON_COLUMNS = (
    "fvu",
    "fvu_with_massive",
    "n_massive",
    "median_relative_error",
    "l0",
    "dead",
    "silent_on_heldout",
    "cosine",
    "relative_reconstruction_bias",
)
TABLE_COLUMNS = ("l0", "fvu", "median_relative_error", "dead")
CE_COLUMNS = ("ce_clean", "ce_sae", "delta_ce", "ce_recovered", "kl")


def heldout_views(
    runs: Sequence[SAERun], store_root: str | Path, massive_ratio: float
) -> dict[tuple[str, int], HeldOut]:
    """{(corpus, layer): the held-out view of that stream} for every stream the runs read."""
    out: dict[tuple[str, int], HeldOut] = {}
    for r in runs:
        if (r.corpus, r.layer) not in out:
            store = ActivationStore(Path(store_root) / r.corpus, verify="none")
            out[(r.corpus, r.layer)] = HeldOut(store, r.layer, massive_ratio=massive_ratio)
    return out


def final_dead(runs: Sequence[SAERun], sae_root: str | Path) -> dict[str, float]:
    """{name: fraction of latents that did not fire in the trainer's last window of training tokens}."""
    return {
        r.name: float(load_eval_summary(sae_path(sae_root, r))["final_step"]["dead_fraction"]) for r in runs
    }


def reconstruction_table(
    runs: Sequence[SAERun],
    saes: Mapping[str, object],
    views: Mapping[tuple[str, int], HeldOut],
    dead: Mapping[str, float],
) -> pd.DataFrame:
    """One row per run (index "name", in run order): `HeldOut.reconstruction` of its SAE on
    views[(corpus, layer)], plus "fvu_with_massive" (the same tokens with the massive ones kept: a view
    with massive_ratio=None, built once per stream), "n_massive" (tokens the cut left out), "dead"
    (`dead[name]`) and "silent_on_heldout" (share of latents that never fire on the view)."""
    by_stream: dict[tuple[str, int], list[SAERun]] = defaultdict(list)
    for r in runs:
        by_stream[(r.corpus, r.layer)].append(r)
    rows = {}
    for key, group in by_stream.items():
        held = views[key]
        everything = HeldOut(held.store, held.layer, massive_ratio=None)
        for r in group:
            typical = held.reconstruction(saes[r.name])
            rows[r.name] = {
                **typical,
                "fvu_with_massive": everything.reconstruction(saes[r.name])["fvu"],
                "n_massive": held.n_massive,
                "dead": dead[r.name],
                "silent_on_heldout": typical["dead_fraction"],
            }
    names = [r.name for r in runs]
    return pd.DataFrame([rows[n] for n in names], index=pd.Index(names, name="name"))


def downstream(
    model,
    runs: Sequence[SAERun],
    saes: Mapping[str, object],
    views: Mapping[tuple[str, int], HeldOut],
    n_seq: int,
    progress: bool = True,
) -> dict[str, DownstreamResult]:
    """{name: `evaluate.downstream_eval` of its SAE spliced in at its layer}, on the first n_seq held-out
    sequences of its corpus (any view of that corpus: the sequences do not depend on the layer); the
    view's excluded positions and token ids keep their clean residual."""
    out: dict[str, DownstreamResult] = {}
    for corpus in dict.fromkeys(r.corpus for r in runs):
        held = next((v for (c, _), v in views.items() if c == corpus), None)
        if held is None:
            raise KeyError(f"no held-out view of corpus {corpus!r}; build views for every run's corpus")
        group = {r.name: (saes[r.name], r.layer) for r in runs if r.corpus == corpus}
        out.update(
            downstream_eval(
                model,
                group,
                held.sequence_tokens[:n_seq],
                keep_positions=held.exclude_positions,
                keep_tokens=held.exclude_tokens,
                progress=progress,
            )
        )
    return out


def join(recon: pd.DataFrame, results: Mapping[str, DownstreamResult]) -> pd.DataFrame:
    """The evaluation table: TABLE_COLUMNS of `recon` beside CE_COLUMNS of each SAE's downstream result
    (rows of `recon` only: an SAE read from a source has CE but no reconstruction row)."""
    ce = pd.DataFrame({name: res.summary() for name, res in results.items()}).T
    return recon[list(TABLE_COLUMNS)].join(ce[list(CE_COLUMNS)])


def summary_line(table: pd.DataFrame) -> str:
    """The table in one sentence: FVU range (which SAEs), median L0, CE recovered and delta CE."""
    return (
        f"Held-out FVU (massive tokens excluded) ranges from {table.fvu.min():.3f} "
        f"({table.fvu.idxmin()}) to {table.fvu.max():.3f} ({table.fvu.idxmax()}); median L0 "
        f"{table.l0.median():.1f}; median CE recovered {table.ce_recovered.median():.3f}, median delta CE "
        f"{table.delta_ce.median():.3f} nats."
    )
