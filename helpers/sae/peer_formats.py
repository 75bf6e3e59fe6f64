"""SAEs saved by the peer libraries, read into this lab's SAE classes with their exact encode/decode.

What: `detect_layout(path)` names the layout of a directory from its files, `load_dictionary_learning`
(saprmarks/dictionary_learning 0.1.0: `trainSAE` writes <save_dir>/trainer_<i>/{ae.pt, config.json})
and `load_sparsify` (EleutherAI/sparsify: one directory per hookpoint with {cfg.json, sae.safetensors}).
SAELens's own layout is helpers.sae.io. `helpers.sae.load_sae` dispatches on `detect_layout`.

Format facts, read from the libraries' own code (their installed packages, versions above):
- dictionary_learning: config.json {"trainer": {"dict_class", "activation_dim", "dict_size", "k",
  "lm_name", "layer", "submodule_name", ...}, "buffer": {...}}; ae.pt is the state dict of
  `dict_class`, biases already scaled back to raw activations by trainSAE (`scale_biases`).
  AutoEncoder (standard):  bias [d], encoder.{weight [m, d], bias [m]}, decoder.weight [d, m];
      encode = relu(encoder(x - bias)), decode = decoder(f) + bias; `from_pretrained` (default
      normalize_decoder=True) divides the decoder columns by their norms and multiplies the encoder
      rows and biases by them (same reconstruction, rescaled codes): loaded here the same way.
  AutoEncoderTopK:  encoder.*, decoder.weight, b_dec, k, threshold;
      encode = top-k of relu(encoder(x - b_dec)) (its default, use_threshold=False).
  BatchTopKSAE:  the same tensors; encode = relu(pre) * (relu(pre) > threshold) (default use_threshold=True).
  JumpReluAutoEncoder:  W_enc [d, m], b_enc, W_dec [m, d], b_dec, threshold [m];
      encode = relu(pre * (pre > threshold)), pre = x @ W_enc + b_enc (apply_b_dec_to_input is False).
- sparsify: cfg.json {"expansion_factor", "normalize_decoder", "num_latents", "k", "multi_topk",
  "skip_connection", "transcode", "d_in"}; sae.safetensors {encoder.weight [m, d], encoder.bias [m],
  W_dec [m, d], b_dec [d]} (+ W_skip with a skip connection, not supported here);
  encode = top-k of relu(encoder(x - b_dec)), decode = codes @ W_dec + b_dec.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.checks import load_safetensors, read_json, require_keys
from helpers.sae.base import REGISTRY, SAE, SAEConfig, SAEError

LAYOUTS = {
    "sae_lens": ("cfg.json", "sae_weights.safetensors"),
    "dictionary_learning": ("ae.pt", "config.json"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}


def dictionary_learning_classes() -> dict[str, type[SAE]]:
    """{dictionary_learning class name: our SAE class}, from each architecture's
    `dictionary_learning_classes` (the class loads that state dict with `from_dictionary_learning`)."""
    return {
        name: cls for cls in REGISTRY.values() for name in cls.__dict__.get("dictionary_learning_classes", ())
    }


def detect_layout(path: str | Path) -> str:
    """'sae_lens' | 'dictionary_learning' | 'sparsify' from the files in `path` (one line naming
    what was found otherwise)."""
    path = Path(path)
    if not path.is_dir():
        raise SAEError(f"{path} is not a directory; pass the folder that holds the SAE's files")
    names = {p.name for p in path.iterdir()}
    for layout, files in LAYOUTS.items():
        if set(files) <= names:
            return layout
    if "ae.pt" in names:
        return "dictionary_learning"  # config.json is optional for the weights themselves
    if "cfg.json" in names:  # a config without its weights: the loader names the missing file
        try:
            cfg = json.loads((path / "cfg.json").read_text())
        except (OSError, ValueError):
            cfg = {}
        return "sparsify" if isinstance(cfg, dict) and "num_latents" in cfg else "sae_lens"
    found = ", ".join(sorted(names)[:8]) or "nothing"
    raise SAEError(
        f"{path} holds no SAE layout this lab reads (found: {found}); expected SAELens "
        "(cfg.json + sae_weights.safetensors), dictionary_learning (ae.pt + config.json) or sparsify "
        "(cfg.json + sae.safetensors, one folder per hookpoint)"
    )


@torch.no_grad()
def _copy(sae: SAE, tensors: dict[str, torch.Tensor], path: Path) -> SAE:
    for name, value in tensors.items():
        dst = getattr(sae, name)
        if tuple(value.shape) != tuple(dst.shape):
            raise SAEError(
                f"{path}: {name} has shape {tuple(value.shape)} but the SAE needs {tuple(dst.shape)}; "
                "the weights and the config disagree (re-export the SAE)"
            )
        dst.copy_(value.to(dst.dtype))
    return sae


def load_dictionary_learning(path: str | Path) -> SAE:
    """A dictionary_learning trainer directory (ae.pt + config.json) as one of our SAEs."""
    path = Path(path)
    fix = "point at a trainer_<i> folder written by dictionary_learning's trainSAE"
    cfg = (
        read_json(path / "config.json", "dictionary_learning config", fix, SAEError)
        if (path / "config.json").exists()
        else {"trainer": {}}
    )
    trainer = cfg.get("trainer") or {}
    try:
        state = torch.load(path / "ae.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure gets the same one line
        raise SAEError(
            f"{path / 'ae.pt'} is not a readable torch state dict ({type(err).__name__}); {fix}"
        ) from None
    classes = dictionary_learning_classes()
    cls = trainer.get("dict_class") or _sniff_class(state, classes)
    if cls not in classes:
        raise SAEError(
            f"{path}: dictionary_learning class {cls!r} is not supported; supported: {sorted(classes)}"
        )
    meta = {
        "source": "dictionary_learning",
        "dict_class": cls,
        "model_name": trainer.get("lm_name"),
        "layer": trainer.get("layer"),
        "hook_name": trainer.get("submodule_name"),
    }
    sae_cls = classes[cls]
    require_keys(state, sae_cls.dictionary_learning_keys, path / "ae.pt", f"{cls} state", fix, SAEError)
    try:
        return sae_cls.from_dictionary_learning(state, meta)
    except SAEError as err:
        raise SAEError(f"{path}: {err}; the weights and the config disagree (re-export the SAE)") from None


def _sniff_class(state: dict, classes: dict[str, type[SAE]]) -> str | None:
    """Without config.json: the class whose `dictionary_learning_keys` the state holds, the one needing
    the fewest when several fit (a TopK state holds a threshold buffer too, as a BatchTopK one does)."""
    fits = [
        (len(c.dictionary_learning_keys), name)
        for name, c in classes.items()
        if set(c.dictionary_learning_keys) <= set(state)
    ]
    return min(fits)[1] if fits else None


def linear_layout(
    cls: type[SAE], state: dict[str, torch.Tensor], metadata: dict, b_dec_key: str = "b_dec"
) -> tuple[SAE, dict[str, torch.Tensor]]:
    """dictionary_learning's nn.Linear layout (encoder.weight [d_sae, d_in], encoder.bias,
    decoder.weight [d_in, d_sae], b_dec, optional k) as an SAE of `cls` with those weights, and the
    tensors in our names (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec)."""
    d_sae, d_in = state["encoder.weight"].shape
    k = int(state["k"]) if "k" in state else None
    t = {
        "W_enc": state["encoder.weight"].T,
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"].T,
        "b_dec": state[b_dec_key],
    }
    return cls(SAEConfig(cls.architecture, d_in, d_sae, k=k, metadata=metadata)), t


def load_sparsify(path: str | Path) -> SAE:
    """One hookpoint folder of an EleutherAI sparsify checkpoint (cfg.json + sae.safetensors)."""
    path = Path(path)
    fix = "point at one hookpoint folder of a sparsify checkpoint (it holds cfg.json and sae.safetensors)"
    cfg = read_json(path / "cfg.json", "sparsify config", fix, SAEError)
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag):
            raise SAEError(
                f"{path}: sparsify {flag}=true is not supported here (a transcoder, not an SAE); {fix}"
            )
    if cfg.get("activation", "topk") != "topk":
        raise SAEError(f"{path}: sparsify activation {cfg['activation']!r} is not supported here; only topk")
    if not (path / "sae.safetensors").exists():
        raise SAEError(f"{path / 'sae.safetensors'} not found; {fix}")
    t = load_safetensors(path / "sae.safetensors", fix, SAEError)
    require_keys(
        t,
        ("encoder.weight", "encoder.bias", "W_dec", "b_dec"),
        path / "sae.safetensors",
        "sparsify weights",
        fix,
        SAEError,
    )
    d_sae, d_in = t["encoder.weight"].shape
    k = int(cfg["k"])
    meta = {"source": "sparsify", "multi_topk": bool(cfg.get("multi_topk", False)), "hook_name": path.name}
    sae = REGISTRY["topk"](SAEConfig("topk", d_in, d_sae, k=k, metadata=meta))
    return _copy(
        sae,
        {
            "W_enc": t["encoder.weight"].T,
            "b_enc": t["encoder.bias"],
            "W_dec": t["W_dec"],
            "b_dec": t["b_dec"],
        },
        path,
    )
