"""Splicing into and ablating the residual stream through nnsight (helpers.model.residuals)."""

import pytest
import torch

from helpers.model.models import load_model
from helpers.model.residuals import logits_with_resid, residuals


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def tiny(request):
    return load_model(request.param)


def test_splicing_the_identity_gives_the_clean_logits_and_zero_changes_them(tiny):
    ids = torch.randint(0, 256, (2, 9))
    clean = logits_with_resid(tiny, ids, 2)
    torch.testing.assert_close(logits_with_resid(tiny, ids, 2, lambda x: x.clone()), clean, rtol=0, atol=0)
    zero = logits_with_resid(tiny, ids, 2, torch.zeros_like)
    assert (zero - clean).abs().amax(-1).min() > 1e-3, "every position changes under ablation"


def test_splicing_keeps_the_listed_positions_clean(tiny):
    ids = torch.randint(0, 256, (2, 9))
    clean = logits_with_resid(tiny, ids, 1)
    kept = logits_with_resid(tiny, ids, 1, torch.zeros_like, keep_positions=(0,))
    # causal: position 0's logits see only position 0, which kept its residual
    torch.testing.assert_close(kept[:, 0], clean[:, 0], rtol=0, atol=1e-6)
    assert (kept[:, 1] - clean[:, 1]).abs().max() > 1e-3


def test_zeroing_learned_position_embeddings_leaves_only_token_embeddings():
    model = load_model("tiny-gpt2")
    ids = torch.randint(0, 256, (2, 9))
    got = residuals(model, ids, [0], position_ablation="zero")[0]
    torch.testing.assert_close(got, model._module.transformer.wte(ids), rtol=0, atol=1e-6)
    shuffled = residuals(model, ids, [0], position_ablation="shuffle", seed=3)[0]
    wte, wpe = model._module.transformer.wte(ids), model._module.transformer.wpe.weight[:9]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(shuffled, wte + wpe[perm], rtol=0, atol=1e-6)


def test_rope_ablation_edits_position_ids():
    model = load_model("tiny-llama")
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        ref = model._module(
            ids, position_ids=torch.zeros(2, 9, dtype=torch.long), output_hidden_states=True
        ).hidden_states[3]
    torch.testing.assert_close(
        residuals(model, ids, [3], position_ablation="zero")[3], ref, rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown position ablation 'drop'"):
        residuals(model, ids, [0], position_ablation="drop")


def test_splicing_with_a_token_mask_keeps_exactly_the_masked_tokens():
    model = load_model("tiny-llama")
    ids = torch.randint(0, 256, (2, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 0] = mask[1, 0] = True
    by_mask = logits_with_resid(model, ids, 1, torch.zeros_like, keep_positions=mask)
    by_pos = logits_with_resid(model, ids, 1, torch.zeros_like, keep_positions=(0,))
    torch.testing.assert_close(by_mask, by_pos, rtol=0, atol=0)
    with pytest.raises(ValueError, match="keep mask"):
        logits_with_resid(model, ids, 1, torch.zeros_like, keep_positions=mask[:, :3])


@pytest.mark.parametrize("ablation", [None, "shuffle"])
def test_residuals_and_logits__one_pass_equals_the_two_separate_calls(tiny, ablation):
    from helpers.model.residuals import residuals_and_logits

    ids = torch.randint(0, 256, (2, 9))
    res, logits = residuals_and_logits(tiny, ids, [0, 2], ablation, seed=1)
    ref = residuals(tiny, ids, [0, 2], ablation, seed=1)
    for layer in (0, 2):
        torch.testing.assert_close(res[layer], ref[layer], rtol=0, atol=0)
    torch.testing.assert_close(logits, logits_with_resid(tiny, ids, 0, None, (), ablation, 1), rtol=0, atol=0)


def test_bf16_residuals__the_first_positions_are_the_fp32_ones(tiny):
    from helpers.model.residuals import FP32_PREFIX

    ids = torch.randint(0, 256, (2, 12))
    ref = residuals(tiny, ids, [1, 3], precision="float32")
    out = residuals(tiny, ids, [1, 3], precision="bfloat16")
    for layer in (1, 3):
        # causal attention: positions < FP32_PREFIX of the full fp32 pass equal an fp32 pass over them alone
        torch.testing.assert_close(
            out[layer][:, :FP32_PREFIX], ref[layer][:, :FP32_PREFIX], rtol=1e-5, atol=1e-5
        )
        assert (out[layer][:, FP32_PREFIX:] - ref[layer][:, FP32_PREFIX:]).abs().max() > 0, (
            "the rest ran in bf16"
        )
