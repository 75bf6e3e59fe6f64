"""The SAE base class, its config, the architecture registry and weight initialisation.

What: `SAEConfig` (a dataclass with to_dict/from_dict), `SAE` (nn.Module with W_enc [d_in, d_sae],
W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] as nn.Parameters; encode / decode / forward on
[..., d_in] tensors), `register` / `get_sae_class` / `from_saelens_name` (a dict registry that names
the valid choices), `make_options`, `geometric_median` (Weiszfeld) and `init_b_dec`.
Why: an architecture is one module. Its file holds the SAE subclass and everything that is its own:
    architecture, Options         its name and its training options (an ArchOptions dataclass)
    encode_flat                   inference
    loss                          its training loss, written plainly (autograd)
    fast_loss                     optionally, an equal and faster step (tests prove them equal)
    saelens_name, extra_tensors   its SAELens name and the tensors it saves beside W_enc/W_dec/b_enc/b_dec
    from_saelens_tensors, load_tensor, init_training, _scale_extra_   hooks where it differs
and it registers itself with `@register`. Saving, loading, the trainer and the plots read these
attributes; none of them lists architectures (tests/test_custom_architecture.py adds one from a test).

Training happens on activations scaled by `s` so that E||s x|| = sqrt(d_in). `fold_norm_scale(s)`
rewrites the weights so the SAE takes raw activations: codes and biases are divided by s, the
decoder rows keep their norm (SAELens's fold scales W_enc/W_dec instead; both are exact).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from helpers.sae.step_types import ArchOptions, OptionsError, StepState, TrainOutput

REGISTRY: dict[str, type[SAE]] = {}
NORMALIZE_MODES = ("none", "expected_average_only_in")


class SAEError(ValueError):
    """Bad SAE configuration, input or file; the message names the fix."""


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make `cls` available under `cls.architecture` (and its SAELens names)."""
    if not cls.architecture:
        raise SAEError(f"{cls.__name__} needs a class attribute `architecture` (its registry name)")
    REGISTRY[cls.architecture] = cls
    return cls


