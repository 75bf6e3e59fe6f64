"""What the feature browser shows for one latent: a `FeatureCard`, and `CardSource`, which builds cards.

A card gathers density, the histogram of nonzero activations, the mean activation per position,
best matches in other SAEs, top-activating contexts with per-token activations, the logit lens of
its decoder direction (`logit_lens`) and, optionally, the ablation and steering effects. Cards are
built from plain arrays and callables (`CardSource`); rendering them is helpers.report.browser.

`heldout_card_source` wires a `CardSource` to the lab's one held-out view (helpers.analysis.heldout):
top contexts, density and the typical activation (the steering unit) all come from `HeldOut`, so a
card shows the same numbers as notebook 06. Its pieces: `top_matches` (best decoder cosines in other
SAEs), `mean_activation_by_position` (notebook 03's position statistics), and `describe_latent` (one
line on a picked latent).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from helpers.analysis.contexts import Context, TopActivations, top_contexts
from helpers.analysis.heldout import HeldOut, LatentStats
from helpers.analysis.interventions import feature_effects
from helpers.analysis.positions import PositionStatsResult
from helpers.analysis.similarity import topk_cosine
from helpers.checks import as_tensor
from helpers.model.models import unembedding


# ---------------------------------------------------------------- logit lens
@dataclass
class LogitLens:
    """Top-k tokens promoted / suppressed by a direction: lists of (text, token id, logit)."""

    promoted: list
    suppressed: list


def logit_lens(direction, W_U, tokenizer_decode: Callable, k: int = 10, norm_weight=None) -> LogitLens:
    """logits = (direction * norm_weight) @ W_U  # [vocab]; top-k highest and lowest.

    direction   # [d]  a decoder row W_dec[f]
    W_U         # [d, vocab] or [vocab, d] (HF lm_head.weight layout); must not be square
    norm_weight # [d] optional final-norm gain (RMSNorm's scale only; its 1/rms is a positive scalar)
    tokenizer_decode(ids: list[int]) -> str, e.g. tokenizer.decode.
    """
    v, W = as_tensor(direction, torch.float32), as_tensor(W_U, torch.float32)
    if v.ndim != 1:
        raise ValueError(f"direction must be 1-D [d], got {tuple(v.shape)}; pass W_dec[f]")
    d = v.shape[0]
    if W.ndim != 2 or d not in W.shape:
        raise ValueError(f"W_U {tuple(W.shape)} has no axis of size d={d}; pass [d, vocab] or [vocab, d]")
    if W.shape[0] == W.shape[1]:
        raise ValueError("W_U is square, its layout is ambiguous; pass it as [d, vocab] with vocab != d")
    if W.shape[0] != d:
        W = W.T
    if norm_weight is not None:
        v = v * as_tensor(norm_weight, torch.float32).reshape(d)
    with torch.no_grad():
        logits = v.detach() @ W.detach()  # [vocab]
    k = min(k, logits.numel())
    top, bot = torch.topk(logits, k), torch.topk(-logits, k)

    def pack(ids, vals):
        return [(tokenizer_decode([int(i)]), int(i), float(x)) for i, x in zip(ids, vals)]

    return LogitLens(pack(top.indices, top.values), pack(bot.indices, -bot.values))


# ---------------------------------------------------------------- card
def activation_histogram(values, bins: int = 30, log: bool = True):
    """Histogram of the NONZERO activations: (counts [bins], edges [bins + 1]); log-spaced edges if `log`."""
    v = np.asarray(
        values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
    ).ravel()
    v = v[v > 0]
    if v.size == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    lo, hi = v.min(), v.max()
    hi = hi if hi > lo else lo * 1.001 + 1e-12
    edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    return np.histogram(v, edges)[0].astype(np.int64), edges


@dataclass
class FeatureCard:
    """Everything displayed for one latent of one SAE (arrays are numpy)."""

    sae_name: str
    feature: int
    density: float
    contexts: list[Context] = field(default_factory=list)
    hist_counts: np.ndarray | None = None  # [n_bins]
    hist_edges: np.ndarray | None = None  # [n_bins + 1]
    position_profile: np.ndarray | None = None  # [T] mean activation per position
    matches: list = field(default_factory=list)  # list[(sae name, latent, cosine)]
    logit_lens: LogitLens | None = None
    info: dict = field(default_factory=dict)  # extra header fields, e.g. {"layer": 6}
    effects: object = None  # helpers.analysis.interventions.FeatureEffects: ablation and steering preview

    @property
    def max_activation(self) -> float:
        return max((float(np.nanmax(c.acts)) for c in self.contexts if len(c.acts)), default=0.0)


@dataclass
class CardSource:
    """Builds `FeatureCard`s lazily for one SAE; a provider for `FeatureBrowser` / export.

    tokens / acts: [n_seq, T(, d)] arrays or callables seq_ids -> rows (see helpers.analysis.contexts).
    position_profile: [d_sae, T] (e.g. from helpers.analysis.positions); matches_fn(f) -> [(sae, latent,
    cos)].
    """

    name: str
    W_dec: object  # [d_sae, d]
    top: TopActivations
    tokens: object
    acts: object
    encode_fn: Callable
    tokenizer_decode: Callable | None = None
    W_U: object = None  # [d, vocab] or [vocab, d]
    norm_weight: object = None  # [d]
    position_profile: object = None  # [d_sae, T]
    matches_fn: Callable | None = None
    effects_fn: Callable | None = None  # f -> FeatureEffects (runs the model: ~seconds per card)
    n_contexts: int = 10
    before: int = 10
    after: int = 4
    k_logits: int = 10
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.top.values.shape[0])

    def card(self, f: int, effects: bool = True) -> FeatureCard:
        """The card of latent f; `effects=False` skips the model runs of `effects_fn`."""
        ctx = top_contexts(
            self.top, f, self.tokens, self.acts, self.encode_fn, self.n_contexts, self.before, self.after
        )
        hist = (None, None)
        if self.top.hist_counts is not None:
            hist = (self.top.hist_counts[f].numpy(), self.top.hist_edges.numpy())
        lens = None
        if self.W_U is not None and self.tokenizer_decode is not None:
            lens = logit_lens(self.W_dec[f], self.W_U, self.tokenizer_decode, self.k_logits, self.norm_weight)
        prof = (
            None if self.position_profile is None else np.asarray(self.position_profile[f], dtype=np.float64)
        )
        eff = self.effects_fn(int(f)) if effects and self.effects_fn is not None else None
        return FeatureCard(
            self.name,
            int(f),
            float(self.top.density[f]),
            ctx,
            hist[0],
            hist[1],
            prof,
            list(self.matches_fn(f)) if self.matches_fn else [],
            lens,
            dict(self.info),
            eff,
        )


# ---------------------------------------------------------------- a card source on the held-out view
def top_matches(W_dec_FD, others: Mapping[str, object], k: int = 3) -> Callable[[int], list]:
    """f -> [(SAE name, latent, cosine)]: latent f's k best decoder cosines in each of `others`
    ({name: W_dec [m, d]}), best first within each SAE (`similarity.topk_cosine`, computed once here)."""
    best = {name: topk_cosine(W, W_dec_FD, min(k, len(W))) for name, W in others.items()}
    return lambda f: [
        (name, int(i), float(v)) for name, (vals, idx) in best.items() for v, i in zip(vals[f], idx[f])
    ]


def mean_activation_by_position(stats: PositionStatsResult) -> np.ndarray:
    """[d_sae, T] each latent's mean activation at each position, zeros included: pl_sum / tokens
    (a position no token reached gives 0)."""
    return (stats.pl_sum / np.maximum(stats.tokens[:, None], 1)).T


def describe_latent(f: int, stats: LatentStats, twin_cos, decode: Callable) -> str:
    """One line on latent f: its best cosine in the seed twin, its held-out density and typical activation,
    and the token that holds the largest share of its top activations (the single-token proxy)."""
    token = decode([int(stats.top_token[f])]) if stats.top_token[f] >= 0 else None
    return (
        f"feature {f}: best cosine to the seed twin {float(twin_cos[f]):.2f}, fires on "
        f"{stats.density[f]:.2%} of held-out tokens, typical activation {stats.typical[f]:.3g}; "
        f"its most common top-20 token {token!r} holds {stats.share[f]:.0%} of them"
    )


def heldout_card_source(
    name: str,
    held: HeldOut,
    sae,
    model,
    matches: Mapping[str, object] | None = None,
    position_stats: PositionStatsResult | None = None,
    n_top: int = 20,
    prompt_len: int = 24,
    effects_len: int = 128,
) -> CardSource:
    """The `CardSource` of `sae` on the held-out view `held` (an int layer): its top-n_top held-out
    contexts and density (`held.top_activations`), contexts re-encoded from the store, the logit lens
    through `model`'s unembedding, best matches in `matches` ({name: SAE}), the mean activation by
    position from notebook 03's `position_stats` (skipped, with a warning, when they belong to an SAE of
    another width), and the effects preview: ablation on the held-out sequences where the latent fires
    most and steering of the last held-out sequence's first prompt_len tokens, in units of the latent's
    typical activation (`held.typical`, the same unit as notebook 06)."""
    W_dec = sae.W_dec.detach()
    decode = model.tokenizer.decode
    W_U, norm_w = unembedding(model)
    profile = None
    if position_stats is not None and position_stats.d_sae == W_dec.shape[0]:
        profile = mean_activation_by_position(position_stats)
    elif position_stats is not None:
        warnings.warn(
            f"position statistics cover {position_stats.d_sae} latents, {name} has {W_dec.shape[0]}: "
            "cards show no position profile (notebook 03 ran another SAE at this layer)",
            stacklevel=2,
        )
    tokens_NT = held.sequence_tokens
    typical = held.typical(sae)
    prompt = torch.from_numpy(tokens_NT[-1:, :prompt_len])
    length = min(effects_len, held.store.seq_len)
    effects_fn = lambda f: feature_effects(
        model,
        sae,
        held.layer,
        f,
        tokens_NT,
        held.grid(sae, [f])[..., 0],
        prompt,
        typical[f],
        decode,
        length=length,
    )
    return CardSource(
        name,
        W_dec,
        held.top_activations(sae, n_top),
        held.store.tokens(),
        lambda ids: held.store.acts_for(held.layer, ids),
        sae.encode,
        tokenizer_decode=decode,
        W_U=W_U,
        norm_weight=norm_w,
        position_profile=profile,
        matches_fn=top_matches(W_dec, {k: v.W_dec.detach() for k, v in (matches or {}).items()}),
        effects_fn=effects_fn,
    )
