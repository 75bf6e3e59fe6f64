import pytest
import torch

from helpers.hub import HubUnavailableError
from helpers.model.models import get_spec, load_hf, load_model, spec_of
from helpers.model.residuals import residuals
from helpers.model.tiny import byte_tokenizer
from helpers.profiles import get_profile


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def tiny(request):
    return load_model(request.param)


def test_residuals__equal_hidden_states_of_a_plain_forward(tiny):
    ids = torch.randint(0, 257, (3, 17))
    out = residuals(tiny, ids, [2, 0, 3])
    with torch.no_grad():
        hs = tiny._module(ids, output_hidden_states=True).hidden_states
    assert sorted(out) == [0, 2, 3]
    for layer, x in out.items():
        assert x.shape == (3, 17, spec_of(tiny).d_model)
        # resid_pre of block L is hidden_states[L]; an off-by-one would read L+1 (resid_post)
        torch.testing.assert_close(x, hs[layer], rtol=0, atol=0)


def test_residuals__bos_and_separator_tokens_are_not_masked_as_padding(tiny):
    """The byte tokenizer pads with <|endoftext|> (id 256), which is also our BOS: a trace that
    built an attention mask from pad ids would change every activation after it."""
    ids = torch.randint(0, 256, (2, 12))
    ids[:, 0] = 256
    ids[:, 6] = 256
    with torch.no_grad():
        hs = tiny._module(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(residuals(tiny, ids, [3])[3], hs[3], rtol=0, atol=0)


def test_residuals__layer_out_of_range_names_valid_range(tiny):
    with pytest.raises(ValueError, match=r"layer 4 is out of range .* valid layers are 0\.\.3"):
        residuals(tiny, torch.zeros(1, 4, dtype=torch.long), [0, 4])


def test_residuals__sequence_beyond_context_is_refused(tiny):
    n_ctx = spec_of(tiny).n_ctx
    with pytest.raises(ValueError, match=f"beyond .* context of {n_ctx} positions; use seq_len"):
        residuals(tiny, torch.zeros(1, n_ctx + 1, dtype=torch.long), [0])


def test_unknown_model_and_profile_name_the_choices():
    with pytest.raises(ValueError, match="unknown model 'gpt3'; choose one of .*smollm2-135m"):
        load_model("gpt3")
    with pytest.raises(ValueError, match="unknown profile 'fast'; choose one of .*offline"):
        get_profile("fast")


def test_hub_profile_fails_at_once_with_one_line_naming_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError) as err:
        load_hf("gpt2")
    msg = str(err.value)
    assert "\n" not in msg and "offline profile" in msg and "huggingface.co" in msg


def test_byte_tokenizer__ids_are_byte_values_and_round_trip():
    tok = byte_tokenizer()
    text = "héllo, <wörld>\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok("<|endoftext|>").input_ids == [256]


def test_tiny_gpt2_has_learned_position_embeddings_like_gpt2():
    hf, _ = load_hf("tiny-gpt2")
    assert hf.transformer.wpe.weight.shape == (1024, 64)
    assert get_spec("gpt2").learned_positions and not get_spec("smollm2-135m").learned_positions


def test_a_collection_resolves_the_model_spec_once(tmp_path, monkeypatch):
    """collect_profile and the CLI resolve the ModelSpec from the model's name once, at the top, and pass
    it along (requests, windows, shards and every residuals() pass read that one spec)."""
    from dataclasses import replace

    from helpers.data import collect as C
    from helpers.model import models

    calls, real = [], models.get_spec

    def counted(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(models, "get_spec", counted)
    profile = replace(
        get_profile("tiny"), tokens_main=4 * 64, tokens_other=2 * 64, shard_seqs=2, batch_size=2
    )
    stores = C.collect_profile(profile, tmp_path / "profile", progress=False)
    assert [s.n_tokens for s in stores.values()] == [4 * 64, 2 * 64]
    assert calls == ["tiny-llama"], f"the spec was resolved {len(calls)} times along one collection"
    calls.clear()
    args = "--model tiny-llama --corpus synthetic-a --layers 0 2 --tokens 128 --seq-len 32 --shard-seqs 2"
    C.main([*args.split(), "--out", str(tmp_path / "cli")])
    assert calls == ["tiny-llama"], f"the CLI resolved the spec {len(calls)} times"