def get_sae_class(architecture: str) -> type[SAE]:
    if architecture not in REGISTRY:
        raise SAEError(f"unknown SAE architecture {architecture!r}; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[architecture]


def from_saelens_name(name: str, trained_as: str | None = None) -> str:
    """Our architecture for a SAELens cfg.json "architecture" (its `saelens_name` or an alias); an
    inference export (`saelens_inference`) whose metadata.training_architecture is `trained_as` maps to
    the class that trained it."""
    for arch, cls in REGISTRY.items():
        if trained_as and cls.saelens_inference == name and cls.saelens() == trained_as:
            return arch
    for arch, cls in REGISTRY.items():
        if name == cls.saelens() or name in cls.__dict__.get("saelens_aliases", ()):
            return arch
    valid = sorted({c.saelens() for c in REGISTRY.values()})
    raise SAEError(f"cannot load SAELens architecture {name!r}; supported: {', '.join(valid)}")


def make_options(architecture: str, **overrides: Any) -> ArchOptions:
    """The architecture's Options with those of `overrides` it has (others are ignored, so one set of
    settings, e.g. a profile's l1, can be offered to every architecture)."""
    try:
        return get_sae_class(architecture).Options.from_dict(overrides)
    except OptionsError as err:
        raise SAEError(f"{architecture}: {err}") from None


@dataclass
class SAEConfig:
    """Shape and inference behaviour of one SAE (training settings live in
    helpers.training.train.TrainConfig).

    `metadata` holds what SAELens v6 keeps under "metadata" (model_name, hook_name, hook_layer,
    context_size, dataset_path, ...) plus ours (seed, corpus, layer, training_tokens).
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None  # topk / batchtopk: latents per token (batchtopk: on average over a batch)
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    tied: bool = False  # W_enc = W_dec^T, kept so by the trainer (`tie_grads_` / `sync_tied_`)
    n_layers: int = 1  # crosscoders: d_in is n_layers equal blocks, one per layer (helpers.sae.crosscoder)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_sae_class(self.architecture)
        if int(self.d_in) <= 0 or int(self.d_sae) <= 0:
            raise SAEError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if int(self.n_layers) < 1 or int(self.d_in) % int(self.n_layers):
            raise SAEError(
                f"d_in={self.d_in} must split into n_layers={self.n_layers} equal blocks; "
                "pass d_in = n_layers * d_model"
            )
        if get_sae_class(self.architecture).uses_k:
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise SAEError(
                    f"k must be in [1, d_sae={self.d_sae}] for {self.architecture}, got k={self.k}"
                )
        if self.normalize_activations not in NORMALIZE_MODES:
            raise SAEError(
                f"normalize_activations={self.normalize_activations!r} is not supported; "
                f"valid: {', '.join(NORMALIZE_MODES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        names = set(cls.__dataclass_fields__)
        kw = {key: copy.deepcopy(v) for key, v in d.items() if key in names}
        return cls(**kw)


class SAE(nn.Module):
    """Base SAE: x [..., d_in] -> codes [..., d_sae] -> x_hat [..., d_in].

    encode(x) = act((x - b_dec) @ W_enc + b_enc)  (b_dec subtracted when cfg.apply_b_dec_to_input)
    decode(c) = c @ W_dec + b_dec
    """

    architecture: ClassVar[str] = ""  # the registry name
    Options: ClassVar[type[ArchOptions]] = ArchOptions  # its training options (loss coefficients, ...)
    uses_k: ClassVar[bool] = False  # topk-style: cfg.k latents per token (on average for batch variants)
    unit_norm_decoder: ClassVar[bool] = True  # trainer keeps decoder rows at norm 1
    decoder_init_norm: ClassVar[float] = 1.0
    saelens_name: ClassVar[str] = ""  # cfg.json "architecture" (empty: the registry name)
    saelens_aliases: ClassVar[tuple[str, ...]] = ()  # other cfg.json names this class loads
    saelens_inference: ClassVar[str] = ""  # saved as this SAELens inference architecture (cfg.json
    # "architecture"; metadata.training_architecture then names this class), as SAELens saves its own
    # trained Matryoshka SAEs ("jumprelu"); empty: saved under its own name
    extra_tensors: ClassVar[tuple[str, ...]] = ()  # saved beside W_enc, W_dec, b_enc, b_dec (attribute names)
    data_parallel: ClassVar[str] = "exact"  # helpers.training.train_dist: is a sliced batch's step exact?
    dictionary_learning_classes: ClassVar[
        tuple[str, ...]
    ] = ()  # read by `from_dictionary_learning` (not inherited)
    dictionary_learning_keys: ClassVar[tuple[str, ...]] = ("encoder.weight", "encoder.bias", "decoder.weight")

    @classmethod
    def saelens(cls) -> str:
        """The cfg.json "architecture": the class's own `saelens_name` (not inherited), else its name."""
        return cls.__dict__.get("saelens_name") or cls.architecture

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise SAEError(
                f"config is for architecture {cfg.architecture!r} but the class is {self.architecture!r}"
            )
        self.cfg = cfg
        dt, dev = getattr(torch, cfg.dtype), torch.device(cfg.device)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt, device=dev))  # [d_in, d_sae]
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dt, device=dev))  # [d_sae, d_in]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt, device=dev))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt, device=dev))
        self._init_extra(dt, dev)

    # ------------------------------------------------------------------ per-architecture hooks
    def _init_extra(self, dtype: torch.dtype, device: torch.device) -> None:
        """Create architecture-specific parameters/buffers (threshold, r_mag, ...)."""

    def encode_flat(self, x: Tensor) -> Tensor:
        """[n, d_in] (already checked) -> codes [n, d_sae]."""
        raise NotImplementedError

    def loss(self, x: Tensor, state: StepState) -> TrainOutput:
        """The training loss on a [B, d_in] batch of scaled activations, written plainly for autograd
        (options in `state.options`, dead latents in `state.dead`)."""
        raise NotImplementedError(f"{type(self).__name__} must define loss(x, state)")

    def fast_loss(self, x: Tensor, state: StepState) -> TrainOutput:
        """An equal, faster form of `loss` (fused steps with gradients attached); default: `loss`."""
        return self.loss(x, state)

    def train_forward(self, x: Tensor, state: StepState) -> TrainOutput:
        """What the trainer calls: `fast_loss` when state.sparse, else the plain `loss`. Options of
        another type (a bare ArchOptions built by hand) are read into this architecture's Options."""
        if not isinstance(state.options, self.Options):
            state.options = self.Options.from_dict(state.options.to_dict())
        return self.fast_loss(x, state) if state.sparse else self.loss(x, state)

    def init_training(self, options: ArchOptions) -> None:
        """Set option-dependent initial values before the first step (e.g. an initial threshold)."""

    def _scale_extra_(self, s: float) -> None:
        """Divide any architecture-specific activation-space quantity (thresholds) by s."""

    # ------------------------------------------------------------------ on disk (helpers.sae.io)
    def disk_tensors(self) -> dict[str, Tensor]:
        """The tensors saved to disk under their SAELens names: W_enc, W_dec, b_enc, b_dec and
        `extra_tensors` (each read with getattr, so a property such as a threshold works)."""
        names = ("W_enc", "W_dec", "b_enc", "b_dec", *self.extra_tensors)
        return {n: getattr(self, n).detach().contiguous().cpu() for n in names}

    @classmethod
    def from_saelens_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
        """Tensors as a SAELens file holds them -> those `load_tensor` takes (`cfg`: the raw cfg.json)."""
        return t

    @classmethod
    def saelens_metadata(cls, raw_cfg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """The metadata of a SAELens file as this class keeps it (`raw_cfg`: the raw cfg.json)."""
        return meta

    @classmethod
    def from_dictionary_learning(cls, state: dict[str, Tensor], metadata: dict[str, Any]) -> SAE:
        """An SAE from a dictionary_learning `ae.pt` state dict (helpers.sae.peer_formats), for the
        classes named in `dictionary_learning_classes`."""
        raise SAEError(f"{cls.architecture} reads no dictionary_learning state dict")

    @torch.no_grad()
    def load_tensor(self, name: str, value: Tensor) -> None:
        """Copy one on-disk tensor into the SAE (override for a tensor that is not a plain attribute)."""
        dst = getattr(self, name)
        if tuple(value.shape) != tuple(dst.shape):
            raise SAEError(
                f"tensor {name} has shape {tuple(value.shape)} but the SAE needs {tuple(dst.shape)}"
            )
        dst.copy_(value.to(dst.dtype))

    # ------------------------------------------------------------------ tied weights
    @torch.no_grad()
    def tie_grads_(self) -> None:
        """Tied SAEs (cfg.tied): W_enc is W_dec^T, so its gradient joins the decoder's and the encoder
        itself takes no optimizer step (a None grad: Adam skips it). The trainer calls this after
        backward, before the decoder projection and clipping."""
        if self.cfg.tied and self.W_enc.grad is not None:
            if self.W_dec.grad is None:
                self.W_dec.grad = self.W_enc.grad.t().contiguous()
            else:
                self.W_dec.grad.add_(self.W_enc.grad.t())
            self.W_enc.grad = None

    @torch.no_grad()
    def sync_tied_(self) -> None:
        """Tied SAEs: W_enc <- W_dec^T after the optimizer step and the decoder renormalisation."""
        if self.cfg.tied:
            self.W_enc.copy_(self.W_dec.t())

    # ------------------------------------------------------------------ shared interface
    def check_input(self, x: Tensor) -> Tensor:
        """Raise on a width mismatch; return x as [n, d_in] in the SAE's dtype/device."""
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.shape[-1] != self.cfg.d_in:
            raise SAEError(
                f"activations have width {x.shape[-1]} but the SAE expects d_in={self.cfg.d_in}; "
                "did you collect another model or layer?"
            )
        return x.reshape(-1, self.cfg.d_in).to(dtype=self.W_enc.dtype, device=self.W_enc.device)

    def centered(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def encode(self, x: Tensor) -> Tensor:
        """codes [..., d_sae] for activations x [..., d_in]."""
        x = torch.as_tensor(x)
        return self.encode_flat(self.check_input(x)).reshape(*x.shape[:-1], self.cfg.d_sae)

    def decode(self, codes: Tensor) -> Tensor:
        """x_hat [..., d_in] = codes @ W_dec + b_dec."""
        if codes.shape[-1] != self.cfg.d_sae:
            raise SAEError(f"codes have width {codes.shape[-1]} but the SAE has d_sae={self.cfg.d_sae}")
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, return_codes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x_hat [..., d_in]; with return_codes=True, (x_hat, codes)."""
        codes = self.encode(x)
        x_hat = self.decode(codes)
        return (x_hat, codes) if return_codes else x_hat

    # ------------------------------------------------------------------ init and folding
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> SAE:
        """Decoder rows: random directions at norm `decoder_init_norm`; W_enc = W_dec^T; biases 0."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float32)
        w = w / w.norm(dim=1, keepdim=True) * self.decoder_init_norm
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.t())
        self.b_enc.zero_()
        self.b_dec.zero_()
        return self

    @torch.no_grad()
    def normalize_decoder_(self, copy_to: Tensor | None = None) -> None:
        """Rescale decoder rows to unit norm (rows of norm 0 are left alone); with `copy_to` (a bf16
        [d_sae, d_in] buffer) also write the normalised rows there (the trainer's one-pass C form is
        helpers.sae.fast.step.normalize_decoder_for_step)."""
        norms = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))
        if copy_to is not None:
            copy_to.copy_(self.W_dec)

    @torch.no_grad()
    def fold_norm_scale(self, s: float) -> SAE:
        """A copy that takes raw x when self was trained on s * x.

        encode_raw(x) = encode_scaled(s x) / s and decode_raw(c) = decode_scaled(s c) / s, so
        b_enc, b_dec (and thresholds) are divided by s; W_enc and W_dec are unchanged.
        """
        if not s > 0 or not math.isfinite(s):
            raise SAEError(f"norm scale must be positive and finite, got {s}")
        out = copy.deepcopy(self)
        out.b_enc.div_(s)
        out.b_dec.div_(s)
        out._scale_extra_(s)
        return out

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        tied = ", tied" if self.cfg.tied else ""
        return f"{self.architecture}: d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{k}{tied}"


# ---------------------------------------------------------------------------- b_dec init
@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-8) -> Tensor:
    """argmin_y sum_i ||p_i - y|| by Weiszfeld: y <- sum_i w_i p_i / sum_i w_i, w_i = 1/||p_i - y||.

    points [n, d]; starts from the mean; stops when the step is below tol * (1 + ||y||).
    """
    p = points.to(torch.float64)
    y = p.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (p - y).norm(dim=1).clamp_min(eps)
        y_new = (w[:, None] * p).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * (1 + y.norm()):
            y = y_new
            break
        y = y_new
    return y.to(points.dtype)


B_DEC_INITS = ("geometric_median", "mean", "zeros")


@torch.no_grad()
def init_b_dec(sae: SAE, sample: Tensor, method: str) -> None:
    """Set b_dec from a sample [n, d_in] of (scaled) activations: geometric median, mean or zeros."""
    if method not in B_DEC_INITS:
        raise SAEError(f"unknown b_dec_init {method!r}; valid: {', '.join(B_DEC_INITS)}")
    if method == "zeros":
        sae.b_dec.zero_()
    elif method == "mean":
        sae.b_dec.copy_(sample.mean(0))
    else:
        sae.b_dec.copy_(geometric_median(sample))
