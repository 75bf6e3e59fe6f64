"""The matching study: which factor of an SAE's training changes its features most (the post's Part 2).

What: the matching variants (decoder, encoder, neuron baselines), feature splitting, the factor
study (pairs of planned SAEs that differ in one factor, `helpers.training.experiments.SAERun`:
`factor_study`, `factor_ranking`, `pair_table`, `chance_level`) and the layer-pair matrix. One pair
compared the post's ways (top-k cosines, one-to-one with its chance level) is
`helpers.analysis.pair_comparison`; the similarity maths (top-k cosine, Hungarian, the null model) is
`helpers.analysis.similarity`: every shared fraction here has its chance level beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.analysis.similarity import (
    NULL_SEED,
    SHARED_COS,
    as_rows,
    hungarian_match,
    neuron_basis,
    rotate_rows,
    topk_cosine,
    topk_pass,
    unit_rows,
)
from helpers.training.experiments import FACTORS, SAERun


# ----------------------------------------------------------------------------- SAE variants
def _check_sae(sae: Any) -> None:
    W_enc, W_dec = sae.W_enc, sae.W_dec
    if tuple(W_enc.shape) != tuple(W_dec.shape)[::-1]:
        raise ValueError(
            f"SAE needs W_enc [d_in, d_sae] and W_dec [d_sae, d_in], got {tuple(W_enc.shape)} and "
            f"{tuple(W_dec.shape)}"
        )


VARIANTS: dict[str, Callable[[Any, Any], tuple[Any, Any]]] = {
    "decoder": lambda a, b: (a.W_dec, b.W_dec),  # latents: rows of W_dec [d_sae, d_in]
    "encoder": lambda a, b: (a.W_enc.T, b.W_enc.T),  # latents: columns of W_enc [d_in, d_sae]
    "neuron": lambda a, b: (neuron_basis(b.W_dec.shape[1]), b.W_dec),  # B's decoder vs model neurons
    "decoder_neuron": lambda a, b: (a.W_dec.T, b.W_dec.T),  # post's "decoder neurons": [d_in, d_sae]
    "encoder_neuron": lambda a, b: (a.W_enc, b.W_enc),  # post's "encoder neurons": [d_in, d_sae]
}


def variant_dictionaries(sae_A: Any, sae_B: Any, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (A, B) dictionaries, one latent per row, that a matching variant compares.

    "decoder": W_dec rows; "encoder": W_enc.T rows; "neuron": identity basis of d_in (A) vs B's
    decoder (chance baseline); "decoder_neuron"/"encoder_neuron": the post's neuron variants (rows
    indexed by model dimension, needs equal d_sae).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    _check_sae(sae_A), _check_sae(sae_B)
    A, B = VARIANTS[variant](sae_A, sae_B)
    return as_rows(A, "A"), as_rows(B, "B")


# ----------------------------------------------------------------------------- feature splitting
@dataclass
class FeatureSplitting:
    """Children (rows of the larger dictionary) assigned to their best parent."""

    best_parent: torch.Tensor  # [n_child] int64, -1 where the best cosine is <= threshold
    best_cos: torch.Tensor  # [n_child] best cosine to any parent
    counts: torch.Tensor  # [n_parent] children whose best parent it is (cosine > threshold)
    examples: dict[int, list[int]]  # parent -> its children, for the parents with most children
    threshold: float

    def parents_by_children(self, most: int = 3) -> list[int]:
        """[most + 1] parents with 0, 1, ..., most - 1 children, then with `most` or more."""
        counts = np.asarray(self.counts.cpu() if isinstance(self.counts, torch.Tensor) else self.counts)
        return [int((counts == n).sum()) for n in range(most)] + [int((counts >= most).sum())]


def feature_splitting(
    parent: Any,
    child: Any,
    threshold: float = SHARED_COS,
    n_examples: int = 10,
    chunk_size: int | None = None,
) -> FeatureSplitting:
    """For each parent latent, the child latents whose best parent it is with cosine > threshold.

    child_j -> argmax_i cos(parent_i, child_j) if that max > threshold; counts = bincount.
    """
    vals, idx = topk_cosine(parent, child, 1, chunk_size)
    best_cos, best = vals[:, 0], idx[:, 0]
    best_parent = torch.where(best_cos > threshold, best, torch.full_like(best, -1))
    kept = best_parent >= 0
    counts = torch.bincount(best_parent[kept], minlength=as_rows(parent, "parent").shape[0])
    top = torch.argsort(counts, descending=True, stable=True)[:n_examples]
    top = top[counts[top] > 0]
    examples = {
        int(p): torch.nonzero(best_parent == p).ravel().tolist() for p in top
    }  # <= n_examples parents
    return FeatureSplitting(best_parent, best_cos, counts, examples, threshold)


# ----------------------------------------------------------------------------- factor study
@dataclass
class PairResult:
    """Matching of two SAEs that differ only in `factor`: B's latents matched into A."""

    factor: str
    name_a: str
    name_b: str
    value_a: Any
    value_b: Any
    variant: str
    threshold: float
    best_cos: np.ndarray  # [n_latents_B] best cosine of each B latent to any A latent
    top1_ratio: float  # fraction of best_cos > threshold (Hungarian: the shared fraction)
    null_ratio: float = float("nan")  # the same against B turned by a random rotation (the chance level)

    def summary(self) -> dict[str, Any]:
        """One table row (no arrays)."""
        row = {key: v for key, v in asdict(self).items() if key != "best_cos"}
        return row | {"mean_best_cos": float(self.best_cos.mean())}


@dataclass
class FactorRank:
    factor: str
    mean_top1_ratio: float
    n_pairs: int
    mean_null_ratio: float = float("nan")  # mean chance level of its pairs (`PairResult.null_ratio`)


def factor_pairs(
    runs: Sequence[SAERun],
    factors: Sequence[str] = FACTORS,
    free: Sequence[str] = (),
    held: Callable[[SAERun], Hashable] | None = None,
) -> list[tuple[str, int, int]]:
    """(factor, i, j) for every unordered pair i < j of runs whose factor values differ in exactly that
    factor.

    `free` factors (e.g. ("seed",) when every SAE has its own initialisation) may differ in any
    pair: a pair then counts for the one other factor it differs in, or for the free factor when
    it differs in nothing else (the seed pair, the noise floor every other factor is read against).
    `held`: a setting outside the factors that a pair must share to count, e.g. the learning rate
    (`lambda r: r.lr(profile)`: the offline profile trains its tied TopK pair at its own lr, so those
    SAEs against the untied ones differ in two things, not in "tied" alone).
    """
    bad = [f for f in [*factors, *free] if f not in FACTORS]
    if bad:
        raise ValueError(f"unknown factors {bad}; valid: {', '.join(FACTORS)}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs must be distinct; {len(names) - len(set(names))} repeat another")
    table = np.array([[repr(getattr(r, f)) for f in FACTORS] for r in runs], dtype=object)
    fixed = np.array([f not in free for f in FACTORS])
    out = []
    for i in range(len(runs)):
        diff = table[i + 1 :] != table[i]  # [n - i - 1, n_factors]
        for j in range(diff.shape[0]):
            d = diff[j]
            if (d & fixed).sum() == 1:
                f = FACTORS[int(np.flatnonzero(d & fixed)[0])]
            elif (d & fixed).sum() == 0 and d.sum() == 1:
                f = FACTORS[int(np.flatnonzero(d)[0])]
            else:
                continue
            if f in factors and (held is None or held(runs[i]) == held(runs[i + 1 + j])):
                out.append((f, i, i + 1 + j))
    return out


def factor_study(
    runs: Sequence[SAERun],
    load: Callable[[SAERun], Any],
    factors: Sequence[str] = FACTORS,
    variant: str = "decoder",
    threshold: float = SHARED_COS,
    method: str = "top1",
    chunk_size: int | None = None,
    free: Sequence[str] = (),
    null: bool = True,
    seed: int = NULL_SEED,
    held: Callable[[SAERun], Hashable] | None = None,
) -> list[PairResult]:
    """Match every pair of SAEs that differ only in one factor (besides the `free` ones, see
    `factor_pairs`); each pair once, each SAE loaded once with `load(run)`.

    For pair (a, b) with a before b in `runs`: method "top1" (the post) - best cosine of each
    latent of b in a; "hungarian" - one-to-one matched cosines. top1_ratio = fraction > threshold.
    With `null`, null_ratio is the same number for b's dictionary turned by one Haar-random rotation
    (`similarity.rotate_rows`; for "hungarian" exactly `similarity.null_shared_fraction`). `held`: a
    setting a pair must share to count (see `factor_pairs`).
    """
    if method not in ("top1", "hungarian"):
        raise ValueError(f"unknown method {method!r}; valid: top1, hungarian")
    pairs = factor_pairs(runs, factors, free, held)
    last_use = {}
    for n, (_, i, j) in enumerate(pairs):
        last_use[i] = last_use[j] = n
    cache: dict[int, Any] = {}
    results = []
    for n, (f, i, j) in enumerate(pairs):
        for e in (i, j):
            if e not in cache:
                cache[e] = load(runs[e])
        A, B = variant_dictionaries(cache[i], cache[j], variant)
        best = _best_cos(A, B, method, chunk_size)
        chance = (
            float((_best_cos(A, rotate_rows(B, seed), method, chunk_size) > threshold).mean())
            if null
            else float("nan")
        )
        ea, eb = runs[i], runs[j]
        results.append(
            PairResult(
                f,
                ea.name,
                eb.name,
                getattr(ea, f),
                getattr(eb, f),
                variant,
                threshold,
                best,
                float((best > threshold).mean()),
                chance,
            )
        )
        for e in (i, j):
            if last_use[e] == n:
                del cache[e]
    return results


