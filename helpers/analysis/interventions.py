"""Using features: steer, clamp and ablate one SAE latent in resid_pre of one layer (nnsight).

Every intervention is a delta added to the residual x, so it changes only what it says:
- steer:  x + coef * W_dec[f] (coef = alpha * the feature's typical activation);
- clamp:  x + (v - c_f(x)) * W_dec[f], which equals decode(codes with c_f := v) + (x - decode(codes)):
          the SAE's reconstruction with one latent changed, plus its error term kept (the decoder is
          linear in the codes for every architecture here, so the two are the same number);
- ablate: clamp with v = 0.
Positions before `from_position` are left alone (default 1: position 0 is the BOS / attention
sink, whose residual no SAE here was trained on). Logits come from one forward pass per batch
(`helpers.model.residuals.logits_with_resid`); generation runs `model.generate` with the same delta
at every step (`tracer.iter`), the step's absolute positions known from the step index.
"""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import numpy as np
import torch
from torch import Tensor

from helpers.model.models import blocks, check_layers, spec_of
from helpers.model.residuals import logits_with_resid, model_input_ids, residuals_and_logits
from helpers.sae.metrics import token_ce, token_kl


# ------------------------------------------------------------------ the three edits
def _position_mask(x: Tensor, start: int, from_position: int) -> Tensor:
    """[1, T, 1] float mask: 1 where the absolute position start + t >= from_position."""
    pos = torch.arange(start, start + x.shape[1], device=x.device)
    return (pos >= from_position).to(x.dtype)[None, :, None]


@dataclass(frozen=True)
class Steer:
    """x + coef * direction at positions >= from_position (direction [d], used as given)."""

    direction: Tensor
    coef: float
    from_position: int = 1

    def delta(self, x: Tensor, start: int = 0) -> Tensor:
        u = self.direction.to(x.dtype).reshape(1, 1, -1)
        return self.coef * u * _position_mask(x, start, self.from_position)


@dataclass(frozen=True)
class Clamp:
    """Set latent `feature` of `sae` to `value` (or to `scale` x its own value when value is None),
    keeping the SAE's error term; `Clamp(sae, f, value=0.0)` is the ablation."""

    sae: object
    feature: int
    value: float | None = None
    scale: float = 1.0
    from_position: int = 1

    def delta(self, x: Tensor, start: int = 0) -> Tensor:
        with torch.no_grad():
            c = self.sae.encode(x.float())[..., self.feature].to(x.dtype)  # [B, T]
        new = c * self.scale if self.value is None else torch.full_like(c, float(self.value))
        w = self.sae.W_dec[self.feature].detach().to(x.dtype)
        return (new - c)[..., None] * w * _position_mask(x, start, self.from_position)


@dataclass(frozen=True)
class Replace:
    """Where latent `feature` fires (c_f > 0), replace its value by `values(c)` (a tensor like c),
    keeping the SAE's error term: the edit of mean and resample ablation. Elsewhere nothing changes,
    so logits move only from the first firing token on."""

    sae: object
    feature: int
    values: object  # callable c [B, T] -> new values [B, T]
    from_position: int = 1

    def delta(self, x: Tensor, start: int = 0) -> Tensor:
        with torch.no_grad():
            c = self.sae.encode(x.float())[..., self.feature].to(x.dtype)  # [B, T]
        new = torch.as_tensor(self.values(c), dtype=x.dtype, device=x.device)
        w = self.sae.W_dec[self.feature].detach().to(x.dtype)
        return ((new - c) * (c > 0))[..., None] * w * _position_mask(x, start, self.from_position)


def ablate(sae, feature: int, from_position: int = 1) -> Clamp:
    """Zero-ablation of one latent, error term kept."""
    return Clamp(sae, feature, value=0.0, from_position=from_position)


ABLATIONS = ("zero", "mean", "resample")


def resample_values(pool: Tensor, shape, seed: int = 0) -> Tensor:
    """Values drawn uniformly, with replacement, from `pool` (the latent's values at held-out tokens)."""
    pool = torch.as_tensor(pool).reshape(-1).float()
    idx = torch.randint(len(pool), tuple(shape), generator=torch.Generator().manual_seed(seed))
    return pool[idx]


