"""Token-position statistics of SAE latent activations in ONE streaming pass.

Part 1 of the reference post: mean / std / density of NONZERO activations per token position and
per feature, per-feature deciles with and without the first (BOS, attention-sink) position, and
per-position reconstruction error (*position features*, latents whose activation position alone
predicts, are scored from the same statistics in helpers.analysis.position_features). No [tokens, latents]
matrix is ever built; `PositionStats` keeps only
    pl_sum [T, d_sae] f64, pl_nnz [T, d_sae] i32     per (position, latent) sum / nonzero count
    tokens [T] i64, pos_sumsq [T] f64                tokens and sum of squared nonzeros per position
    sumsq_first, sumsq_rest [d_sae] f64              per-latent sum of squares at p = 0 / p >= 1
    hist_first, hist_rest [d_sae, n_bins + 2] i32    log-spaced histograms of nonzero activations
i.e. 12 * T * d_sae + 8 * d_sae * (n_bins + 2) bytes (1024 x 24576, 256 bins: 302 + 51 MB).
Every other statistic is a sum of these (exact up to float64 rounding) except the quantiles,
which are interpolated in the histograms (error bound in `feature_quantiles`).
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from helpers.checks import InputError

DECILES = tuple(np.round(np.linspace(0.1, 1.0, 10), 2))  # the post's levels: 0.1 .. 1.0 (max)


def _to_tokens(x, positions, n_positions: int, event_dims: int):
    """-> (x [n, *event] tensor, positions [n] long). Without `positions`, x is [n_seq, T, *event]
    and a token's position is its column."""
    x = torch.as_tensor(x)
    if positions is None:
        if x.dim() != 2 + event_dims:
            raise ValueError(
                f"expected [n_seq, T{', d' * event_dims}] without positions, got "
                f"{tuple(x.shape)}; pass positions= for flat [n{', d' * event_dims}]"
            )
        n_seq, T = x.shape[:2]
        positions = torch.arange(T).repeat(n_seq)
        x = x.reshape(n_seq * T, *x.shape[2:])
    positions = torch.as_tensor(positions).reshape(-1).long()
    if x.dim() != 1 + event_dims or x.shape[0] != positions.shape[0]:
        raise ValueError(
            f"x {tuple(x.shape)} and positions {tuple(positions.shape)} disagree; give one position per token"
        )
    if positions.numel() and (positions.min() < 0 or positions.max() >= n_positions):
        raise ValueError(f"positions must lie in [0, {n_positions}); raise n_positions")
    return x, positions


