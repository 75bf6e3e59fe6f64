"""Spliced passes run from their layer up (helpers.model.splice) equal full nnsight passes."""

import pytest
import torch

from helpers.model.models import load_model
from helpers.model.residuals import logits_with_resid, residuals_and_logits
from helpers.model.splice import logits_from


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def tiny(request):
    return load_model(request.param)


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_a_splice_from_its_layer_equals_the_full_spliced_pass(tiny, layer):
    ids = torch.randint(0, 256, (2, 9))
    resid, clean = residuals_and_logits(tiny, ids, [layer])
    keep = torch.zeros(2, 9, dtype=torch.bool)
    keep[:, 0] = True
    edit = lambda x: 0.5 * x.flip(-1) - 0.3  # noqa: E731
    x = resid[layer]
    got = logits_from(tiny, ids, layer, torch.where(keep[..., None], x, edit(x)))
    want = logits_with_resid(tiny, ids, layer, edit, keep)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - clean).abs().max() > 1e-3, "the splice changed nothing"


def test_the_skipped_blocks_run_again_afterwards(tiny):
    ids = torch.randint(0, 256, (2, 9))
    before = residuals_and_logits(tiny, ids, [0])[1]
    logits_from(tiny, ids, 3, torch.zeros(2, 9, tiny._module.config.hidden_size))
    torch.testing.assert_close(residuals_and_logits(tiny, ids, [0])[1], before, rtol=0, atol=0)
    torch.testing.assert_close(logits_with_resid(tiny, ids, 0), before, rtol=0, atol=1e-5)


def test_a_wrong_shape_names_the_expected_one(tiny):
    ids = torch.randint(0, 256, (2, 9))
    with pytest.raises(ValueError, match=r"x must be \[B, T, d\]"):
        logits_from(tiny, ids, 1, torch.zeros(2, 8, tiny._module.config.hidden_size))


def test_the_blocks_below_the_splice_do_not_run(tiny):
    from helpers.model.models import hf_blocks, spec_of

    ids = torch.randint(0, 256, (2, 9))
    blocks = hf_blocks(tiny._module, spec_of(tiny))
    calls = {i: 0 for i in range(len(blocks))}
    handles = [
        sub.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks)
        for sub in b.children()
    ]
    try:
        logits_from(tiny, ids, 2, torch.zeros(2, 9, tiny._module.config.hidden_size))
    finally:
        for h in handles:
            h.remove()
    assert [calls[i] > 0 for i in range(len(blocks))] == [i >= 2 for i in range(len(blocks))]
