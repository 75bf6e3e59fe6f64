"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025, arXiv 2503.17547).

What: a BatchTopK SAE (same selection, threshold and inference) whose latents come in nested groups;
the loss charges the reconstruction of every prefix: latents [0, w_1), [0, w_2), ..., [0, d_sae), each
decoded on its own, so the first latents must reconstruct well without the later ones:
    loss = sum_g weights[g] * (1/B) sum_b ||x - x_hat_g||^2  +  auxk_coef * AuxK,
with the B*k selection made once over all latents, and AuxK on the whole dictionary's residual (as
dictionary_learning, and SAELens by default).
Why: a general latent in a flat SAE can stop firing where a more specific one takes its direction
(feature absorption); the early prefixes have to represent the general features themselves.

The weighting: dictionary_learning averages group-weighted prefix losses (weights 1/G each, then a
mean over the G groups: (1/G^2) sum_g mse_g); SAELens sums the prefix losses (sum_g mse_g). Here the
default weights are 1/G: the loss is the MEAN prefix MSE. Both peers' forms are this one up to a
constant factor, which Adam ignores except against AuxK: the mean keeps the reconstruction term on the
scale of one MSE, so auxk_coef 1/32 weighs what it weighs for BatchTopK, and a one-group Matryoshka is
exactly BatchTopK's loss (tests/test_matryoshka.py). `group_weights` sets them otherwise.
Group sizes: dictionary_learning's rule, int(f * d_sae) for all but the last fraction, the rest last
(default fractions [1/32, 1/16, 1/8, 1/4, 1/2 + 1/32], its demo's). The prefix widths (cumulative, the
last = d_sae) are kept as SAELens keeps them: metadata.training_architecture_details.matryoshka_widths.

On disk: as SAELens's `save_inference_model` writes its own trained Matryoshka BatchTopK SAEs, a
"jumprelu" cfg.json with threshold = topk_threshold for every latent and metadata.training_architecture
"matryoshka_batchtopk" (SAELens's `SAE.load_from_disk` reads it as a JumpReLU SAE with the same encode);
`load_sae` reads that back as this class. dictionary_learning's `MatryoshkaBatchTopKSAE` (ae.pt with
group_sizes) loads here too (benchmarks/check_peer_formats.py checks both against the libraries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from helpers.sae.base import SAE, SAEConfig, SAEError, register
from helpers.sae.batchtopk import BatchTopKOptions, BatchTopKSAE
from helpers.sae.fast.step import Prefixes
from helpers.sae.step_types import OptionsError

DEFAULT_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32)
TRAINING_NAME = "matryoshka_batchtopk"  # SAELens's architecture name of the training SAE


@dataclass
class MatryoshkaOptions(BatchTopKOptions):
    """BatchTopK's options plus the nested groups."""

    group_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    """Share of the latents in each group, in order (summing to 1); the prefixes are their cumulative sums."""
    group_weights: tuple[float, ...] | None = None
    """Weight of each prefix's MSE in the loss; None = 1/G each (the mean prefix MSE)."""

    def check(self) -> None:
        super().check()
        f = tuple(self.group_fractions)
        if not f or any(v <= 0 for v in f) or not math.isclose(sum(f), 1.0, rel_tol=1e-6):
            raise OptionsError(f"group_fractions must be positive and sum to 1, got {list(f)}")
        w = self.group_weights
        if w is not None and (len(w) != len(f) or any(v < 0 for v in w) or not sum(w) > 0):
            raise OptionsError(
                f"group_weights must be {len(f)} non-negative numbers (one per group), got {list(w)}"
            )


def prefix_widths(d_sae: int, fractions: tuple[float, ...] = DEFAULT_FRACTIONS) -> tuple[int, ...]:
    """Cumulative prefix widths for `fractions` of d_sae (dictionary_learning's group sizes: int(f * d_sae)
    for all but the last, the remainder last)."""
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    if any(s <= 0 for s in sizes):
        raise SAEError(
            f"group fractions {list(fractions)} leave an empty group at d_sae={d_sae} (sizes {sizes}); "
            "use fewer or larger groups"
        )
    return tuple(int(v) for v in torch.tensor(sizes).cumsum(0).tolist())


def check_widths(widths: tuple[int, ...], d_sae: int) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths or widths[-1] != d_sae or any(b <= a for a, b in zip((0, *widths), widths)):
        raise SAEError(f"matryoshka widths {list(widths)} must increase strictly and end at d_sae={d_sae}")
    return widths