def ablation_edit(
    sae, feature: int, mode: str = "zero", pool: Tensor | None = None, seed: int = 0, from_position: int = 1
):
    """The edit of one ablation, error term kept, applied where the latent fires:
    "zero" (c_f := 0), "mean" (c_f := its mean over `pool`, the latent's values at held-out
    tokens, zeros included) or "resample" (c_f := its value at a random held-out token of `pool`,
    drawn per position with `seed`)."""
    if mode not in ABLATIONS:
        raise ValueError(f"unknown ablation {mode!r}; valid: {', '.join(ABLATIONS)}")
    if mode == "zero":
        return ablate(sae, feature, from_position)
    if pool is None or len(pool) == 0:
        raise ValueError(f"{mode} ablation needs pool=, the latent's values at held-out tokens")
    if mode == "mean":
        m = float(torch.as_tensor(pool).float().mean())
        return Replace(sae, feature, lambda c: torch.full_like(c, m), from_position)
    return Replace(sae, feature, lambda c: resample_values(pool, c.shape, seed), from_position)


# ------------------------------------------------------------------ running them
@torch.no_grad()
def intervened_logits(model, input_ids: Tensor, layer: int, edit=None) -> Tensor:
    """Logits [B, T, vocab] with `edit.delta(x)` added to resid_pre of `layer` (edit None: clean)."""
    if edit is None:
        return logits_with_resid(model, input_ids, layer)
    return logits_with_resid(model, input_ids, layer, replace=lambda x: x + edit.delta(x))


@torch.no_grad()
def generate(model, input_ids: Tensor, layer: int, edit=None, max_new_tokens: int = 20) -> Tensor:
    """Greedy continuation [B, max_new_tokens] of equal-length prompts input_ids [B, P], with the
    edit applied at every generation step (the prompt pass, then one new position per step)."""
    check_layers(spec_of(model), [layer])
    ids = model_input_ids(model, input_ids).long()
    P = ids.shape[1]
    envoy = blocks(model)[layer]
    with model.generate(
        ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=spec_of(model).bos_id
    ) as tracer:
        if edit is not None:
            for step in tracer.iter[:max_new_tokens]:
                x = envoy.input
                start = 0 if step == 0 else P + step - 1  # step 0 is the prompt pass
                envoy.input = x + edit.delta(x, start)
        out = nnsight.save(tracer.result)
    return out[:, P:]


def mean_nonzero(codes: Tensor) -> np.ndarray:
    """Mean nonzero value of each column of codes [n, m]; NaN for a column that is all zero. A latent's
    typical activation is this on the held-out view: `helpers.analysis.heldout.HeldOut.typical`."""
    fired = codes > 0
    n = fired.sum(0)
    return torch.where(n > 0, (codes * fired).sum(0) / n.clamp(min=1), torch.nan).numpy()


