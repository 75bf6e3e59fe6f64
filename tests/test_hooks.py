"""helpers.model.hooks: every SAELens hook kind read through nnsight equals what transformers' own forward
(pre-)hooks capture on the plain HF modules, on tiny Llama, GPT-2 and (randomly initialised) Gemma 3."""

import copy
from types import SimpleNamespace

import pytest
import torch

from helpers.model.hooks import (
    KINDS,
    HookPoint,
    check_hooks,
    hook_activations,
    hook_width,
    layout_of,
    parse_hook,
)
from helpers.model.models import ModelSpec, hf_blocks, load_hf, load_model, spec_of, wrap
from helpers.model.residuals import residuals
from helpers.model.tiny import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# What each kind reads, written out independently of helpers.model.hooks.LAYOUTS:
# kind -> (sub-module of the block, "pre" = its first input / "post" = its output (element 0 if a tuple)).
REFERENCE = {
    "llama": {
        "hook_resid_pre": ("", "pre"),
        "hook_attn_out": ("self_attn", "post"),
        "mlp.hook_post": ("mlp.down_proj", "pre"),
        "hook_mlp_out": ("mlp", "post"),
        "hook_resid_post": ("", "post"),
    },
    "gpt2": {
        "hook_resid_pre": ("", "pre"),
        "hook_attn_out": ("attn", "post"),
        "mlp.hook_post": ("mlp.c_proj", "pre"),
        "hook_mlp_out": ("mlp", "post"),
        "hook_resid_post": ("", "post"),
    },
    # Gemma3DecoderLayer adds post_attention_layernorm(attn) and post_feedforward_layernorm(mlp)
    "gemma3_text": {
        "hook_resid_pre": ("", "pre"),
        "hook_attn_out": ("post_attention_layernorm", "post"),
        "mlp.hook_post": ("mlp.down_proj", "pre"),
        "hook_mlp_out": ("post_feedforward_layernorm", "post"),
        "hook_resid_post": ("", "post"),
    },
}
LAYERS = (1, 2)


