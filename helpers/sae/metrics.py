"""Reconstruction and sparsity metrics for SAEs (plain functions of tensors).

What: fvu, explained_variance, l0, cosine, relative_reconstruction_bias, dead_fraction,
dense_fraction, feature_density, and `ReconstructionStats` (the same numbers accumulated over
many batches). Inputs are torch tensors or numpy arrays: x, x_hat [n, d], codes [n, d_sae].
Why: one definition of each number for the trainer's logs, the eval summaries and the notebooks.

FVU divides by the variance about the per-dimension mean over the n rows. Some peers divide by
the variance about zero (sum ||x||^2: SAELens/SAEBench evals before SAELens PR #665, SAELens issue #659),
which flatters an SAE on activations with a large mean (e.g. the residual stream's constant
direction); the two agree only for centred data.
(The language-model CE-loss metrics go below the reconstruction metrics in this file.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from helpers.checks import InputError, check_rows, check_token_ids


def _t(a: Any) -> Tensor:
    t = torch.as_tensor(a).detach()
    return t if t.is_floating_point() else t.float()


def _pair(x: Any, x_hat: Any) -> tuple[Tensor, Tensor]:
    x, x_hat = _t(x), _t(x_hat)
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(f"x and x_hat must both be [n, d]; got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    check_rows(x, "x")
    return x, x_hat.to(x.dtype)


# ---------------------------------------------------------------------------- reconstruction
def fvu(x: Any, x_hat: Any) -> Tensor:
    """Fraction of variance unexplained: sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean_i(x)||^2.

    The mean is over the n rows, per dimension (not variance about zero; see the module docstring).
    """
    x, x_hat = _pair(x, x_hat)
    total = (x.double() - x.double().mean(0)).pow(2).sum()
    if not total > 0:
        raise InputError(
            f"x has zero variance over its {x.shape[0]} rows (every row equal), so FVU "
            f"is undefined (0/0 or x/0); evaluate on at least two different rows"
        )
    return (x - x_hat).double().pow(2).sum() / total


def explained_variance(x: Any, x_hat: Any) -> Tensor:
    """1 - FVU."""
    return 1 - fvu(x, x_hat)


def l0(codes: Any) -> Tensor:
    """Mean number of nonzero codes per row: (1/n) sum_i #{j : c_ij != 0}."""
    c = _t(codes)
    return (c != 0).sum(-1).double().mean()


def cosine(x: Any, x_hat: Any, eps: float = 1e-12) -> Tensor:
    """Mean over rows of cos(x_i, x_hat_i) = x_i . x_hat_i / (||x_i|| ||x_hat_i||)."""
    x, x_hat = _pair(x, x_hat)
    num = (x * x_hat).sum(-1)
    return (num / (x.norm(dim=-1) * x_hat.norm(dim=-1)).clamp_min(eps)).double().mean()


def relative_reconstruction_bias(x: Any, x_hat: Any) -> Tensor:
    """gamma = E||x_hat||^2 / E[x_hat . x]  (Rajamanoharan et al. 2024, Gated SAEs, Sec. 5.1).

    gamma is the inverse of argmin_g E||g x_hat - x||^2 = E[x_hat . x] / E||x_hat||^2, i.e. the
    paper's gamma = argmin_g E||x_hat / g - x||^2. gamma < 1 means the SAE shrinks its reconstructions.
    """
    x, x_hat = _pair(x, x_hat)
    return x_hat.double().pow(2).sum() / (x_hat.double() * x.double()).sum()


# ---------------------------------------------------------------------------- firing statistics
def firing_counts(codes: Any) -> Tensor:
    """[d_sae] int64: number of rows on which each latent is nonzero."""
    return (_t(codes) != 0).sum(0)


def dead_fraction(counts: Any) -> float:
    """Fraction of latents with zero firings: mean_j 1[count_j == 0] (counts from one window)."""
    c = torch.as_tensor(counts)
    return float((c == 0).double().mean())


def dense_fraction(counts: Any, n_tokens: int, density: float = 0.1) -> float:
    """Fraction of latents firing on more than `density` of the n_tokens: mean_j 1[count_j / n > density]."""
    c = torch.as_tensor(counts).double()
    return float((c / n_tokens > density).double().mean())


