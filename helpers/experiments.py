"""The set of SAEs a profile trains, and where each lives: shared by notebooks 02-05.

- Per-layer SAEs: the base architecture at every collected layer of the main corpus (the
  layer factor, the position study, the UMAP atlas).
- The factor grid at the main layer, one factor at a time from the base SAE
  (TopK, k, 8x width, seed 0, main corpus): seed, corpus (with its own seed pair),
  architecture (BatchTopK, ReLU+L1), k (k/2) and dictionary size (half width, so the base is
  the 2x "child" of a smaller "parent" for feature splitting). The full cross product
  (2 seeds x 2 corpora x 3 architectures x 2 sizes x 2 k = 40 SAEs) does not fit a 30-minute
  CPU budget; one-factor-at-a-time keeps every comparison the post makes with 8 SAEs.
SAEs that read the same (layer, corpus) stream train together in one pass over the batches.
Every SAE trains without the BOS/separator token, at position 0 and wherever it separates
documents (an attention sink with up to ~100x the residual norm on SmolLM2), and on all shards
but the last, which is held out for evaluation.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .matching import SAEEntry
from .profiles import Profile
from .sae import load_sae, make_sae
from .store import ActivationStore
from .train import TrainConfig, train_saes

EXCLUDE_POSITIONS = (0,)


@dataclass(frozen=True)
class SAERun:
    """One planned SAE, described by the factors the matching study varies."""
    layer: int
    corpus: str
    architecture: str = "topk"
    d_sae: int = 4608
    k: int | None = 32
    seed: int = 0

    @property
    def name(self) -> str:
        k = f"-k{self.k}" if self.k is not None else ""
        return f"L{self.layer}-{self.corpus}-{self.architecture}-m{self.d_sae}{k}-s{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, profile: Profile, d_in: int, seq_len: int) -> TrainConfig:
        return TrainConfig(
            d_in=d_in, architecture=self.architecture, d_sae=self.d_sae, k=self.k,
            batch_size=profile.train_batch_size, total_tokens=profile.train_tokens,
            seed=self.seed, warmup_steps=max(1, profile.train_tokens // profile.train_batch_size
                                             // 20),
            checkpoint_every_tokens=max(profile.train_tokens // 4, profile.train_batch_size),
            model_name=profile.model, layer=self.layer, corpus=self.corpus,
            dataset_path=self.corpus, context_size=seq_len)


def plan(profile: Profile, d_model: int) -> list[SAERun]:
    """Per-layer base SAEs, then the main-layer factor grid (see module docstring)."""
    m = profile.expansion_factor * d_model
    base = base_run(profile, d_model)
    runs = list(layer_runs(profile, d_model).values())
    if base not in runs:
        runs.append(base)
    other = [c for c in profile.corpora if c != profile.main_corpus]
    runs += [
        replace(base, seed=1),
        replace(base, architecture="batchtopk"),
        replace(base, architecture="relu", k=None),
        replace(base, k=profile.k // 2),
        replace(base, d_sae=m // 2),
    ]
    for corpus in other[:1]:
        runs += [replace(base, corpus=corpus), replace(base, corpus=corpus, seed=1)]
    return runs


def excluded_tokens(store: ActivationStore) -> tuple[int, ...]:
    """Token ids SAEs never train on: the store's BOS/separator token."""
    return (int(store.manifest["bos_id"]),)


def base_run(profile: Profile, d_model: int) -> SAERun:
    """The reference SAE of the factor grid: TopK, the profile's k and width, seed 0."""
    return SAERun(profile.main_layer, profile.main_corpus, "topk",
                  profile.expansion_factor * d_model, profile.k, 0)


def layer_runs(profile: Profile, d_model: int) -> dict[int, SAERun]:
    """{layer: the base SAE at that layer of the main corpus}."""
    return {layer: replace(base_run(profile, d_model), layer=layer) for layer in profile.layers}


def sae_path(root: Path, run: SAERun) -> Path:
    return Path(root) / run.name


def train_plan(runs: list[SAERun], profile: Profile, store_root: Path, sae_root: Path,
               progress: bool = True) -> dict[str, Path]:
    """Train every planned SAE (resuming finished or checkpointed ones), grouped so that SAEs
    reading the same (layer, corpus) stream share one pass over the batches."""
    groups: dict[tuple[int, str], list[SAERun]] = defaultdict(list)
    for run in runs:
        groups[(run.layer, run.corpus)].append(run)
    paths = {}
    for (layer, corpus), group in groups.items():
        store = ActivationStore(Path(store_root) / corpus)
        train_shards, _ = store.split(1)
        configs = [r.train_config(profile, store.d_model, store.seq_len) for r in group]
        out_dirs = [sae_path(sae_root, r) for r in group]
        batches = store.batches(layer, batch_size=profile.train_batch_size, seed=0,
                                exclude_positions=EXCLUDE_POSITIONS, epochs=None,
                                shards=train_shards, exclude_tokens=excluded_tokens(store))
        if progress:
            print(f"L{layer} {corpus}: {', '.join(r.name for r in group)}")
        train_saes(configs, batches, out_dirs, progress=progress, resume=True)
        paths.update({r.name: p for r, p in zip(group, out_dirs)})
    return paths


def entries(runs: list[SAERun], sae_root: Path) -> list[SAEEntry]:
    """The runs as matching-study entries, each loading its SAE lazily."""
    return [SAEEntry(r.name, r.seed, r.corpus, r.architecture, r.k, r.d_sae, r.layer,
                     loader=(lambda p=sae_path(sae_root, r): load_sae(p))) for r in runs]


def cosine_to_init(sae, run: SAERun, profile: Profile, d_model: int) -> np.ndarray:
    """[d_sae] cosine of each trained decoder row to its own initial direction.

    SAEs with the same seed start from the same decoder (and a half-width SAE from the first half
    of the full one's rows), so when training is short and rows stay near their start, matches
    between same-seed SAEs are inflated by the shared initialisation, not by shared features."""
    cfg = run.train_config(profile, d_model, profile.seq_len).sae_config()
    init = make_sae(cfg, seed=run.seed).W_dec.detach().float()
    final = sae.W_dec.detach().float()
    cos = (init * final).sum(1) / (init.norm(dim=1) * final.norm(dim=1)).clamp_min(1e-12)
    return cos.numpy()
