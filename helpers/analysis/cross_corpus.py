"""Every corpus's SAE on every corpus's held-out tokens: how much does an SAE depend on its training text?

What: `reconstruction_grid(saes, rows)` (train corpus x eval corpus: FVU with and without massive
tokens, median per-token relative error, L0, share of latents silent on the eval tokens),
`cross_corpus_eval(saes, views, ...)` (the same on each corpus's `helpers.analysis.heldout.HeldOut` view,
the lab's one token policy, plus the next-token CE increase when each SAE's reconstruction is spliced
into the model on each corpus's held-out text), `domain_gap(table, metric)` (in-domain against
out-of-domain means) and `cells(table)` (the grid as {"train->eval": {"fvu", "delta_ce", "dead"}}).
Why: the post's comment figure evaluated its SAEs on other corpora (explained variance, L2, CE
difference); an SAE that reconstructs only its own text has learned the text as much as the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from torch import Tensor

from helpers.analysis.evaluate import downstream_eval, sae_stats

if TYPE_CHECKING:
    from helpers.analysis.heldout import HeldOut

BATCH = 4096  # rows per encode
COLUMNS = ("fvu", "fvu_with_massive", "median_relative_error", "l0", "dead_fraction", "delta_ce", "n_tokens")


def reconstruction_grid(
    saes: Mapping[str, object], rows: Mapping[str, tuple[Tensor, Tensor | None]]
) -> pd.DataFrame:
    """One row per (train corpus, eval corpus): `saes` {train corpus: SAE}, `rows` {eval corpus:
    (typical tokens [n, d], all tokens [n', d] or None)}; typical = massive tokens left out.
    dead_fraction is the share of latents that never fire on that corpus's tokens."""
    out = []
    for train, sae in saes.items():
        for corpus, (typical, everything) in rows.items():
            t = sae_stats(sae, typical.split(BATCH))
            a = sae_stats(sae, everything.split(BATCH)) if everything is not None else {"fvu": float("nan")}
            out.append(
                {
                    "train": train,
                    "eval": corpus,
                    "fvu": t["fvu"],
                    "fvu_with_massive": a["fvu"],
                    "median_relative_error": t["median_relative_error"],
                    "l0": t["l0"],
                    "dead_fraction": t["dead_fraction"],
                    "n_tokens": t["n_tokens"],
                }
            )
    return pd.DataFrame(out).set_index(["train", "eval"])


def cross_corpus_eval(
    saes: Mapping[str, object],
    views: Mapping[str, HeldOut],
    views_with_massive: Mapping[str, HeldOut] | None = None,
    model=None,
    n_eval_seq: int = 4,
    progress: bool = False,
) -> pd.DataFrame:
    """`reconstruction_grid` of every SAE on every corpus's held-out view (`views` {eval corpus:
    `HeldOut`}, the lab's one token policy; `views_with_massive`: the same views built with
    massive_ratio=None, for fvu_with_massive), and with `model` the CE increase of each SAE spliced in
    on each corpus's first n_eval_seq held-out sequences (`helpers.analysis.evaluate.downstream_eval`,
    the view's excluded token ids keep their clean residual; one clean pass per corpus for all SAEs)."""
    rows = {
        corpus: (view.x, views_with_massive[corpus].x if views_with_massive is not None else None)
        for corpus, view in views.items()
    }
    table = reconstruction_grid(saes, rows)
    table["delta_ce"] = np.nan
    if model is not None:
        for corpus, view in views.items():
            res = downstream_eval(
                model,
                {train: (sae, view.layer) for train, sae in saes.items()},
                view.sequence_tokens[:n_eval_seq],
                keep_positions=view.exclude_positions,
                keep_tokens=view.exclude_tokens,
                progress=progress,
            )
            for train, r in res.items():
                table.loc[(train, corpus), "delta_ce"] = r.delta_ce
    return table[list(COLUMNS)]


@dataclass(frozen=True)
class DomainGap:
    """Mean of a metric over the diagonal (SAE on its own corpus) and off it."""

    metric: str
    in_domain: float
    out_of_domain: float

    @property
    def ratio(self) -> float:
        return self.out_of_domain / self.in_domain if self.in_domain else float("inf")


def domain_gap(table: pd.DataFrame, metric: str = "fvu") -> DomainGap:
    """In-domain (train == eval) vs out-of-domain means of `metric` in a grid table."""
    train = table.index.get_level_values("train")
    same = train == table.index.get_level_values("eval")
    if not same.any() or same.all():
        raise ValueError(
            "the grid needs both in-domain and out-of-domain cells; pass SAEs of two corpora or more"
        )
    vals = table[metric].to_numpy(dtype=float)
    return DomainGap(metric, float(np.nanmean(vals[same])), float(np.nanmean(vals[~same])))


def cells(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{"<train corpus>-><eval corpus>": {"fvu", "delta_ce", "dead"}} of a grid table, in its row order
    (dead = dead_fraction; the fields of `helpers.report.findings.CorpusCell`)."""
    return {
        f"{a}->{b}": {
            "fvu": float(r["fvu"]),
            "delta_ce": float(r["delta_ce"]),
            "dead": float(r["dead_fraction"]),
        }
        for (a, b), r in table.iterrows()
    }
