"""The SAE plan: every factor of the study gets at least one pair that differs only in it."""
import numpy as np
import pytest
import torch

from helpers import experiments
from helpers.matching import FACTORS, factor_pairs
from helpers.models import load_model, unembedding
from helpers.profiles import PROFILES


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_plan__has_a_one_factor_pair_for_every_factor_and_unique_names(name):
    profile = PROFILES[name]
    runs = experiments.plan(profile, d_model=64)
    assert len({r.name for r in runs}) == len(runs), "duplicate SAEs in the plan"
    pairs = factor_pairs(experiments.entries(runs, "/nonexistent"))
    covered = {factor for factor, _, _ in pairs}
    assert covered == set(FACTORS), f"no pair isolates {set(FACTORS) - covered}"
    base = experiments.base_run(profile, 64)
    assert base in runs and base.layer == profile.main_layer
    assert set(experiments.layer_runs(profile, 64)) == set(profile.layers)


def test_train_config__carries_profile_budget_and_metadata():
    profile = PROFILES["tiny"]
    run = experiments.base_run(profile, 64)
    cfg = run.train_config(profile, d_in=64, seq_len=profile.seq_len)
    assert (cfg.total_tokens, cfg.batch_size, cfg.k, cfg.layer) == (
        profile.train_tokens, profile.train_batch_size, profile.k, profile.main_layer)
    assert cfg.sae_config().metadata["hook_name"] == f"blocks.{profile.main_layer}.hook_resid_pre"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_unembedding__reproduces_the_models_logits_from_the_last_hidden_state(name):
    model = load_model(name)
    W_U, norm_w = unembedding(model)
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        out = model._module(ids, output_hidden_states=True)
    # hidden_states[-1] is already normed; W_U maps it to the logits
    torch.testing.assert_close(out.hidden_states[-1] @ W_U.T, out.logits, rtol=1e-4, atol=1e-4)
    assert norm_w.shape == (64,)


def test_cosine_to_init__is_one_before_training_and_drops_after_a_change():
    from helpers.sae import make_sae
    profile = PROFILES["tiny"]
    run = experiments.base_run(profile, 64)
    sae = make_sae(run.train_config(profile, 64, profile.seq_len).sae_config(), seed=run.seed)
    np.testing.assert_allclose(experiments.cosine_to_init(sae, run, profile, 64), 1.0, atol=1e-6)
    with torch.no_grad():
        # not the global RNG: the autouse fixture seeds it with 0, which would redraw the init
        sae.W_dec[:10] = torch.randn(10, 64, generator=torch.Generator().manual_seed(123))
    cos = experiments.cosine_to_init(sae, run, profile, 64)
    assert (cos[:10] < 0.6).all() and np.allclose(cos[10:], 1.0, atol=1e-6)
