"""Small planted objects that several test modules build (import them: `from planted import ...`)."""

import torch

from helpers.sae import SAEConfig, make_sae


def identity_relu_sae(d: int):
    """A ReLU SAE whose latent j reads dimension j and decodes to e_j: codes = relu(x), x_hat = relu(x)."""
    sae = make_sae(SAEConfig("relu", d, d), seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae
