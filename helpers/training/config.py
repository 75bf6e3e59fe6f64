"""One SAE's training settings: `TrainConfig`, checked on construction, never mutated by callees.

Defaults follow the peers where they agree (Adam, warm-up then linear decay as in SAELens and
dictionary_learning); `sae_config()` gives the SAE it trains. What only one architecture reads (its
loss coefficients, AuxK, thresholds) is that architecture's Options dataclass, held in `options`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

from helpers.precision import PRECISIONS
from helpers.sae import SAEConfig, SAEError, get_sae_class
from helpers.sae.base import B_DEC_INITS, make_options
from helpers.sae.step_types import ArchOptions


@dataclass
class TrainConfig:
    """Training settings of one SAE, one docstring per field; `sae_config()` gives its SAEConfig.
    Never mutated by callees."""

    d_in: int
    """Width of the activations (the model's d_model at the hook)."""
    architecture: str = "topk"
    """A key of helpers.sae.REGISTRY (each architecture is one module of helpers/sae/)."""
    d_sae: int | None = None
    """Number of latents; None = 8 * d_in (resolved on construction: a `dataclasses.replace` that
    changes d_in keeps it unless it passes d_sae=None)."""
    k: int | None = 32
    """Architectures with `uses_k`: active latents per token (batch variants: on average over the batch)."""
    options: ArchOptions | dict[str, Any] | None = None
    """The architecture's own options (its module's Options dataclass: l1, AuxK, thresholds, ...); a
    dict is read into it (unknown keys ignored), None = its defaults."""
    lr: float | None = None
    """Peak Adam learning rate; None = 3e-4 / sqrt(d_sae / 2**14) (Gao et al.'s scaling), resolved on
    construction (a `dataclasses.replace` that changes d_sae keeps it unless it passes lr=None)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    warmup_steps: int = 1000
    """Linear warm-up steps (at most a tenth of the run)."""
    decay_fraction: float = 0.2
    """Share of the run, at its end, over which lr decays linearly to 0."""
    batch_size: int = 4096
    """Tokens per step."""
    total_tokens: int = 50_000_000
    """Training tokens; steps = total_tokens // batch_size."""
    tied: bool = False
    """W_enc = W_dec^T throughout (the encoder's gradient joins the decoder's: SAE.tie_grads_)."""
    layers: tuple[int, ...] = ()
    """Crosscoders: the resid_pre layers concatenated in d_in, in order (d_in = len(layers) * d_model);
    each layer's block is normalised on its own. () for a one-layer SAE."""
    seed: int = 0
    """Seed of the initial weights (every SAE of a plan has its own, helpers.training.experiments)."""
    b_dec_init: str = "geometric_median"
    """geometric_median | mean | zeros: b_dec from the first rows, in the scaled space."""
    normalize_activations: bool = True
    """Scale inputs so that E||s x|| = sqrt(d_in) while training; the scale is folded into the saved SAE."""
    norm_estimate_tokens: int = 65_536
    """Rows used to estimate the input scale and b_dec."""
    auxk_coef: float = 1 / 32
    """topk, batchtopk: AuxK loss coefficient (Gao et al. App. A.2); 0 turns AuxK off."""
    k_aux: int | None = None
    """topk, batchtopk: dead latents per token in AuxK; None = d_in // 2."""
    dead_window_tokens: int | None = None
    """A latent silent for this many tokens is dead; None = min(10M, total_tokens // 5)."""
    grad_clip: float | None = 1.0
    """Max global gradient norm; None = no clipping."""
    checkpoint_every_tokens: int | None = None
    """Checkpoint (weights, Adam, counters, RNG) every this many tokens; None = only at the end."""
    sparse: bool = True
    """The architecture's fast step (`fast_loss`); False = its plain autograd `loss`."""
    log_every: int = 1
    """Write a training_log.jsonl row every this many steps."""
    device: str | None = None
    """torch device; None = cuda if available, else cpu."""
    dtype: str = "float32"
    """dtype of the parameters and optimizer state (the master weights)."""
    precision: str = "auto"
    """dtype of the step's big GEMMs: auto (bf16 where measured faster here, helpers.precision) | bfloat16 |
    float32."""
    snapshot_tokens: tuple[int, ...] = ()
    """Save W_dec after these many tokens (and always at 0), for convergence curves."""
    model_name: str | None = None
    """Metadata kept in cfg.json: the model the activations came from."""
    layer: int | None = None
    """Metadata: the resid_pre layer."""
    hook_name: str | None = None
    """Metadata: the hook; None = blocks.{layer}.hook_resid_pre."""
    corpus: str | None = None
    """Metadata: the corpus name."""
    dataset_path: str | None = None
    """Metadata: the dataset path SAELens's cfg.json records."""
    context_size: int | None = None
    """Metadata: tokens per sequence of the activations."""

    def __post_init__(self) -> None:
        cls = get_sae_class(self.architecture)
        if self.d_sae is None:
            self.d_sae = 8 * self.d_in
        if self.lr is None:
            self.lr = 3e-4 / math.sqrt(self.d_sae / 2**14)
        if not isinstance(self.options, cls.Options):
            opts = self.options.to_dict() if isinstance(self.options, ArchOptions) else (self.options or {})
            self.options = make_options(self.architecture, **opts)
        m = self.d_sae
        if cls.uses_k and (self.k is None or not 0 < self.k <= m):
            raise SAEError(
                f"k={self.k} must be in [1, d_sae={m}] for {self.architecture}; lower k or raise d_sae"
            )
        for name in ("batch_size", "total_tokens", "log_every"):
            if not getattr(self, name) > 0:
                raise SAEError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise SAEError(f"lr must be positive (or None for the default), got {self.lr}")
        if not 0 <= self.decay_fraction <= 1:
            raise SAEError(f"decay_fraction must be in [0, 1]; got {self.decay_fraction}")
        if self.b_dec_init not in B_DEC_INITS:
            raise SAEError(f"unknown b_dec_init {self.b_dec_init!r}; valid: {', '.join(B_DEC_INITS)}")
        if self.precision not in PRECISIONS:
            raise SAEError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        n_blocks = max(1, len(self.layers))
        if self.d_in % n_blocks:
            raise SAEError(f"d_in={self.d_in} must be len(layers)={n_blocks} equal blocks, one per layer")
        if self.total_tokens < self.batch_size:
            raise SAEError(f"total_tokens={self.total_tokens} is less than one batch of {self.batch_size}")

    # ------------------------------------------------------------------ resolved defaults
    @property
    def n_blocks(self) -> int:
        """Layer blocks of d_in: len(layers) for a crosscoder, else 1."""
        return max(1, len(self.layers))

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    @property
    def dead_window(self) -> int:
        if self.dead_window_tokens is not None:
            return self.dead_window_tokens
        return min(10_000_000, self.total_tokens // 5)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over min(warmup_steps, total/10) steps; linear decay to 0 over the last
        decay_fraction."""
        n = self.total_steps
        warm = max(1, min(self.warmup_steps, n // 10))
        f = min(1.0, (step + 1) / warm)
        start = int(n * (1 - self.decay_fraction))
        if step >= start and n > start:
            f *= (n - step) / (n - start)
        return self.lr * f

    def sae_config(self) -> SAEConfig:
        hook = self.hook_name or (f"blocks.{self.layer}.hook_resid_pre" if self.layer is not None else None)
        meta = {
            "model_name": self.model_name,
            "hook_name": hook,
            "hook_layer": self.layer,
            "context_size": self.context_size,
            "dataset_path": self.dataset_path,
            "seed": self.seed,
            "corpus": self.corpus,
            "layer": self.layer,
            "training_tokens": self.total_tokens,
            "train_config": self.to_dict(),
        }
        if self.layers:
            meta["layers"] = list(self.layers)
            meta["hook_names"] = [f"blocks.{layer}.hook_resid_pre" for layer in self.layers]
        return SAEConfig(
            self.architecture,
            self.d_in,
            self.d_sae,
            k=self.k if get_sae_class(self.architecture).uses_k else None,
            dtype=self.dtype,
            tied=self.tied,
            n_layers=self.n_blocks,
            metadata=meta,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # options becomes a plain dict; from_dict reads it back into its Options

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for name in ("betas", "snapshot_tokens", "layers"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)