@dataclass
class PositionStatsResult:
    """Raw sums from `PositionStats` (numpy); derived statistics are properties / functions."""

    tokens: np.ndarray  # [T] int64 tokens seen per position
    pl_sum: np.ndarray  # [T, d_sae] float64 sum of activations per (position, latent)
    pl_nnz: np.ndarray  # [T, d_sae] int32 nonzero count per (position, latent)
    pos_sumsq: np.ndarray  # [T] float64 sum of squared nonzero activations per position
    sumsq_first: np.ndarray  # [d_sae] float64 per-latent sum of squares at position 0
    sumsq_rest: np.ndarray  # [d_sae] float64 ... at positions >= 1
    hist_first: np.ndarray  # [d_sae, n_bins + 2] int32 histogram at position 0 (0 = underflow)
    hist_rest: np.ndarray  # [d_sae, n_bins + 2] int32 ... at positions >= 1 (-1 = overflow)
    bin_edges: np.ndarray  # [n_bins + 1] float64 log-spaced edges lo .. hi
    n_negative: int = 0  # negative nonzeros seen (counted in sums, histogram underflow bin)

    @property
    def n_positions(self) -> int:
        return self.pl_sum.shape[0]

    @property
    def d_sae(self) -> int:
        return self.pl_sum.shape[1]

    @property
    def pos_nnz(self) -> np.ndarray:  # [T]
        return self.pl_nnz.sum(1, dtype=np.int64)

    @property
    def pos_mean(self) -> np.ndarray:
        """[T] mean of nonzero activations over all latents at p: sum_j S_pj / sum_j c_pj."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.pl_sum.sum(1) / self.pos_nnz

    @property
    def pos_std(self) -> np.ndarray:
        """[T] population std of nonzero activations at p: sqrt(Q_p / c_p - mean_p^2)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.maximum(self.pos_sumsq / self.pos_nnz - self.pos_mean**2, 0.0))

    @property
    def pos_density(self) -> np.ndarray:
        """[T] fraction of (token, latent) pairs that are nonzero: c_p / (n_p * d_sae)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.pos_nnz / (self.tokens * float(self.d_sae))

    def feature_stats(self, include_first: bool = True) -> pd.DataFrame:
        """Per latent over nonzero activations: nnz, mean = S/c, std = sqrt(Q/c - mean^2),
        density = c / tokens; positions >= 1 only when include_first=False. NaN if c = 0."""
        sl = slice(0, None) if include_first else slice(1, None)
        s, c = self.pl_sum[sl].sum(0), self.pl_nnz[sl].sum(0, dtype=np.int64)
        q = self.sumsq_rest + (self.sumsq_first if include_first else 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s / c
            std = np.sqrt(np.maximum(q / c - mean**2, 0.0))
        return pd.DataFrame(
            {"nnz": c, "mean": mean, "std": std, "density": c / max(int(self.tokens[sl].sum()), 1)}
        )

    def save(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **asdict(self))

    @classmethod
    def load(cls, path) -> PositionStatsResult:
        path = Path(path)
        fix = "re-run notebook 03 (it writes data/positions/<profile>/L<layer>.npz)"
        if not path.is_file():
            raise InputError(f"position statistics {path} not found; {fix}")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [f.name for f in fields(cls) if f.name not in z.files]
                if missing:
                    raise InputError(f"position statistics {path} lacks {missing}; {fix}")
                kw = {f.name: z[f.name] for f in fields(cls)}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(
                f"position statistics {path} is not a readable .npz ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:100] if str(err) else ''}); {fix}"
            ) from None
        kw["n_negative"] = int(kw["n_negative"])
        return cls(**kw)


class PositionStats:
    """Streaming accumulator; `update` (dense codes) / `update_sparse` (top-k form), `result()`.

    codes [n_seq, T, d_sae] (position = column) or [n, d_sae] with positions [n]. Chunks may split
    sequences and come in any order. Histogram: n_bins log-spaced bins on [lo, hi) plus an
    underflow and an overflow bin; bin ratio r = (hi / lo) ** (1 / n_bins). Counts are int32:
    fewer than 2**31 firings per latent. Speed: torch CPU ops on a busy 2-core box ran ~25x
    faster with torch.set_num_threads(1) than with 2 (see benchmarks/bench_positions_memory.py).
    """

    def __init__(
        self, n_positions: int, d_sae: int, n_bins: int = 256, lo: float = 1e-4, hi: float = 1e4, device="cpu"
    ):
        if not (0 < lo < hi) or n_bins < 1:
            raise ValueError("need 0 < lo < hi and n_bins >= 1 for the log-spaced histogram")
        self.T, self.d, self.n_bins, dev = int(n_positions), int(d_sae), int(n_bins), device
        self.log_lo, self.log_hi = float(np.log(lo)), float(np.log(hi))
        f64, i32 = dict(dtype=torch.float64, device=dev), dict(dtype=torch.int32, device=dev)
        self.tokens = torch.zeros(self.T, dtype=torch.int64, device=dev)
        self.pl_sum = torch.zeros(self.T, self.d, **f64)
        self.pl_nnz = torch.zeros(self.T, self.d, **i32)
        self.pos_sumsq = torch.zeros(self.T, **f64)
        self.sumsq = torch.zeros(2, self.d, **f64)  # [first, rest]
        self.hist = torch.zeros(2, self.d, self.n_bins + 2, **i32)  # [first, rest]
        self.n_negative = 0

    @property
    def nbytes(self) -> int:
        """Size of the accumulator state in bytes."""
        ts = (self.tokens, self.pl_sum, self.pl_nnz, self.pos_sumsq, self.sumsq, self.hist)
        return sum(t.numel() * t.element_size() for t in ts)

    def update(self, codes, positions=None) -> None:
        """Add dense codes [n_seq, T, d_sae] or [n, d_sae] (+ positions [n]); zeros are skipped."""
        codes, pos = _to_tokens(codes, positions, self.T, 1)
        if codes.shape[1] != self.d:
            raise ValueError(f"codes have {codes.shape[1]} latents, accumulator has d_sae={self.d}")
        codes, pos = codes.to(self.tokens.device), pos.to(self.tokens.device)
        rows, lat = codes.nonzero(as_tuple=True)
        self._add(pos, pos[rows], lat, codes[rows, lat])

    def update_sparse(self, values, indices, positions=None) -> None:
        """Add top-k codes: values/indices [n_seq, T, k] or [n, k] (+ positions [n]); zero values
        (e.g. TopK followed by ReLU) are skipped; indices must be distinct within a token."""
        values, pos = _to_tokens(values, positions, self.T, 1)
        indices = torch.as_tensor(indices).reshape(values.shape).long()
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.d):
            raise ValueError(f"indices must lie in [0, {self.d}); check d_sae of the SAE")
        dev = self.tokens.device
        values, indices, pos = values.to(dev), indices.to(dev), pos.to(dev)
        tok_pos = pos[:, None].expand_as(values)
        keep = values != 0
        if bool(keep.all()):  # TopK without ReLU zeros
            self._add(pos, tok_pos.reshape(-1), indices.reshape(-1), values.reshape(-1))
        else:
            self._add(pos, tok_pos[keep], indices[keep], values[keep])

    def _add(self, token_pos, p, j, v) -> None:
        """token_pos [n] every token's position; p, j, v [m] position, latent, value per nonzero."""
        self.tokens += torch.bincount(token_pos, minlength=self.T)
        one = torch.ones(p.shape, dtype=torch.int32, device=p.device)
        vf = v.float()
        v = v.double()
        sq = v * v
        flat = p * self.d + j
        self.pl_sum.view(-1).scatter_add_(0, flat, v)
        self.pl_nnz.view(-1).scatter_add_(0, flat, one)
        self.pos_sumsq.scatter_add_(0, p, sq)
        flat = j + self.d * (p > 0).long()  # [first | rest] x latent
        self.sumsq.view(-1).scatter_add_(0, flat, sq)
        inv_w = self.n_bins / (self.log_hi - self.log_lo)  # bins from a float32 log
        b = (torch.log(vf.clamp_min(float(np.exp(self.log_lo)) / 2)) - self.log_lo) * inv_w
        b = (b.floor_().long() + 1).clamp_(0, self.n_bins + 1)
        self.hist.view(-1).scatter_add_(0, flat * (self.n_bins + 2) + b, one)
        self.n_negative += int((vf < 0).sum())

    def result(self, copy: bool = True) -> PositionStatsResult:
        """Numpy snapshot; copy=False shares memory with the state (later updates show through)."""
        edges = np.exp(np.linspace(self.log_lo, self.log_hi, self.n_bins + 1))
        a = {
            k: (t.cpu().numpy().copy() if copy else t.cpu().numpy())
            for k, t in (
                ("tokens", self.tokens),
                ("pl_sum", self.pl_sum),
                ("pl_nnz", self.pl_nnz),
                ("pos_sumsq", self.pos_sumsq),
                ("sumsq", self.sumsq),
                ("hist", self.hist),
            )
        }
        return PositionStatsResult(
            tokens=a["tokens"],
            pl_sum=a["pl_sum"],
            pl_nnz=a["pl_nnz"],
            pos_sumsq=a["pos_sumsq"],
            sumsq_first=a["sumsq"][0],
            sumsq_rest=a["sumsq"][1],
            hist_first=a["hist"][0],
            hist_rest=a["hist"][1],
            bin_edges=edges,
            n_negative=self.n_negative,
        )


