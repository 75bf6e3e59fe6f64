"""Sparse autoencoders: one architecture per module, a shared base, SAELens-format save/load, metrics.

    from helpers.sae import SAEConfig, make_sae, load_sae, save_sae
    sae = make_sae(SAEConfig("topk", d_in=576, d_sae=4608, k=32))
    codes = sae.encode(x)            # x [..., d_in] -> [..., d_sae]
    x_hat = sae.decode(codes)        # -> [..., d_in]
    x_hat, codes = sae(x, return_codes=True)

An architecture is one module: its SAE class, its Options dataclass, its plain loss (and an equal
fast step where it has one), its SAELens name and tensors, registered with `@register`
(helpers.sae.base says what a module defines). The import below is the registry's list; a module
outside helpers/ registers the same way (tests/test_custom_architecture.py). Any SAE can be tied
(SAEConfig.tied). Training lives in helpers.training.train.
"""

import torch

from helpers.sae import (  # noqa: F401  (fill REGISTRY)
    batchtopk,
    crosscoder,
    gated,
    jumprelu,
    matryoshka,
    relu,
    topk,
)
from helpers.sae.base import (
    REGISTRY,
    SAE,
    SAEConfig,
    SAEError,
    geometric_median,
    get_sae_class,
    make_options,
    register,
)
from helpers.sae.io import load_sae, read_cfg, save_sae


def make_sae(cfg: SAEConfig, seed: int | None = 0) -> SAE:
    """A freshly initialised SAE of cfg.architecture (decoder rows random, W_enc = W_dec^T)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return get_sae_class(cfg.architecture)(cfg).init_weights(gen)


__all__ = [
    "REGISTRY",
    "SAE",
    "SAEConfig",
    "SAEError",
    "geometric_median",
    "get_sae_class",
    "load_sae",
    "make_options",
    "make_sae",
    "read_cfg",
    "register",
    "save_sae",
]
