"""Contrastive activation addition (helpers.analysis.steering_vectors) against hand computations."""

import numpy as np
import pytest
import torch

from helpers.analysis.interventions import SteeringCurve
from helpers.analysis.steering_vectors import best_matching_latent, cheaper, lift_at_kl, mean_difference


def test_mean_difference__is_the_difference_of_the_two_means():
    pos = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean (2, 4)
    neg = np.array([[0.0, 1.0], [0.0, 1.0], [3.0, 1.0]])  # mean (1, 1)
    assert mean_difference(pos, neg).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="one width"):
        mean_difference(pos, torch.zeros(2, 3))


def _curve(kl, p):
    return SteeringCurve(
        np.array([0.0, 1.0, 2.0, 4.0]), {"t": np.array(p, dtype=float)}, np.array(kl, dtype=float)
    )


def test_lift_at_kl__interpolates_between_alphas_and_never_extrapolates():
    c = _curve([0.0, 0.5, 1.0, 3.0], [0.01, 0.02, 0.05, 0.2])
    assert lift_at_kl(c, "t", 0.75) == pytest.approx((2.0 + 5.0) / 2)  # halfway between lifts 2 and 5
    assert lift_at_kl(c, "t", 3.0) == pytest.approx(20.0)
    assert np.isnan(lift_at_kl(c, "t", 3.5))
    caa, sae = c, _curve([0.0, 1.0, 2.0, 4.0], [0.01, 0.02, 0.04, 0.08])
    res = cheaper(caa, sae, "t", "CAA", "SAE latent", kl=1.0)
    assert (res.lift_a, res.lift_b, res.winner) == (pytest.approx(5.0), pytest.approx(2.0), "CAA")
    assert cheaper(caa, sae, "t", "CAA", "SAE").kl == 3.0, "default: the largest KL both reach"
    assert "CAA steers more cheaply" in res.sentence()


def test_best_matching_latent__ranks_rows_by_cosine_and_steers_the_closest_that_fires():
    W_dec = torch.tensor([[2.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    v = torch.tensor([1.0, 0.1])
    cos, latents, latent = best_matching_latent(W_dec, v, typical=np.array([np.nan, 2.0, 1.0, 1.0]), n=3)
    norm = float(np.hypot(1.0, 0.1))
    assert latents.tolist() == [0, 1, 2], "by cosine, not by dot product (row 0 is longer)"
    np.testing.assert_allclose(cos, [1 / norm, 0.86 / norm, 0.1 / norm], rtol=1e-5)
    assert latent == 1, "row 0 never fired (NaN typical activation): no steering unit, the next one"
    assert best_matching_latent(W_dec, v, np.full(4, np.nan), n=2)[2] == 0, "none fires: the closest"
