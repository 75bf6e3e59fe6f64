"""Position features: latents whose activation is predicted by token position alone (the post's Part 1).

Scored from the streaming statistics of helpers.analysis.positions (no second pass): the
correlation ratio eta^2 of each latent's activation on position (zeros included), and the share of
its firing at the first (sink) position. `position_features` labels latents "position" or "sink".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import xlogy

from helpers.analysis.positions import PositionStatsResult


def _entropy2(p):
    """Binary entropy in nats, elementwise; h(0) = h(1) = 0."""
    return -(xlogy(p, p) + xlogy(1 - p, 1 - p))


def position_feature_scores(
    result: PositionStatsResult, skip_first: bool = False, block: int = 4096
) -> pd.DataFrame:
    """Per latent: how much does position alone predict its activation a (zeros included)?

    With n_p tokens at position p (only the P positions with n_p > 0), N = sum_p n_p,
    S_pj = sum of a_j over tokens at p, S_j = sum_p S_pj, Q_j = sum of a_j^2, c_pj nonzero counts:
        SS_tot = Q_j - S_j^2 / N,        SS_between = sum_p S_pj^2 / n_p - S_j^2 / N
        eta2     = SS_between / SS_tot                          (correlation ratio, in [0, 1])
        eta2_adj = 1 - (SS_within / (N - P)) / (SS_tot / (N - 1)),  SS_within = SS_tot - SS_between
                   (epsilon^2: ~0 for position-independent latents, whose eta2 is ~(P-1)/(N-1))
        fire_u   = I(P; F) / H(F) = 1 - sum_p (n_p / N) h(c_pj / n_p) / h(c_j / N)
                   (uncertainty coefficient of firing F = [a != 0] given position; h binary entropy)
        first_frac = c_0j / c_j,  argmax_pos = argmax_p S_pj / n_p (-1 if it never fires),
        peak_ratio = max_p (S_pj / n_p) / (S_j / N).
    Latents that never fire (or are constant) have SS_tot = 0: eta2, eta2_adj, fire_u are NaN.
    skip_first=True scores positions >= 1 only (position 0 - same BOS / sink token in every
    sequence - otherwise gives any latent that fires there a large between-position variance);
    nnz, density and first_frac always count all positions. Blocks of `block` latents.
    """
    n_all = result.tokens.astype(np.float64)
    ok = n_all > 0
    ok[0] &= not skip_first
    n, pos_ids = n_all[ok][:, None], np.flatnonzero(ok)
    N, P = n.sum(), int(ok.sum())
    if N == 0:
        raise ValueError("no tokens accumulated; call PositionStats.update before scoring")
    q_all = result.sumsq_rest + (0.0 if skip_first else result.sumsq_first)
    cols = {k: [] for k in ("eta2", "eta2_adj", "fire_u", "argmax_pos", "peak_ratio")}
    for j0 in range(0, result.d_sae, block):
        S, c = result.pl_sum[ok, j0 : j0 + block], result.pl_nnz[ok, j0 : j0 + block]
        sj, cj, q = S.sum(0), c.sum(0, dtype=np.int64), q_all[j0 : j0 + block]
        with np.errstate(invalid="ignore", divide="ignore"):
            ss_tot = q - sj**2 / N
            ss_b = (S**2 / n).sum(0) - sj**2 / N
            valid = ss_tot > 1e-12 * np.maximum(q, 1e-300)
            eta2 = np.where(valid, np.clip(ss_b / ss_tot, 0, 1), np.nan)
            adj = 1 - ((ss_tot - ss_b) / (N - P)) / (ss_tot / (N - 1)) if N > P else np.nan
            hf = _entropy2(cj / N)
            hfp = (n / N * _entropy2(c / n)).sum(0)
            mean_p = S / n
            cols["eta2"].append(eta2)
            cols["eta2_adj"].append(np.where(valid, adj, np.nan))
            cols["fire_u"].append(np.where(valid & (hf > 0), 1 - hfp / hf, np.nan))
            cols["argmax_pos"].append(np.where(cj > 0, pos_ids[mean_p.argmax(0)], -1))
            cols["peak_ratio"].append(mean_p.max(0) / (sj / N))
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    nnz = result.pl_nnz.sum(0, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        df.insert(0, "density", nnz / n_all.sum())
        df.insert(0, "nnz", nnz)
        df["first_frac"] = result.pl_nnz[0] / nnz
    df.insert(0, "latent", np.arange(result.d_sae))
    return df


def position_features(
    result: PositionStatsResult,
    eta2_min: float = 0.5,
    min_count: int = 10,
    sink_frac: float = 0.9,
    skip_first: bool = False,
) -> pd.DataFrame:
    """Ranked table (eta2 descending) of position features, column `kind`:
    'sink'     : fires almost only at position 0 (first_frac >= sink_frac),
    'position' : otherwise eta2_adj >= eta2_min (position explains >= half of its variance;
                 skip_first: among positions >= 1, see `position_feature_scores`);
    both need nnz >= min_count firings, so one-off outliers are never flagged."""
    df = position_feature_scores(result, skip_first)
    enough = df["nnz"] >= min_count
    sink = enough & (df["first_frac"] >= sink_frac)
    pos = enough & (df["eta2_adj"] >= eta2_min)
    out = df[sink | pos].assign(kind=np.where(sink, "sink", "position")[sink | pos])
    return out.sort_values("eta2", ascending=False, na_position="last").reset_index(drop=True)


def position_profile(result: PositionStatsResult, latent: int, nonzero: bool = False):
    """[T] mean activation of `latent` per position: S_pj / n_p (zeros included), or the mean of
    its nonzero activations S_pj / c_pj with nonzero=True. NaN where the denominator is 0."""
    den = result.pl_nnz[:, latent] if nonzero else result.tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        return result.pl_sum[:, latent] / den


def position_features_per_layer(results: dict, **kw) -> pd.DataFrame:
    """Per layer: counts of 'position' and 'sink' features (kwargs go to `position_features`)."""
    rows = []
    for layer, r in results.items():
        kind = position_features(r, **kw)["kind"]
        rows.append(
            dict(
                layer=layer,
                n_position=int((kind == "position").sum()),
                n_sink=int((kind == "sink").sum()),
                n_total=len(kind),
            )
        )
    return pd.DataFrame(rows)