# ------------------------------------------------------------------ measurements
@dataclass
class SteeringCurve:
    """Steering one direction at several strengths on the same text."""

    alphas: np.ndarray  # [n] strength in units of the feature's typical activation
    target_prob: dict[str, np.ndarray]  # {target set: [n] mean next-token probability mass on it}
    kl: np.ndarray  # [n] mean KL(clean || steered) per predicting position (nats)

    def lift(self, name: str) -> np.ndarray:
        """target_prob[name] / its value at alpha 0 (how many times more likely the targets became)."""
        if not (self.alphas == 0).any():
            raise ValueError("lift needs alpha 0 among the alphas (the clean reference)")
        p = self.target_prob[name]
        return p / max(float(p[self.alphas == 0][0]), 1e-12)

    def table(self, name: str):
        """One row per alpha: alpha, KL and the lift of target set `name` (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame({"alpha": self.alphas, "KL": self.kl, "lift": self.lift(name)})


@torch.no_grad()
def steering_curve(
    model,
    input_ids: Tensor,
    layer: int,
    direction: Tensor,
    scale: float,
    alphas,
    targets: dict[str, list[int]],
    from_position: int = 1,
    batch_size: int = 8,
) -> SteeringCurve:
    """For each alpha: add alpha * scale * direction from `from_position` on, and measure the
    next-token probability mass on each set of target token ids and the KL to the clean
    distribution, averaged over the steered positions of every sequence. One forward pass per
    (alpha, batch), shared by all target sets."""
    ids = model_input_ids(model, input_ids).long()
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(
            f"scale must be a positive typical activation, got {scale}; a feature that "
            "never fires has no natural steering unit (pick another or pass one)"
        )
    alphas = np.asarray(alphas, dtype=np.float64)
    sets = {name: torch.as_tensor(list(t), dtype=torch.long) for name, t in targets.items()}
    prob = {name: np.zeros(len(alphas)) for name in sets}
    kl = np.zeros(len(alphas))
    n_pos = 0
    for b in range(0, len(ids), batch_size):
        batch = ids[b : b + batch_size]
        clean = intervened_logits(model, batch, layer)
        keep = slice(from_position, batch.shape[1] - 1)  # predicting positions that were steered
        n_pos += batch.shape[0] * (keep.stop - keep.start)
        for i, a in enumerate(alphas):
            logits = (
                clean
                if a == 0
                else intervened_logits(model, batch, layer, Steer(direction, float(a * scale), from_position))
            )
            p = torch.softmax(logits[:, keep].float(), dim=-1)
            for name, t in sets.items():
                prob[name][i] += float(p[..., t].sum())
            kl[i] += float(token_kl(clean, logits)[:, keep].sum())
    return SteeringCurve(alphas, {name: v / n_pos for name, v in prob.items()}, kl / n_pos)


@dataclass
class AblationEffect:
    """Per-token change of next-token loss when one latent is zero-ablated."""

    codes: np.ndarray  # [B, T] the latent's activation (clean pass)
    delta_ce: np.ndarray  # [B, T-1] ablated CE - clean CE at each predicting position (nats)
    input_ids: np.ndarray  # [B, T]

    def mean_where(self, fired: bool) -> float:
        """Mean delta CE at predicting positions where the latent fired (or did not) on that token.
        Positions after a firing token also change (attention reads the edit), so the not-fired
        mean is the spill-over, not zero."""
        mask = (self.codes[:, :-1] > 0) == fired
        return float(self.delta_ce[mask].mean()) if mask.any() else float("nan")

    def top_rises(self, n: int = 10) -> list[tuple[int, int, float]]:
        """The n predicting positions whose loss rose most: (sequence, position, delta CE); the
        predicted token is input_ids[sequence, position + 1]."""
        flat = np.argsort(-self.delta_ce, axis=None)[:n]
        return [
            (int(b), int(t), float(self.delta_ce[b, t]))
            for b, t in zip(*np.unravel_index(flat, self.delta_ce.shape))
        ]

    def rises_text(self, decode, n: int = 5, before: int = 6) -> list[tuple[str, str, float]]:
        """`top_rises` as text: (the context up to the predicting token, the predicted token, delta CE)."""
        ids = self.input_ids
        return [
            (decode(ids[b, max(0, t - before) : t + 1].tolist()), decode([int(ids[b, t + 1])]), d)
            for b, t, d in self.top_rises(n)
        ]


@torch.no_grad()
def ablation_effect(
    model,
    input_ids: Tensor,
    layer: int,
    sae,
    feature: int,
    from_position: int = 1,
    batch_size: int = 8,
    mode: str = "zero",
    pool: Tensor | None = None,
    seed: int = 0,
) -> AblationEffect:
    """Ablate `feature` (error term kept; `mode` and `pool` as in `ablation_edit`) on input_ids
    [B, T] and compare next-token CE with the clean pass."""
    ids = model_input_ids(model, input_ids).long()
    edit = ablation_edit(sae, feature, mode, pool, seed, from_position)
    codes, deltas = [], []
    for b in range(0, len(ids), batch_size):
        batch = ids[b : b + batch_size]
        res, clean = residuals_and_logits(model, batch, [layer])  # one clean pass for both
        ablated = intervened_logits(model, batch, layer, edit)
        deltas.append(token_ce(ablated, batch) - token_ce(clean, batch))
        codes.append(sae.encode(res[layer])[..., feature])
    return AblationEffect(torch.cat(codes).numpy(), torch.cat(deltas).numpy(), ids.numpy())


# ------------------------------------------------------------------ choosing what to show
def pick_features(
    share: np.ndarray | None,
    density: np.ndarray,
    twin_cos: np.ndarray,
    n: int = 4,
    density_range=(5e-4, 0.02),
    min_twin_cos: float = 0.9,
) -> list[int]:
    """The stated rule for the features a notebook shows (never picked by hand): among latents
    that fire on `density_range` of tokens (and have a proxy score `share`, NaN where unscored,
    when one is given), those the seed twin also found (best cosine > min_twin_cos) come first,
    then the highest proxy share, then the higher twin cosine, then the higher density. Falls back
    to every scored latent when the band is empty. Notebooks call it through `HeldOut.pick`, so that
    share and density are the held-out view's (helpers.analysis.heldout)."""
    density, twin_cos = np.asarray(density), np.asarray(twin_cos)
    share = np.zeros_like(density, dtype=float) if share is None else np.asarray(share, dtype=float)
    scored = np.isfinite(share)
    band = scored & (density > density_range[0]) & (density < density_range[1])
    pool = np.flatnonzero(band if band.any() else scored)
    if not len(pool):
        raise ValueError(
            "no latent has a proxy score (each fires on fewer than n_top tokens); score on more tokens"
        )
    order = np.lexsort(
        (-density[pool], -twin_cos[pool], -share[pool], -(twin_cos[pool] > min_twin_cos).astype(int))
    )
    return [int(f) for f in pool[order][:n]]