def tiny_gemma3():
    """(nnsight model, plain HF copy with the same weights) of a 3-layer, d 64 random Gemma 3."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=None,
    )
    hf = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # Gemma's RMSNorm weights start at 0 (scale 1): make the post-norms matter
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    spec = ModelSpec("tiny-gemma3", "model.layers", 3, 64, 1024, 256, "byte <|endoftext|>", False, "random")
    return wrap(copy.deepcopy(hf), byte_tokenizer(), spec), hf


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def pair(request):
    """(nnsight model, plain transformers model with identical weights)."""
    if request.param == "tiny-gemma3":
        return tiny_gemma3()
    return load_model(request.param), load_hf(request.param)[0]


def _sub(module, path):
    for part in filter(None, path.split(".")):
        module = getattr(module, part)
    return module


def reference(hf, spec, ids, layers):
    """{name: tensor} captured by transformers' register_forward_(pre_)hook in a plain forward pass."""
    got, handles = {}, []
    table = REFERENCE[hf.config.model_type]
    for layer in layers:
        block = hf_blocks(hf, spec)[layer]
        for kind, (path, when) in table.items():
            name = HookPoint(layer, kind).name
            module = _sub(block, path)
            if when == "pre":

                def pre(mod, args, kwargs, name=name):
                    got[name] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(mod, args, out, name=name):
                    got[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

                handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        for h in handles:
            h.remove()
    return got


def test_every_kind__equals_transformers_forward_hooks(pair):
    model, hf = pair
    spec = spec_of(model)
    ids = torch.randint(0, 257, (2, 13))
    names = [HookPoint(layer, kind).name for layer in LAYERS for kind in KINDS]
    out = hook_activations(model, ids, names[::-1])  # any order in; read in forward order
    ref = reference(hf, spec, ids, LAYERS)
    assert sorted(out) == sorted(names)
    for name in names:
        width = hook_width(model, spec, name)
        assert out[name].shape == (2, 13, width), name
        assert out[name].dtype == torch.float32 and out[name].device.type == "cpu"
        torch.testing.assert_close(out[name], ref[name].float(), rtol=0, atol=1e-5, msg=name)


def test_resid_pre__equals_residuals_and_resid_post_is_next_resid_pre(pair):
    model, _ = pair
    ids = torch.randint(0, 257, (2, 11))
    out = hook_activations(
        model, ids, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"]
    )
    res = residuals(model, ids, [0, 1])
    torch.testing.assert_close(out["blocks.0.hook_resid_pre"], res[0], rtol=0, atol=0)
    torch.testing.assert_close(out["blocks.1.hook_resid_pre"], res[1], rtol=0, atol=0)
    torch.testing.assert_close(out["blocks.0.hook_resid_post"], res[1], rtol=0, atol=1e-6)


def test_resid_pre_plus_attn_out_plus_mlp_out__is_resid_post(pair):
    """The residual adds exactly attn_out and mlp_out (Gemma 3: after their post-norms)."""
    model, _ = pair
    ids = torch.randint(0, 257, (2, 9))
    kinds = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
    out = hook_activations(model, ids, [HookPoint(2, k) for k in kinds])
    pre, attn, mlp, post = (out[f"blocks.2.{k}"] for k in kinds)
    torch.testing.assert_close(pre + attn + mlp, post, rtol=0, atol=1e-5)


def test_hook_width__d_mlp_for_mlp_post_else_d_model(pair):
    model, hf = pair
    spec = spec_of(model)
    d_mlp = {"llama": 256, "gpt2": 256, "gemma3_text": 128}[hf.config.model_type]
    assert hook_width(model, spec, "blocks.1.mlp.hook_post") == d_mlp
    assert hook_width(hf, spec, "blocks.1.mlp.hook_post") == d_mlp  # a plain transformers model too
    assert hook_width(model, spec, "blocks.1.hook_attn_out") == spec.d_model


def test_bf16__resid_pre_still_equals_residuals():
    model = load_model("tiny-llama")
    ids = torch.randint(0, 257, (2, 10))
    out = hook_activations(model, ids, ["blocks.2.hook_resid_pre", "blocks.2.mlp.hook_post"], "bfloat16")
    torch.testing.assert_close(
        out["blocks.2.hook_resid_pre"], residuals(model, ids, [2], precision="bfloat16")[2], rtol=0, atol=0
    )


def test_parse_hook__round_trips_and_names_valid_kinds():
    for kind in KINDS:
        assert parse_hook(f"blocks.3.{kind}") == HookPoint(3, kind)
        assert parse_hook(HookPoint(3, kind)).name == f"blocks.3.{kind}"
    for bad in ("blocks.1.hook_foo", "blocks.x.hook_resid_pre", "resid_pre", "blocks.1"):
        with pytest.raises(ValueError, match="valid kinds: hook_resid_pre") as err:
            parse_hook(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="valid kinds"):
        HookPoint(0, "resid_pre")


def test_check_hooks__layer_out_of_range_and_unsupported_architecture():
    model = load_model("tiny-gpt2")
    spec = spec_of(model)
    with pytest.raises(
        ValueError, match=r"layer 4 is out of range for tiny-gpt2; valid layers are 0\.\.3"
    ) as e:
        hook_activations(model, torch.zeros(1, 3, dtype=torch.long), ["blocks.4.hook_mlp_out"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="out of range"):
        check_hooks(model, spec, ["blocks.-1.hook_resid_pre"])
    assert [
        p.name for p in check_hooks(model, spec, ["blocks.1.hook_resid_post", "blocks.1.hook_attn_out"])
    ] == [
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_post",
    ]
    with pytest.raises(ValueError, match=r"architecture 'bert'.*supported: gemma3_text, gpt2, llama"):
        layout_of(SimpleNamespace(config=SimpleNamespace(model_type="bert")))


def test_check_hooks__missing_module_is_named():
    model = load_model("tiny-llama")
    spec = spec_of(model)
    hf = copy.deepcopy(model._module)
    del hf.model.layers[1].mlp.down_proj
    with pytest.raises(ValueError, match=r"tiny-llama has no module model\.layers\.1\.mlp\.down_proj"):
        check_hooks(hf, spec, ["blocks.1.mlp.hook_post"])
