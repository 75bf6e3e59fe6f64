"""What a crosscoder across layers learned, against the per-layer SAEs of the same layers.

What: `layer_kinds` (per latent: at one layer or spanning several, by its decoder-norm shares) and
`example_lines` (a few latents of each kind with their top contexts), `match_layer_saes` (per layer:
Hungarian matching of the crosscoder's decoder block at that layer with that layer's SAE decoder,
beside the lab's null model `similarity.null_shared_fraction`), `per_layer_reconstruction` (FVU and
L0 per layer of the crosscoder and of the per-layer SAEs on the same held-out tokens) and
`published_comparison` (its totals beside the published replication), `kinds_side_by_side` (two
crosscoders' layer kinds, each at its own L0), `summary` (the numbers of
notebook 07's crosscoder finding), and `top_examples` (a latent's top held-out tokens with their
context; rows from `store.token_rows` or a `helpers.analysis.heldout.HeldOut` view).
Why: notebook 04 finds distinct features at every layer; a crosscoder says how many of them are one
feature seen at several depths (Anthropic, "Sparse Crosscoders for Cross-Layer Features and Model
Diffing", 2024).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from helpers.analysis.similarity import (
    NULL_SEED,
    SHARED_COS,
    hungarian_match,
    null_shared_fraction,
    shared_fraction,
)
from helpers.sae.crosscoder import layer_shares
from helpers.sae.metrics import ReconstructionStats

ONE_LAYER_SHARE = 0.7  # a latent "lives at one layer" when one layer holds >= this share of its decoder norm
# Published beside ours: the open replication of Anthropic's model-diffing crosscoder (Gemma-2-2B base
# vs chat, 16K latents; ckkissane/crosscoder-model-diff-replication) reports L0 81 and 77% explained
# variance; its decoder-norm shares fall into shared and model-specific groups.
PUBLISHED = {"model": "Gemma-2-2B base vs chat", "latents": 16384, "L0": 81, "explained_variance": 0.77}


@dataclass
class LayerKinds:
    """Per live latent: its decoder-norm share at each layer, its top layer and its kind."""

    shares: np.ndarray  # [n_live, n_layers]
    latents: np.ndarray  # [n_live] latent ids
    top_layer: np.ndarray  # [n_live] index into layers
    one_layer: np.ndarray  # [n_live] bool: max share >= ONE_LAYER_SHARE
    layers: tuple[int, ...]

    def table(self) -> pd.DataFrame:
        """How many live latents live at each layer alone, and how many span several."""
        rows = [
            {"kind": f"L{layer} only", "latents": int((self.one_layer & (self.top_layer == i)).sum())}
            for i, layer in enumerate(self.layers)
        ]
        rows.append({"kind": "spans layers", "latents": int((~self.one_layer).sum())})
        out = pd.DataFrame(rows)
        out["fraction"] = out["latents"] / max(1, len(self.latents))
        return out

    def examples(self, n: int = 3) -> dict[str, list[int]]:
        """Rule: per kind, the n latents most typical of it: one-layer latents with the largest share
        at their layer; spanning latents with the most even shares (smallest max share)."""
        out = {}
        top = self.shares.max(1)
        for i, layer in enumerate(self.layers):
            idx = np.flatnonzero(self.one_layer & (self.top_layer == i))
            out[f"L{layer} only"] = self.latents[idx[np.argsort(-top[idx])][:n]].tolist()
        idx = np.flatnonzero(~self.one_layer)
        out["spans layers"] = self.latents[idx[np.argsort(top[idx])][:n]].tolist()
        return out


def layer_kinds(crosscoder, live: np.ndarray, layers: tuple[int, ...]) -> LayerKinds:
    """Shares of the `live` latents (bool [d_sae]: fired on held-out tokens; dead latents keep their
    random initial shares and are left out)."""
    shares = layer_shares(crosscoder).numpy()
    ids = np.flatnonzero(live)
    s = shares[ids]
    return LayerKinds(s, ids, s.argmax(1), s.max(1) >= ONE_LAYER_SHARE, tuple(layers))


def kinds_side_by_side(kinds: dict[str, LayerKinds], l0: dict[str, float]) -> pd.DataFrame:
    """One row per kind ("L8 only", ..., "spans layers"), one column per crosscoder: the fraction of its
    live latents of that kind; then its live latents and held-out L0, so two objectives are read at
    their own L0 (notebook 07: the BatchTopK pair's crosscoder beside the L1 one)."""
    cols = {name: k.table().set_index("kind")["fraction"] for name, k in kinds.items()}
    out = pd.DataFrame(cols)
    out.loc["live latents"] = [len(k.latents) for k in kinds.values()]
    out.loc["held-out L0"] = [l0[name] for name in kinds]
    return out.rename_axis("kind").reset_index()


def example_lines(kinds: LayerKinds, contexts: Callable[[int], list[str]], n: int = 2) -> list[str]:
    """Lines to print for the latents `kinds.examples(n)` picks: per latent "<kind>: latent j
    (decoder-norm shares L1 0.34 / L2 0.33 / ...)", then its top contexts `contexts(j)` (e.g.
    `HeldOut.examples`), indented."""
    row = {int(j): i for i, j in enumerate(kinds.latents)}
    out = []
    for kind, latents in kinds.examples(n).items():
        for j in latents:
            shares = kinds.shares[row[j]]
            where = " / ".join(f"L{layer} {s:.2f}" for layer, s in zip(kinds.layers, shares))
            out.append(f"{kind}: latent {j} (decoder-norm shares {where})")
            out += [f"     {line}" for line in contexts(j)]
    return out


def match_layer_saes(
    crosscoder, saes: dict[int, object], live: np.ndarray, seed: int = NULL_SEED
) -> pd.DataFrame:
    """Per layer l: the crosscoder's live decoder blocks at l matched one-to-one (Hungarian) with the
    layer-l SAE's decoder rows; shared = fraction of matched pairs with cos > 0.7. The baseline is the
    lab's null model: the same matching against the SAE's decoder turned by a Haar-random rotation
    (`similarity.null_shared_fraction`)."""
    blocks = crosscoder.decoder_blocks()[torch.as_tensor(np.flatnonzero(live))]
    rows = []
    for i, (layer, sae) in enumerate(saes.items()):
        W = sae.W_dec.detach().float()
        m = hungarian_match(blocks[:, i].float(), W)
        rows.append(
            {
                "layer": layer,
                "crosscoder latents": int(blocks.shape[0]),
                "SAE latents": int(W.shape[0]),
                "shared (cos > 0.7)": shared_fraction(m.similarities, SHARED_COS),
                "matched latents": int((torch.as_tensor(m.similarities) > SHARED_COS).sum()),
                "median cos": float(torch.as_tensor(m.similarities).median()),
                "random baseline shared": null_shared_fraction(blocks[:, i].float(), W, SHARED_COS, seed),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def per_layer_reconstruction(
    crosscoder, saes: dict[int, object], x_NLd, batch_size: int = 4096
) -> pd.DataFrame:
    """FVU and L0 per layer on the same held-out rows x_NLd [N, L*d] (the layers side by side, massive
    tokens already cut, e.g. `HeldOut(store, layers).x`), encoded batch_size rows at a time: the
    crosscoder's reconstruction of each layer block, and each per-layer SAE's of its own block
    (`saes` {layer: SAE}, in the crosscoder's layer order); the last row compares total L0 (the
    crosscoder's codes count once for all layers, the per-layer SAEs' L0s add up) beside the mean FVU."""
    L = crosscoder.cfg.n_layers
    cc = [ReconstructionStats() for _ in range(L)]
    per = [ReconstructionStats() for _ in range(L)]
    for x in torch.split(x_NLd, batch_size):
        x = x.float()
        codes = crosscoder.encode(x)
        xs, x_hat = x.unflatten(-1, (L, -1)), crosscoder.decode(codes).unflatten(-1, (L, -1))
        for i, sae in enumerate(saes.values()):
            cc[i].update(xs[:, i], x_hat[:, i], codes)
            c = sae.encode(xs[:, i])
            per[i].update(xs[:, i], sae.decode(c), c)
    rows = []
    for i, layer in enumerate(saes):
        a, b = cc[i].result(), per[i].result()
        rows.append(
            {
                "layer": layer,
                "crosscoder FVU": a["fvu"],
                "per-layer SAE FVU": b["fvu"],
                "crosscoder L0": a["l0"],
                "per-layer SAE L0": b["l0"],
            }
        )
    out = pd.DataFrame(rows)
    total = {
        "layer": "all (total L0)",
        "crosscoder FVU": float(np.mean(out["crosscoder FVU"])),
        "per-layer SAE FVU": float(np.mean(out["per-layer SAE FVU"])),
        "crosscoder L0": float(out["crosscoder L0"].iloc[0]),
        "per-layer SAE L0": float(out["per-layer SAE L0"].sum()),
    }
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


def published_comparison(recon: pd.DataFrame) -> pd.DataFrame:
    """Our total L0 and mean explained variance (the last row of `per_layer_reconstruction`) beside the
    published replication's (PUBLISHED), as printable strings."""
    total = recon.iloc[-1]
    return pd.DataFrame(
        [
            {"quantity": "L0", "published": str(PUBLISHED["L0"]), "ours": f"{total['crosscoder L0']:.0f}"},
            {
                "quantity": "explained variance",
                "published": f"{PUBLISHED['explained_variance']:.0%}",
                "ours": f"{1 - total['crosscoder FVU']:.0%} (mean over layers)",
            },
        ]
    )


def _by_layer(table: pd.DataFrame, column: str) -> dict[int, float]:
    return {int(k): float(v) for k, v in zip(table["layer"], table[column])}


def summary(kinds: LayerKinds, match: pd.DataFrame, recon: pd.DataFrame, d_sae: int) -> dict:
    """The numbers of notebook 07's crosscoder finding (every field of
    `helpers.report.findings.CrosscoderFindings` but its verdict), from `layer_kinds`,
    `match_layer_saes` and `per_layer_reconstruction`: the fraction of live latents of each kind, the
    shared fraction per layer and the largest null-model one over layers, FVU per layer, total L0s."""
    fraction = kinds.table().set_index("kind")["fraction"]
    per_layer, total = recon.iloc[:-1], recon.iloc[-1]
    return {
        "layers": [int(v) for v in kinds.layers],
        "n_live": len(kinds.latents),
        "d_sae": int(d_sae),
        "spans": float(fraction["spans layers"]),
        "one_layer": {k: float(v) for k, v in fraction.items() if k != "spans layers"},
        "shared": _by_layer(match, "shared (cos > 0.7)"),
        "random_shared": float(match["random baseline shared"].max()),
        "fvu_cc": _by_layer(per_layer, "crosscoder FVU"),
        "fvu_sae": _by_layer(per_layer, "per-layer SAE FVU"),
        "l0_cc": float(total["crosscoder L0"]),
        "l0_sae": float(total["per-layer SAE L0"]),
    }


def top_examples(codes, latent: int, seqs, poss, tokens, decode, n: int = 3, before: int = 8) -> list[str]:
    """The latent's n top-activating held-out tokens, each with `before` tokens of context and the
    token itself in [[ ]]: "... context [[token]] (activation)"."""
    col = np.asarray(codes[:, latent], dtype=np.float64)
    out = []
    for i in np.argsort(-col)[:n]:
        if col[i] <= 0:
            break
        s, p = int(seqs[i]), int(poss[i])
        ctx = decode([int(t) for t in tokens[s, max(0, p - before) : p]])
        out.append(f"{ctx!r} [[{decode([int(tokens[s, p])])!r}]] ({col[i]:.2f})")
    return out
