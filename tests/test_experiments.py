"""The SAE plan: every factor of the study gets at least one pair that differs only in it."""

import pytest
import torch

from helpers.analysis import convergence
from helpers.analysis.matching import factor_pairs
from helpers.model.models import load_model, unembedding
from helpers.profiles import PROFILES
from helpers.training import experiments
from helpers.training.config import TrainConfig
from helpers.training.experiments import FACTORS


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_plan__has_a_one_factor_pair_for_every_factor_and_unique_names(name):
    profile = PROFILES[name]
    runs = experiments.plan(profile, d_model=64)
    assert len({r.name for r in runs}) == len(runs), "duplicate SAEs in the plan"
    pairs = factor_pairs(runs, free=("seed",))
    covered = {factor for factor, _, _ in pairs}
    # per-layer SAEs read from a source (gpt2-jb) are not trained here: no layer pair in the grid
    expected = set(FACTORS) - ({"layer"} if profile.sae_sources else set())
    assert covered == expected, f"no pair isolates {expected - covered}"
    seed_pairs = [(runs[i], runs[j]) for f, i, j in pairs if f == "seed"]
    assert len(seed_pairs) >= 2, (
        "the main corpus and the other corpus each need a seed pair (the noise floor)"
    )
    base = experiments.base_run(profile, 64)
    assert base in runs and base.layer == profile.main_layer
    assert set(experiments.layer_runs(profile, 64)) == set(profile.layers)


def test_train_config__carries_profile_budget_and_metadata():
    profile = PROFILES["tiny"]
    run = experiments.base_run(profile, 64)
    cfg = run.train_config(profile, d_in=64, seq_len=profile.seq_len)
    assert (cfg.total_tokens, cfg.batch_size, cfg.k, cfg.layer) == (
        profile.train_tokens,
        profile.train_batch_size,
        profile.k,
        profile.main_layer,
    )
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


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_plan__gives_every_sae_a_distinct_initial_decoder(name):
    # the old confound: same-seed SAEs shared their init, and a half-width SAE the first half of
    # the full one's rows; with short training every such pair "shared" features by construction
    from helpers.sae import make_sae

    profile = PROFILES[name]
    d = 64
    runs = experiments.plan(profile, d_model=d)
    assert len({r.seed for r in runs}) == len(runs), "two SAEs of the plan share a seed"
    inits = {
        r.name: make_sae(r.train_config(profile, d, profile.seq_len).sae_config(), seed=r.seed).W_dec.detach()
        for r in runs
    }
    names = list(inits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            A, B = inits[a], inits[b]
            cos = (A / A.norm(dim=1, keepdim=True)) @ (B / B.norm(dim=1, keepdim=True)).T
            assert float(cos.abs().max()) < 0.9, f"{a} and {b} start from (nearly) the same decoder row"


def test_trained__trains_only_the_unfinished_runs_and_gives_every_path(tmp_path, monkeypatch):
    import json

    profile = PROFILES["tiny"]
    runs = experiments.plan(profile, 16)[:3]
    done, half = experiments.sae_path(tmp_path, runs[0]), experiments.sae_path(tmp_path, runs[1])
    for path, completed in ((done, True), (half, False)):
        path.mkdir(parents=True)
        (path / "eval_summary.json").write_text(json.dumps({"completed": completed}))
    calls = []
    monkeypatch.setattr(experiments, "train_plan", lambda rs, *a, **k: calls.append([r.name for r in rs]))
    paths = experiments.trained(runs, profile, tmp_path / "stores", tmp_path)
    assert calls == [[runs[1].name, runs[2].name]], "the finished SAE must not train again"
    assert paths == {r.name: experiments.sae_path(tmp_path, r) for r in runs}
    assert experiments.is_trained(runs[0], tmp_path) and not experiments.is_trained(runs[1], tmp_path)
    experiments.trained(runs[:1], profile, tmp_path / "stores", tmp_path)
    assert len(calls) == 1, "nothing to train: no call"


def test_drift__reads_the_trainers_initial_snapshot(tmp_path):
    from helpers.data.toy import TensorBatches
    from helpers.training.train import train_sae

    profile = PROFILES["tiny"]
    run = experiments.base_run(profile, 16)
    cfg = TrainConfig(d_in=16, d_sae=32, k=4, batch_size=64, total_tokens=64 * 3, warmup_steps=1, lr=1e-9)
    train_sae(
        cfg,
        TensorBatches(torch.randn(512, 16), 64, seed=0),
        experiments.sae_path(tmp_path, run),
        progress=False,
    )
    assert convergence.drift(run, tmp_path) == pytest.approx(1.0, abs=1e-4), "lr ~0: rows stay at their init"


def test_sae_sources__replace_the_per_layer_runs_and_are_checked_against_the_model(tmp_path):
    from dataclasses import replace

    from helpers.model.models import get_spec
    from helpers.sae import SAEError, make_sae, save_sae
    from helpers.sae.base import SAEConfig

    spec = get_spec("tiny-gpt2")  # d_model 64, 4 blocks
    good = save_sae(
        make_sae(SAEConfig("topk", 64, 128, k=4, metadata={"hook_name": "blocks.1.hook_resid_pre"})),
        tmp_path / "L1",
    )
    profile = replace(PROFILES["tiny"], model="tiny-gpt2", sae_sources=((1, str(good)),))
    runs = experiments.layer_runs(profile, 64)
    assert runs[1].source == str(good) and runs[0].source is None
    assert all(r.source is None for r in experiments.plan(profile, 64)), (
        "a sourced SAE got planned for training"
    )
    assert experiments.load(runs[1], tmp_path / "unused").W_dec.shape == (128, 64)
    experiments.check_sae_sources(profile, spec)

    wide = save_sae(make_sae(SAEConfig("topk", 32, 64, k=4)), tmp_path / "d32")
    with pytest.raises(SAEError, match=r"layer 1 .* has d_in 32, but tiny-gpt2 has d_model 64"):
        experiments.check_sae_sources(replace(profile, sae_sources=((1, str(wide)),)), spec)
    deep = save_sae(
        make_sae(SAEConfig("topk", 64, 128, k=4, metadata={"hook_name": "blocks.9.hook_resid_pre"})),
        tmp_path / "L9",
    )
    with pytest.raises(
        SAEError, match=r"reads blocks.9.hook_resid_pre, which tiny-gpt2 does not have \(blocks 0-3"
    ):
        experiments.check_sae_sources(replace(profile, sae_sources=((1, str(deep)),)), spec)
    with pytest.raises(SAEError, match=r"collects blocks.2.hook_resid_pre for layer 2"):
        experiments.check_sae_sources(replace(profile, sae_sources=((2, str(good)),)), spec)