def _best_cos(A: torch.Tensor, B: torch.Tensor, method: str, chunk_size: int | None) -> np.ndarray:
    """[n_B] each B row's best cosine in A ("top1") or its one-to-one matched cosine ("hungarian")."""
    if method == "top1":
        return topk_cosine(A, B, 1, chunk_size)[0][:, 0].cpu().numpy()
    return hungarian_match(A, B, chunk_size=chunk_size).similarities.cpu().numpy()


def rank_factors(results: Sequence[PairResult]) -> list[FactorRank]:
    """Factors by mean top-1 ratio over their pairs, ascending (first = changes features most)."""
    by: dict[str, list[PairResult]] = {}
    for res in results:
        by.setdefault(res.factor, []).append(res)
    ranks = [
        FactorRank(
            f,
            float(np.mean([r.top1_ratio for r in rs])),
            len(rs),
            float(np.mean([r.null_ratio for r in rs])),
        )
        for f, rs in by.items()
    ]
    return sorted(ranks, key=lambda r: r.mean_top1_ratio)


def factor_ranking(results: Sequence[PairResult], floor_factor: str = "seed") -> pd.DataFrame:
    """`rank_factors` as a table indexed by factor (most disruptive first): mean_shared (the mean
    fraction of matched latents above the threshold over the factor's pairs), null_shared (its mean
    chance level), n_pairs, and below_<floor_factor>_floor = the `floor_factor` pairs' mean_shared minus
    this one's (> 0: the factor changes features more than a new seed does)."""
    ranks = rank_factors(results)
    table = pd.DataFrame(
        {
            "mean_shared": [r.mean_top1_ratio for r in ranks],
            "null_shared": [r.mean_null_ratio for r in ranks],
            "n_pairs": [r.n_pairs for r in ranks],
        },
        index=pd.Index([r.factor for r in ranks], name="factor"),
    )
    if floor_factor not in table.index:
        raise ValueError(
            f"no {floor_factor!r} pairs in the study; pass free=({floor_factor!r},) to factor_study so that "
            "the noise floor is measured"
        )
    table[f"below_{floor_factor}_floor"] = table.loc[floor_factor, "mean_shared"] - table["mean_shared"]
    return table


def pair_table(results: Sequence[PairResult]) -> pd.DataFrame:
    """One row per matched pair: factor, the two SAEs, the shared fraction at the threshold beside its
    chance level, and the mean matched cosine."""
    return pd.DataFrame(
        [
            {
                "factor": r.factor,
                "name_a": r.name_a,
                "name_b": r.name_b,
                f"shared@{r.threshold:g}": r.top1_ratio,
                f"null_shared@{r.threshold:g}": r.null_ratio,
                "mean_best_cos": float(np.mean(r.best_cos)),
            }
            for r in results
        ]
    )


def chance_level(results: Sequence[PairResult]) -> float:
    """The mean chance level (`PairResult.null_ratio`) over every pair of a study."""
    return float(np.mean([r.null_ratio for r in results]))


# ----------------------------------------------------------------------------- layer pairs
def layer_pair_matrix(
    dictionaries: Sequence[Any],
    threshold: float = SHARED_COS,
    chunk_size: int | None = None,
    rotate_seed: int | None = None,
) -> np.ndarray:
    """M [n, n] (numpy) with M[i, j] = fraction of rows of dictionaries[j] whose best cosine to
    dictionaries[i] is > threshold (decoder top-1 ratio); diagonal 1.

    With `rotate_seed`, the chance level of the same matrix (the lab's null model): in each pair i < j,
    dictionaries[j] is turned by the Haar-random rotation of that seed (`similarity.rotate_rows`)
    before matching, both directions; the diagonal is then NaN.
    Both directions of a pair come from one chunked GEMM pass, so each unordered pair costs one pass.
    """
    hats = [unit_rows(as_rows(D, f"dictionaries[{n}]")) for n, D in enumerate(dictionaries)]
    n = len(hats)
    M = np.eye(n) if rotate_seed is None else np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i + 1, n):
            if hats[i].shape[1] != hats[j].shape[1]:
                raise ValueError(f"dictionaries {i} and {j} differ in d; pass rows of the same space")
            other = hats[j] if rotate_seed is None else rotate_rows(hats[j], rotate_seed)
            vb, _, va = topk_pass(hats[i], other, 1, True, chunk_size)
            M[i, j] = float((vb[:, 0] > threshold).double().mean())
            M[j, i] = float((va > threshold).double().mean())
    return M
