"""Save and load SAEs in SAELens's on-disk format (a directory with cfg.json + sae_weights.safetensors).

What: `save_sae(sae, path)` writes the SAELens v6 layout; `load_sae(path)` reads it, SAELens's own
files of every architecture here, and the pre-v6 layout of older releases (e.g. jbloom's
gpt2-small-res-jb: flat cfg.json with hook_point / hook_point_layer, no `architecture`).
Why: SAEs trained here open in SAELens and vice versa.

Nothing here names an architecture: each SAE class gives its SAELens name (`saelens()`), the tensors
it saves (`disk_tensors`), how a SAELens file's tensors become its own (`from_saelens_tensors`) and
how each is loaded (`load_tensor`); see helpers.sae.base.

Format facts, read from SAELens (decoderesearch/SAELens, sae_lens/saes/sae.py `SAEConfig.to_dict`,
`save_model`; sae_lens/saes/*_sae.py;
sae_lens/loading/pretrained_sae_loaders.py `handle_pre_6_0_config`, `read_sae_components_from_disk`):
- cfg.json (v6): d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations,
  reshape_activations, metadata {model_name, hook_name, hook_layer, context_size, dataset_path,
  prepend_bos, sae_lens_version, ...}, architecture; topk adds k, rescale_acts_by_decoder_norm.
  A config without a v6 sae_lens_version is pre-6: keys hook_point -> hook_name,
  hook_point_layer -> hook_layer, architecture defaults to "standard", activation_fn "topk" with
  activation_fn_kwargs.k means topk, normalize_activations may be a bool.
- tensors: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, plus each architecture's own
  (thresholds, gates: the class's `extra_tensors`); an all-ones `scaling_factor` is dropped, others
  fold into W_dec.
Our extra metadata (seed, corpus, layer, training_tokens, train_config) sits beside SAELens's keys
under "metadata".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from helpers.checks import load_safetensors, read_json, require_keys
from helpers.sae.base import SAE, SAEConfig, SAEError, from_saelens_name, get_sae_class
from helpers.sae.hub_sources import fetch, is_hub_source
from helpers.sae.peer_formats import detect_layout, load_dictionary_learning, load_sparsify

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FORMAT_VERSION = "6.0.0"  # tells SAELens >= 6 to read the v6 layout (its handle_config_defaulting)
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "model_class_name",
    "hook_layer",
    "hook_head_index",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "sae_lens_version",
    "sae_lens_training_version",
)
PRE6_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sae_state_for_disk(sae: SAE) -> dict[str, torch.Tensor]:
    """Tensors under SAELens's names for the SAE's architecture (SAE.disk_tensors)."""
    return sae.disk_tensors()


def sae_cfg_for_disk(sae: SAE) -> dict[str, Any]:
    c = sae.cfg
    meta = {"sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": None, **c.metadata}
    out: dict[str, Any] = {
        "architecture": sae.saelens_inference or sae.saelens(),
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": c.device,
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": c.normalize_activations,
        "reshape_activations": "none",
        "metadata": meta,
    }
    if sae.uses_k and not sae.saelens_inference:  # an inference export keeps k in its metadata
        out |= {"k": c.k, "rescale_acts_by_decoder_norm": False}
    if c.tied:
        out["tied"] = True
    if c.n_layers > 1:
        out["n_layers"] = c.n_layers
    return out


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write `sae` to directory `path` (cfg.json + sae_weights.safetensors, each atomically).

    The weights are written as they are: the trainer folds its input norm scale in first, so a
    trained SAE saved here takes raw activations.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = sae_state_for_disk(sae)
    _atomic_write(path / WEIGHTS_FILENAME, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(sae_cfg_for_disk(sae), indent=2)
    _atomic_write(path / CFG_FILENAME, lambda tmp: Path(tmp).write_text(text))
    return path


# ---------------------------------------------------------------------------- loading
def _is_v6(cfg: dict[str, Any]) -> bool:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    try:
        return version is not None and int(str(version).split(".")[0]) >= 6
    except ValueError:
        return False


def normalize_cfg_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """Any SAELens cfg.json (v6 or older) -> kwargs for our SAEConfig."""
    if _is_v6(raw) or "metadata" in raw or "meta" in raw:
        cfg = dict(raw)
        meta = dict(cfg.pop("metadata", None) or cfg.pop("meta", None) or {})
    else:  # pre-6 flat layout
        cfg = {PRE6_RENAMES.get(k, k): v for k, v in raw.items()}
        cfg.setdefault("architecture", "standard")
        if (
            cfg.get("activation_fn") == "topk"
            and (cfg.get("activation_fn_kwargs") or {}).get("k") is not None
        ):
            cfg["architecture"], cfg["k"] = "topk", cfg["activation_fn_kwargs"]["k"]
        meta = {k: cfg[k] for k in METADATA_KEYS if k in cfg}
        meta |= {k: cfg[k] for k in ("seed", "training_tokens", "total_training_tokens") if k in cfg}
    arch = from_saelens_name(cfg.get("architecture", "standard"), meta.get("training_architecture"))
    meta = get_sae_class(arch).saelens_metadata(raw, meta)
    k = cfg.get("k", (meta.get("training_architecture_details") or {}).get("k"))
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        norm = "expected_average_only_in" if norm else "none"
    dtype = str(cfg.get("dtype", "float32")).replace("torch.", "")
    return {
        "architecture": arch,
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["d_sae"]),
        "k": None if k is None or not get_sae_class(arch).uses_k else int(k),
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "normalize_activations": norm,
        "tied": bool(cfg.get("tied", False)),
        "n_layers": int(cfg.get("n_layers", 1)),
        "metadata": meta,
    }


def read_cfg(path: str | Path) -> dict[str, Any]:
    """The raw cfg.json of a saved SAE directory."""
    f = Path(path) / CFG_FILENAME
    if not f.exists():
        raise SAEError(f"{f} not found; pass a directory holding cfg.json and {WEIGHTS_FILENAME}")
    fix = "save the SAE again (helpers.sae.save_sae) or restore cfg.json"
    cfg = read_json(f, "SAE config", fix, SAEError)
    require_keys(cfg, ("d_in", "d_sae"), f, "SAE config", fix, SAEError)
    return cfg


@torch.no_grad()
def _convert_tensors(
    t: dict[str, torch.Tensor], cls: type[SAE], raw_cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    t = dict(t)
    sf = t.pop("scaling_factor", None)  # finetuning scale on codes: x_hat = (f * s) @ W_dec
    if sf is not None and not torch.allclose(sf, torch.ones_like(sf)):
        t["W_dec"] = t["W_dec"] * sf[:, None]
    return cls.from_saelens_tensors(t, raw_cfg)


def load_sae(path: str | Path, architecture: str | None = None, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE directory (or a hub source, helpers.sae.hub_sources: "sae_lens:<release>/<id>",
    "hf:<owner>/<repo>/<folder>") as one of our SAE classes, its layout detected from its files: SAELens
    (ours, SAELens v6, or pre-v6), dictionary_learning (ae.pt + config.json) or sparsify (cfg.json +
    sae.safetensors), with the source's encode semantics (helpers.sae.peer_formats).

    `architecture` (a key of helpers.sae.REGISTRY), when given, must match the file.
    """
    source = path
    path = fetch(path) if is_hub_source(path) else Path(path)
    layout = detect_layout(path)
    if layout != "sae_lens":
        sae = (load_dictionary_learning if layout == "dictionary_learning" else load_sparsify)(path)
        if architecture is not None and architecture != sae.architecture:
            raise SAEError(
                f"{path} holds a {sae.architecture!r} SAE ({layout}), not {architecture!r}; "
                f"load it with architecture={sae.architecture!r}"
            )
        sae.cfg.metadata["source"] = str(source)
        return sae.to(torch.device(device))
    raw_cfg = read_cfg(path)
    kw = normalize_cfg_dict(raw_cfg)
    if architecture is not None and architecture != kw["architecture"]:
        raise SAEError(
            f"{path} holds a {kw['architecture']!r} SAE, not {architecture!r}; "
            f"load it with architecture={kw['architecture']!r}"
        )
    if kw["normalize_activations"] != "none":
        import warnings

        warnings.warn(
            f"{path}: normalize_activations={kw['normalize_activations']!r} and its scale factor is "
            "not stored in the file; the SAE expects pre-scaled inputs",
            stacklevel=2,
        )
    cfg = SAEConfig(**(kw | {"device": str(torch.device(device))}))
    sae = get_sae_class(cfg.architecture)(cfg)
    wfile = path / WEIGHTS_FILENAME
    if not wfile.exists():
        raise SAEError(f"{wfile} not found; the directory must hold {WEIGHTS_FILENAME} beside cfg.json")
    t = _convert_tensors(
        load_safetensors(wfile, "save the SAE again (helpers.sae.save_sae) or re-download it", SAEError),
        type(sae),
        raw_cfg,
    )
    _load_tensors(sae, t, path)
    if is_hub_source(source):
        sae.cfg.metadata["source"] = source
    return sae


@torch.no_grad()
def _load_tensors(sae: SAE, t: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(sae.disk_tensors())
    missing, extra = expected - set(t), set(t) - expected
    if missing or extra:
        raise SAEError(
            f"{path}: tensors do not fit a {sae.architecture!r} SAE (missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}); is cfg.json's architecture right?"
        )
    for name in sorted(expected):
        try:
            sae.load_tensor(name, t[name])
        except SAEError as err:
            raise SAEError(f"{path}: {err}") from None