@register
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK with nested-prefix reconstruction losses; inference as BatchTopK (one threshold)."""

    architecture = "matryoshka_batchtopk"
    Options = MatryoshkaOptions
    saelens_inference = "jumprelu"
    extra_tensors = ("threshold",)
    data_parallel = "not exact: batch-level top B*k and threshold are per slice"
    dictionary_learning_classes = ("MatryoshkaBatchTopKSAE",)
    dictionary_learning_keys = ("W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes")

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.set_widths(self.widths)

    # ------------------------------------------------------------------ the groups
    @property
    def widths(self) -> tuple[int, ...]:
        """Cumulative prefix widths (the last = d_sae): from the metadata, else the default fractions."""
        details = self.cfg.metadata.get("training_architecture_details") or {}
        w = details.get("matryoshka_widths")
        return check_widths(w, self.cfg.d_sae) if w else prefix_widths(self.cfg.d_sae)

    def set_widths(self, widths: tuple[int, ...]) -> None:
        """Record the prefix widths where SAELens keeps them (and what SAELens's export names)."""
        widths = check_widths(widths, self.cfg.d_sae)
        details = dict(self.cfg.metadata.get("training_architecture_details") or {})
        details |= {"matryoshka_widths": list(widths), "k": self.cfg.k}
        self.cfg.metadata["training_architecture"] = TRAINING_NAME
        self.cfg.metadata["training_architecture_details"] = details
        self._weights: tuple[float, ...] = (1.0 / len(widths),) * len(widths)

    def init_training(self, options: MatryoshkaOptions) -> None:
        self.set_widths(prefix_widths(self.cfg.d_sae, tuple(options.group_fractions)))
        if options.group_weights is not None:
            if len(options.group_weights) != len(self.widths):
                raise SAEError(f"{len(options.group_weights)} group_weights for {len(self.widths)} groups")
            self._weights = tuple(float(v) for v in options.group_weights)

    def prefixes(self, device: torch.device) -> Prefixes:
        return Prefixes(torch.tensor(self.widths, dtype=torch.int64, device=device), self._weights)

    # ------------------------------------------------------------------ on disk
    @property
    def threshold(self) -> Tensor:
        """The inference threshold per latent (SAELens's JumpReLU export: topk_threshold for all)."""
        return self.topk_threshold.to(self.b_enc.dtype).expand(self.cfg.d_sae)

    @torch.no_grad()
    def load_tensor(self, name: str, value: Tensor) -> None:
        if name != "threshold":
            return super().load_tensor(name, value)
        v = value.reshape(-1).double()
        if v.numel() not in (1, self.cfg.d_sae) or not torch.all(v == v[0]):
            raise SAEError(
                "a Matryoshka BatchTopK SAE has one threshold for every latent, but this file's differ; "
                "load it with architecture='jumprelu'"
            )
        self.topk_threshold.copy_(v[0])

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
        if "topk_threshold" in t:  # a SAELens training checkpoint (architecture matryoshka_batchtopk)
            t = {k: v for k, v in t.items() if k != "topk_threshold"} | {"threshold": t["topk_threshold"]}
        return t

    @classmethod
    def saelens_metadata(cls, raw_cfg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """A training checkpoint keeps matryoshka_widths at the top of cfg.json: move it to the metadata."""
        if raw_cfg.get("matryoshka_widths"):
            details = dict(meta.get("training_architecture_details") or {})
            details.setdefault("matryoshka_widths", list(raw_cfg["matryoshka_widths"]))
            meta = meta | {"training_architecture_details": details}
        return meta

    @classmethod
    def from_dictionary_learning(cls, state: dict[str, Tensor], metadata: dict[str, Any]) -> SAE:
        d_in, d_sae = state["W_enc"].shape
        widths = tuple(int(v) for v in state["group_sizes"].cumsum(0).tolist())
        meta = metadata | {"training_architecture_details": {"matryoshka_widths": list(widths)}}
        sae = cls(SAEConfig(cls.architecture, int(d_in), int(d_sae), k=int(state["k"]), metadata=meta))
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            sae.load_tensor(name, state[name])
        sae.topk_threshold.copy_(state["threshold"].double().reshape(()))  # -1 (untrained): ReLU alone
        return sae