# ----------------------------------------------------------------------------- derived, pure
def smooth(y, window: int = 10) -> np.ndarray:
    """Centred moving average, same length as y; near the edges the mean of the points that exist
    (window w covers i - (w-1)//2 .. i + w//2). NaNs are ignored."""
    y = np.asarray(y, dtype=np.float64)
    if window < 1:
        raise ValueError("window must be >= 1")
    ok = np.isfinite(y)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(y))
    a, b = np.clip(i - (window - 1) // 2, 0, len(y)), np.clip(i + window // 2 + 1, 0, len(y))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (cs[b] - cs[a]) / (cn[b] - cn[a])


def position_curve(
    result: PositionStatsResult, stat: str = "mean", skip_first: bool = False, window: int | None = None
):
    """-> (positions, values) of pos_mean / pos_std / pos_density, optionally without position 0
    and smoothed (`smooth`, after dropping position 0 so the sink does not leak into it)."""
    curves = {"mean": "pos_mean", "std": "pos_std", "density": "pos_density"}
    if stat not in curves:
        raise ValueError(f"unknown stat {stat!r}; choose one of {sorted(curves)}")
    y, x = getattr(result, curves[stat]), np.arange(result.n_positions)
    if skip_first:
        x, y = x[1:], y[1:]
    return x, (smooth(y, window) if window else y)


def feature_quantiles(result: PositionStatsResult, qs=DECILES, include_first: bool = True):
    """[d_sae, len(qs)] quantiles of each latent's nonzero activations from the histograms.

    Target rank t = q * N; inside the bin holding rank t, log-linear interpolation between its
    edges. The true quantile sits in the same bin (up to one order statistic of rank convention),
    so |log(est / true)| <= log r, r = (hi / lo) ** (1 / n_bins) (256 bins on 1e-4..1e4: r = 1.075,
    i.e. <= 7.5 % relative error). Values below lo / above hi are reported as lo / hi. NaN if N = 0.
    """
    h = result.hist_rest.astype(np.int64) + (result.hist_first if include_first else 0)
    cum = torch.from_numpy(np.cumsum(h, 1))  # [d, B]
    n = cum[:, -1:].double()
    t = n * torch.as_tensor(np.asarray(qs, dtype=np.float64))[None]  # [d, Q]
    b = torch.searchsorted(cum, t.clamp_min(1e-9)).clamp_(max=h.shape[1] - 1)
    prev = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(b)).double()
    cnt = torch.from_numpy(h).gather(1, b).double()
    frac = ((t - prev) / cnt.clamp_min(1)).clamp_(0, 1).numpy()
    le = np.log(result.bin_edges)
    lo_e = np.concatenate([[le[0]], le[:-1], [le[-1]]])  # [B] per-bin lower edge
    hi_e = np.concatenate([[le[0]], le[1:], [le[-1]]])
    b = b.numpy()
    out = np.exp(lo_e[b] + frac * (hi_e[b] - lo_e[b]))
    out[n.numpy()[:, 0] == 0] = np.nan
    return out


