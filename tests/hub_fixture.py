"""A local Hugging Face cache that holds what the `gpt2` and `gpt2-jb` profiles fetch, at toy size.

The same code that runs online - `from_pretrained("openai-community/gpt2")`, `load_dataset(
"NeelNanda/pile-10k")`, `load_dataset("roneneldan/TinyStories", streaming=True)`, and the SAELens
release `gpt2-small-res-jb` through `huggingface_hub.snapshot_download` - runs against it with
HF_HUB_OFFLINE=1, so CI walks the post's chain without a network:
- hub/models--openai-community--gpt2: a randomly initialised GPT2LMHeadModel (the real class, learned
  wpe; 4 blocks, d_model 64) and a 257-token byte-level tokenizer, as `save_pretrained` writes them;
- datasets/NeelNanda___pile-10k, datasets/roneneldan___tiny_stories: the datasets cache that
  `load_dataset` falls back to offline (arrow files and dataset_info.json written by `datasets`' own
  parquet builder, placed under the names a hub download gets);
- hub/models--jbloom--GPT2-Small-SAEs-Reformatted: per layer blocks.<L>.hook_resid_pre/ with the
  release's pre-v6 SAELens files: a flat cfg.json (hook_point, hook_point_layer, ...),
  sae_weights.safetensors (W_enc, b_enc, W_dec, b_dec) and sparsity.safetensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

REV = "fa1e0000fa1e0000fa1e0000fa1e0000fa1e0000"
GPT2_REPO = "openai-community/gpt2"
JB_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"
D_MODEL, N_LAYERS = 64, 4


def _snapshot(hub: Path, repo: str, kind: str = "models") -> Path:
    root = hub / f"{kind}--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    snap = root / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _gpt2(hub: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from helpers.model.tiny import byte_tokenizer

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=257,
        n_positions=256,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=4,
        bos_token_id=256,
        eos_token_id=256,
    )
    snap = _snapshot(hub, GPT2_REPO)
    GPT2LMHeadModel(cfg).save_pretrained(snap)
    byte_tokenizer().save_pretrained(snap)


def _dataset(cache: Path, work: Path, repo: str, columns: dict[str, list]) -> None:
    """The datasets cache entry of `repo` (what an online `load_dataset(repo)` leaves behind)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.naming import camelcase_to_snakecase

    name = repo.split("/")[-1]
    work.mkdir(parents=True, exist_ok=True)
    parquet = work / f"{name}.parquet"
    pq.write_table(pa.table(columns), parquet)
    builder = datasets.load_dataset_builder(
        "parquet", data_files={"train": str(parquet)}, cache_dir=str(work)
    )
    builder.download_and_prepare()
    built = Path(builder.cache_dir)  # <work>/parquet/<config>/<version>/<hash>
    owner = repo.split("/")[0]
    dest = cache / f"{owner}___{camelcase_to_snakecase(name)}" / "default" / built.parent.name / built.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in built.iterdir():
        shutil.copy(f, dest / f.name.replace("parquet-", f"{camelcase_to_snakecase(name)}-"))


def _jb_saes(hub: Path, d_sae: int = 4 * D_MODEL) -> None:
    """Standard (ReLU) SAEs in the release's pre-v6 layout, one folder per resid_pre layer."""
    from safetensors.torch import save_file

    snap = _snapshot(hub, JB_REPO)
    for layer in range(N_LAYERS):
        g = torch.Generator().manual_seed(layer)
        W_dec = torch.randn(d_sae, D_MODEL, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        folder = snap / f"blocks.{layer}.hook_resid_pre"
        folder.mkdir(exist_ok=True)
        save_file(
            {
                "W_enc": W_dec.T.contiguous(),
                "b_enc": torch.zeros(
                    d_sae
                ),  # about half the latents fire on any input: a dense smoke-test SAE
                "W_dec": W_dec,
                "b_dec": torch.zeros(D_MODEL),
            },
            folder / "sae_weights.safetensors",
        )
        save_file({"sparsity": torch.full((d_sae,), -3.0)}, folder / "sparsity.safetensors")
        cfg = {
            "model_name": "gpt2-small",
            "hook_point": f"blocks.{layer}.hook_resid_pre",
            "hook_point_layer": layer,
            "hook_point_head_index": None,
            "dataset_path": "Skylion007/openwebtext",
            "is_dataset_tokenized": False,
            "context_size": 128,
            "d_in": D_MODEL,
            "d_sae": d_sae,
            "expansion_factor": d_sae // D_MODEL,
            "b_dec_init_method": "geometric_median",
            "l1_coefficient": 8e-05,
            "lr": 0.0004,
            "train_batch_size": 4096,
            "total_training_tokens": 300_000_000,
            "seed": 42,
            "dtype": "torch.float32",
            "device": "mps",
        }
        (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))


def build_hub_cache(root: Path) -> dict[str, str]:
    """Write the cache under `root`; return the environment that points the HF libraries at it, offline."""
    root = Path(root)
    hub, cache, work = root / "hub", root / "datasets", root / "build"
    _gpt2(hub)
    from helpers.data.corpora import synthetic_documents

    pile = synthetic_documents("synthetic-a", 600, seed=1)
    _dataset(
        cache,
        work,
        "NeelNanda/pile-10k",
        {"text": pile, "meta": [json.dumps({"pile_set_name": "Toy"})] * len(pile)},
    )
    _dataset(cache, work, "roneneldan/TinyStories", {"text": synthetic_documents("synthetic-a", 600, seed=2)})
    _jb_saes(hub)
    shutil.rmtree(work)
    return {
        "HF_HOME": str(root),
        "HF_HUB_CACHE": str(hub),
        "HF_DATASETS_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