def feature_density(
    codes_or_counts: Any,
    n_tokens: int | None = None,
    bins: int = 50,
    log10_range: tuple[float, float] = (-8.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-latent firing density p_j = count_j / n_tokens and a histogram of log10 p_j.

    Pass codes [n, d_sae] (then n_tokens = n) or counts [d_sae] with n_tokens. Dead latents
    (p = 0) are put in the lowest bin. Returns (density [d_sae], hist [bins], edges [bins + 1]).
    """
    a = torch.as_tensor(codes_or_counts)
    if a.ndim == 2:
        counts, n = firing_counts(a), a.shape[0]
    elif n_tokens is None:
        raise ValueError("feature_density(counts) needs n_tokens; or pass the codes [n, d_sae]")
    else:
        counts, n = a, n_tokens
    dens = counts.double().numpy() / max(n, 1)
    lo, hi = log10_range
    logd = np.log10(np.clip(dens, 10.0**lo, None))
    hist, edges = np.histogram(np.clip(logd, lo, hi), bins=bins, range=(lo, hi))
    return dens, hist, edges


# ---------------------------------------------------------------------------- streaming
class ReconstructionStats:
    """fvu / explained_variance / l0 / cosine / relative_reconstruction_bias over many batches.

    FVU uses the mean over all rows seen: sum||x - mu||^2 = sum||x||^2 - n ||mu||^2 (float64 sums).
    This is the project's one FVU (`fvu` above is the same formula on one tensor); a few massive
    tokens can carry most of sum||x - mu||^2, so callers say which tokens they fed (see
    helpers.data.massive). `median_relative_error` = median over tokens of ||x - x_hat|| / ||x||: the
    typical token's fidelity, which no outlier can move.
    """

    def __init__(self) -> None:
        self.rel_err: list[Tensor] = []  # per-token ||x - x_hat|| / ||x||, for the median
        self.n = 0
        self.sse = self.sum_sq = self.xhat_sq = self.xhat_x = self.cos = self.nnz = 0.0
        self.sum_x: Tensor | None = None
        self.counts: Tensor | None = None

    @torch.no_grad()
    def update(self, x: Any, x_hat: Any, codes: Any | None = None) -> None:
        x, x_hat = _pair(x, x_hat)
        xd, hd = x.double(), x_hat.double()
        self.n += x.shape[0]
        err2 = (xd - hd).pow(2).sum(-1)  # [n] per-token squared error, used twice below
        self.sse += float(err2.sum())
        self.sum_sq += float(xd.pow(2).sum())
        s = xd.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.xhat_sq += float(hd.pow(2).sum())
        self.xhat_x += float((hd * xd).sum())
        self.cos += float(cosine(x, x_hat)) * x.shape[0]
        self.rel_err.append((err2.sqrt() / xd.norm(dim=-1).clamp_min(1e-12)).float())
        if codes is not None:
            c = firing_counts(codes)
            self.counts = c if self.counts is None else self.counts + c
            self.nnz += float(c.sum())

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("ReconstructionStats.result() before any update(); feed at least one batch")
        var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        if not var > 0:
            raise InputError(
                f"the {self.n} rows fed to ReconstructionStats have zero variance (every "
                f"row equal), so FVU is undefined; evaluate on at least two different rows"
            )
        out = {
            "n_tokens": self.n,
            "fvu": self.sse / var,
            "explained_variance": 1 - self.sse / var,
            "mse": self.sse / self.n,
            "cosine": self.cos / self.n,
            "median_relative_error": float(torch.cat(self.rel_err).median()),
            "relative_reconstruction_bias": self.xhat_sq / self.xhat_x if self.xhat_x else float("nan"),
        }
        if self.counts is not None:
            out |= {
                "l0": self.nnz / self.n,
                "dead_fraction": dead_fraction(self.counts),
                "dense_fraction": dense_fraction(self.counts, self.n),
            }
        return out


# ---------------------------------------------------------------------------- downstream (CE)
def token_ce(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Next-token cross-entropy per predicting position, [B, T-1] (nats):
    ce[b, t] = -log softmax(logits[b, t])[input_ids[b, t+1]]."""
    input_ids = check_token_ids(input_ids, logits.shape[-1], "input_ids", "these logits")
    if input_ids.ndim != 2 or tuple(logits.shape[:2]) != tuple(input_ids.shape):
        raise InputError(
            f"logits {tuple(logits.shape)} must be [B, T, vocab] for input_ids "
            f"{tuple(input_ids.shape)} [B, T]; pass the logits of these very ids"
        )
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def token_kl(logits_ref: Tensor, logits: Tensor) -> Tensor:
    """KL(p_ref || p) per position, [B, T] (nats): sum_v p_ref(v) (log p_ref(v) - log p(v))."""
    lp_ref = torch.log_softmax(logits_ref.float(), dim=-1)
    lp = torch.log_softmax(logits.float(), dim=-1)
    return (lp_ref.exp() * (lp_ref - lp)).sum(-1)[:, :-1]


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    """CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean): 1 when splicing the SAE's
    reconstruction costs nothing, 0 when it is as bad as zero-ablating the residual."""
    denom = ce_zero - ce_clean
    if abs(denom) < 1e-12:
        raise ValueError(
            "CE_zero equals CE_clean: zero-ablating this layer changes nothing, so "
            "CE recovered is undefined; evaluate at another layer"
        )
    return (ce_zero - ce_sae) / denom
