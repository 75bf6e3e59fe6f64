"""Remote models: trace a model that does not fit locally on NDIF through nnsight (`remote=True`).

What: `load_remote(name)` returns an nnsight model (weights never downloaded: nnsight builds it
on the meta device from the Hugging Face config) marked so that `helpers.activations.residuals`
and `residuals_and_logits` pass `remote=True` to `model.trace`; the request runs on NDIF
(https://ndif.us) and only the saved residuals come back. `require_ndif()` checks, before any
request, that an API key is configured and the NDIF host accepts a TCP connection (3 s, once, no
retries), and otherwise raises ONE line naming what to set.
`load_remote(name, remote="local")` runs nnsight's serverless dry run of the same path (the
request is serialised and executed in-process) on a local model: that is what the offline tests
check.

A real run (needs the network, an NDIF key from https://login.ndif.us, and a Hugging Face token
with access to the gated Llama repo for its config):

    export NDIF_API_KEY=...   # or: python -c "import nnsight; nnsight.CONFIG.set_default_api_key('...')"
    export HF_TOKEN=...
    python -m helpers.collect --model llama-3.1-8b --corpus python-docs --layers 8 16 \
        --tokens 65536 --seq-len 512 --out data/activations/llama-3.1-8b/python-docs

Which models NDIF serves changes over time (https://nnsight.net/status); `NDIF_REPOS` maps our
registry names to the repo ids NDIF hosts.
"""
from __future__ import annotations

import os
import warnings
from urllib.parse import urlparse

from .hub import tcp_reachable

NDIF_REPOS = {"llama-3.1-8b": "meta-llama/Llama-3.1-8B"}
KEY_HELP = ("set NDIF_API_KEY (a key from https://login.ndif.us) or run "
            "`python -c \"import nnsight; nnsight.CONFIG.set_default_api_key('KEY')\"`")


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
        raise RemoteUnavailableError(f"{what} runs on NDIF, but {cfg.API.HOST} is unreachable from this machine; "
                                     "remote tracing needs the network (NDIF_HOST overrides the host)")


def load_remote(name: str, remote: bool | str = True):
    """An nnsight model whose traces run on NDIF (`remote=True`) or through nnsight's local dry run of
    the remote path (`remote="local"`, any local registry model). `spec_of(model)` works as usual."""
    from .models import get_spec, load_hf, wrap

    spec = get_spec(name)
    if remote == "local":
        if spec.source == "ndif":
            raise ValueError(f"{name} has no local weights; remote='local' dry-runs a local model such as tiny-llama")
        model = wrap(*load_hf(name), name)
    elif remote is True:
        if name not in NDIF_REPOS:
            raise ValueError(f"{name} is not served by NDIF here; remote models: {sorted(NDIF_REPOS)}")
        require_ndif(f"model {name!r}")
        from .hub import require_hub

        require_hub(f"the config of {NDIF_REPOS[name]} (nnsight builds the remote model's skeleton from it)")
        from nnsight.modeling.transformers import TransformersModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TransformersModel(NDIF_REPOS[name], task="text-generation")  # meta device: config only
        model._sae_lab_name = name
    else:
        raise ValueError(f"remote must be True or 'local', not {remote!r}")
    model._sae_lab_remote = remote
    return model


def remote_of(model) -> bool | str:
    """The `remote=` value traces of this model use (False for a local model)."""
    return getattr(model, "_sae_lab_remote", False)