def pick_context_features(
    share: np.ndarray,
    density: np.ndarray,
    twin_cos: np.ndarray,
    n: int = 2,
    max_share: float = 0.3,
    density_range=(5e-4, 0.02),
    min_twin_cos: float = 0.9,
) -> list[int]:
    """The second stated rule, for features beyond single tokens: among scored latents firing on
    `density_range` of tokens that the seed twin also found (best cosine > min_twin_cos) and
    whose top contexts spread over several tokens (proxy share <= max_share: no token holds more
    than that share of its top activations), the most stable first (twin cosine), then the least
    concentrated. Fewer than n when fewer qualify; an empty list when none does."""
    share, density, twin_cos = (np.asarray(a, dtype=float) for a in (share, density, twin_cos))
    ok = np.isfinite(share) & (share <= max_share) & (twin_cos > min_twin_cos)
    ok &= (density > density_range[0]) & (density < density_range[1])
    pool = np.flatnonzero(ok)
    order = np.lexsort((share[pool], -twin_cos[pool]))
    return [int(f) for f in pool[order][:n]]


@torch.no_grad()
def effect_targets(
    model, input_ids: Tensor, layer: int, direction: Tensor, coef: float, n: int = 10, from_position: int = 1
) -> list[int]:
    """The n tokens whose mean next-token log-probability rises most when `direction` is added
    with `coef` (positions >= from_position): the tokens steering actually promotes, through every
    layer above, where the logit lens sees only the direct path. Choose them on text other than
    the text the steering curve is measured on."""
    ids = model_input_ids(model, input_ids).long()
    keep = slice(from_position, ids.shape[1])
    clean = torch.log_softmax(intervened_logits(model, ids, layer)[:, keep].float(), -1)
    steered = torch.log_softmax(
        intervened_logits(model, ids, layer, Steer(direction, coef, from_position))[:, keep].float(), -1
    )
    rise = (steered - clean).mean((0, 1))
    return [int(t) for t in torch.topk(rise, n).indices]


def firing_sequences(codes: np.ndarray, n: int, length: int) -> np.ndarray:
    """Indices of the n sequences whose first `length` positions (position 0 aside) hold the most
    firings of a latent; codes [n_seq, T] of that latent. For the ablation text."""
    counts = (np.asarray(codes)[:, 1:length] > 0).sum(1)
    return np.argsort(-counts, kind="stable")[:n]


# ------------------------------------------------------------------ one feature, for the browser
@dataclass
class FeatureEffects:
    """What using one latent does, for a feature card: ablation on text where it fires and a
    steering preview on one prompt."""

    mean_fired: float  # mean delta CE where it fired (nats)
    mean_elsewhere: float  # ... at the other predicting positions of the same text
    rises: list[tuple[str, str, float]]  # (context, predicted token, delta CE), largest first
    prompt: str
    steering: list[tuple[str, str]]  # (edit, greedy continuation)


@torch.no_grad()
def feature_effects(
    model,
    sae,
    layer: int,
    feature: int,
    tokens: Tensor,
    codes: np.ndarray,
    prompt: Tensor,
    scale: float,
    decode,
    n_seq: int = 4,
    length: int = 128,
    alphas=(2, 8),
    new_tokens: int = 12,
    n_rises: int = 5,
) -> FeatureEffects:
    """Ablate `feature` on the n_seq sequences of `tokens` [n, T] where its `codes` [n, T] fire most
    (first `length` positions), and continue `prompt` [1, P] clean and steered at each alpha
    (x `scale`, its typical activation)."""
    seqs = firing_sequences(codes, n_seq, length)
    text = torch.as_tensor(np.asarray(tokens))[seqs, :length].long()
    eff = ablation_effect(model, text, layer, sae, feature)
    u = sae.W_dec[feature].detach()
    if not (np.isfinite(scale) and scale > 0):  # never fired on the sample: no steering unit
        alphas = ()
    edits = [("clean", None)] + [(f"steer alpha {a:g}", Steer(u, a * float(scale))) for a in alphas]
    steering = [
        (name, decode(generate(model, prompt, layer, e, new_tokens)[0].tolist())) for name, e in edits
    ]
    return FeatureEffects(
        eff.mean_where(True),
        eff.mean_where(False),
        eff.rises_text(decode, n_rises),
        decode(prompt[0].tolist()),
        steering,
    )