def feature_median(result: PositionStatsResult, include_first: bool = False) -> np.ndarray:
    """[d_sae] median of each latent's nonzero activations (histogram estimate, see above)."""
    return feature_quantiles(result, (0.5,), include_first)[:, 0]


def counts_below(values, thresholds) -> np.ndarray:
    """[len(thresholds)] number of finite values strictly below each threshold (the post's
    'count of features with mean / median < x' curves)."""
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    return np.searchsorted(v, np.atleast_1d(thresholds), side="left")


def feature_mean_kde(result: PositionStatsResult, include_first: bool = False, n_grid: int = 200):
    """-> (x, density): Gaussian KDE of log10(per-feature mean) (Scott bandwidth) on a grid;
    density is per unit of log10, x is in activation units (plot with a log x axis)."""
    from scipy.stats import gaussian_kde

    m = result.feature_stats(include_first)["mean"].to_numpy()
    lm = np.log10(m[np.isfinite(m) & (m > 0)])
    if lm.size < 2 or np.ptp(lm) == 0:
        raise ValueError("need >= 2 distinct positive feature means for a KDE; feed more tokens")
    g = np.linspace(lm.min() - 0.5, lm.max() + 0.5, n_grid)
    return 10**g, gaussian_kde(lm)(g)


# ----------------------------------------------------------------------------- layer comparison
def layer_first_vs_rest(results: dict) -> pd.DataFrame:
    """Tidy table per layer: mean / density of nonzero activations at position 0 vs positions >= 1
    (pooled: sum S / sum c), and their ratio."""
    rows = []
    for layer, r in results.items():
        s, c = r.pl_sum.sum(1), r.pos_nnz
        cap = r.tokens * float(r.d_sae)
        with np.errstate(invalid="ignore", divide="ignore"):
            first, rest = s[0] / c[0], s[1:].sum() / c[1:].sum()
            rows.append(
                dict(
                    layer=layer,
                    first_mean=first,
                    rest_mean=rest,
                    ratio=first / rest,
                    first_density=c[0] / cap[0],
                    rest_density=c[1:].sum() / cap[1:].sum(),
                )
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- per-position error
class PositionMean:
    """Per-position mean of a per-token scalar (CE, squared error, ...):
    update(values [n_seq, T] or [n] + positions [n]); result() -> [T] float64 (NaN: no tokens)."""

    def __init__(self, n_positions: int):
        self.T = int(n_positions)
        self.sum = torch.zeros(self.T, dtype=torch.float64)
        self.count = torch.zeros(self.T, dtype=torch.int64)

    def update(self, values, positions=None) -> None:
        v, pos = _to_tokens(values, positions, self.T, 0)
        self.sum.scatter_add_(0, pos, v.detach().cpu().double())
        self.count += torch.bincount(pos, minlength=self.T)

    def result(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum.numpy() / self.count.numpy()


@dataclass
class PositionMSEResult:
    mse: np.ndarray  # [T] mean over tokens at p of mean_d (x - x_hat)^2 (the post's F9)
    rel_mse: np.ndarray  # [T] sum ||x - x_hat||^2 / sum ||x||^2 over tokens at p
    tokens: np.ndarray  # [T] int64


class PositionMSE:
    """Per-position reconstruction error: update(x, x_hat[, positions]) with x, x_hat [n_seq, T, d]
    or [n, d] + positions [n]; result() -> PositionMSEResult."""

    def __init__(self, n_positions: int):
        self.err, self.norm = PositionMean(n_positions), PositionMean(n_positions)
        self.d = None

    def update(self, x, x_hat, positions=None) -> None:
        x, x_hat = torch.as_tensor(x).double(), torch.as_tensor(x_hat).double()
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must match")
        self.d = x.shape[-1]
        self.err.update(((x - x_hat) ** 2).sum(-1), positions)
        self.norm.update((x**2).sum(-1), positions)

    def result(self) -> PositionMSEResult:
        if self.d is None:
            raise ValueError("no tokens accumulated; call PositionMSE.update first")
        e, nrm = self.err.result(), self.norm.result()
        with np.errstate(invalid="ignore", divide="ignore"):
            return PositionMSEResult(e / self.d, e / nrm, self.err.count.numpy().copy())


class PositionPass(NamedTuple):
    """What `position_pass` returns: the statistics of every token, the per-position error, and
    (with max_norm) the statistics of the typical tokens only, massive ones left out."""

    stats: PositionStatsResult
    mse: PositionMSEResult
    typical: PositionStatsResult | None = None


@torch.no_grad()
def position_pass(
    sequences,
    sae,
    n_positions: int,
    chunk_seqs: int = 8,
    progress: bool = True,
    desc: str = "positions",
    max_norm: float | None = None,
) -> PositionPass:
    """One streaming pass: encode every sequence with `sae`, accumulate position statistics and error.

    `sequences`: iterable of (tokens [n, T], acts [n, T, d]) chunks, e.g. `store.sequences(layer)`
    (position = column), encoded `chunk_seqs` sequences at a time. With `max_norm` (helpers.data.massive)
    a second accumulator keeps only the tokens whose residual norm is <= max_norm, from the same codes:
    a massive token (std ~100x the rest) otherwise sets its position's statistics. A TopK SAE's codes
    stay sparse (`encode_sparse`, `decode_sparse`): an offline layer took 11.6 s, 24 s dense (Zen 4)."""
    from tqdm.auto import tqdm

    stats, mse = PositionStats(n_positions, sae.W_dec.shape[0]), PositionMSE(n_positions)
    typical = None if max_norm is None else PositionStats(n_positions, sae.W_dec.shape[0])
    sparse = hasattr(sae, "encode_sparse")  # TopK: (values, indices) [n, T, k], no dense codes
    for _, acts in tqdm(sequences, desc=desc, unit="shard", disable=not progress):
        for i in range(0, len(acts), chunk_seqs):
            x = torch.as_tensor(acts[i : i + chunk_seqs])
            if sparse:
                v, j = (t.view(*x.shape[:2], -1) for t in sae.encode_sparse(x))
                stats.update_sparse(v, j)
                x_hat = sae.decode_sparse(v.flatten(0, 1), j.flatten(0, 1)).view(x.shape)
            else:
                stats.update(codes := sae.encode(x))
                x_hat = sae.decode(codes)
            mse.update(x, x_hat)
            if typical is not None:
                keep = x.float().norm(dim=-1) <= max_norm  # [n, T]
                pos = torch.arange(x.shape[1]).expand_as(keep)[keep]
                if sparse:
                    typical.update_sparse(v[keep], j[keep], pos)
                else:
                    typical.update(codes[keep], pos)
    return PositionPass(
        stats.result(copy=False), mse.result(), None if typical is None else typical.result(False)
    )
