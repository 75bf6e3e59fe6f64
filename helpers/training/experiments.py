"""The set of SAEs a profile trains, and where each lives: shared by notebooks 02-05.

- The seed pair: the base SAE (TopK, the profile's k and width, main layer and corpus) and the
  same SAE with another seed, trained together on one stream (same data, same order) with decoder
  snapshots: the convergence certificate (helpers.analysis.convergence) and the noise floor of the factor
  study.
- The factor grid at the main layer, one factor at a time from the base SAE: corpus (with its
  own seed pair), architecture (BatchTopK, ReLU+L1), k (k/2) and dictionary size (half width).
- Tied SAEs (W_enc = W_dec^T, the "tied" factor): a TopK seed pair and a ReLU+L1 one, beside their
  untied twins.
- Per-layer SAEs: the base configuration at every other collected layer (the layer factor, the
  position study, the UMAP atlas).
- The crosscoder pair (`crosscoder_runs`, notebook 07): one dictionary over three layers, and its
  seed twin.
EVERY SAE HAS ITS OWN SEED, so no two SAEs share an initial decoder unless that is the point
(`SEEDS`). Otherwise a short run leaves each decoder row near its random start, and any two SAEs
started from the same rows "share" features whatever they were trained on (the first version of
this lab measured 97-100% for every same-seed pair and 0% for the seed pair). A factor pair thus
also differs in seed, and a factor changes features only as far as its pairs share fewer latents
than the seed pair does (`helpers.analysis.matching.factor_pairs(free=("seed",))`).
SAEs that read the same (layer, corpus) stream train together in one pass over the batches.
Every SAE trains without the BOS/separator token (an attention sink with up to ~100x the residual
norm on SmolLM2) and without massive-norm tokens (`helpers.data.massive`), on all shards but the last,
which is held out for evaluation.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from helpers.data.massive import massive_threshold
from helpers.data.store import ActivationStore
from helpers.model.models import ModelSpec
from helpers.paths import store_name
from helpers.profiles import Profile
from helpers.sae import SAE, get_sae_class, load_sae
from helpers.sae.base import SAEError
from helpers.sae.matryoshka import prefix_widths
from helpers.training.config import TrainConfig
from helpers.training.run_dir import SUMMARY_NAME
from helpers.training.train import train_saes

EXCLUDE_POSITIONS = (0,)
# One seed per role: the seed pair 0/1, each factor SAE its own, the other corpus its own pair,
# and per-layer SAEs LAYER_SEED + layer.
SEEDS = {
    "base": 0,
    "seed": 1,
    "batchtopk": 2,
    "relu": 3,
    "half_k": 4,
    "half_width": 5,
    "corpus": 6,
    "corpus_seed": 7,
    "tied": 8,
    "tied_seed": 9,
    "tied_relu": 10,
}
LAYER_SEED = 100
CROSSCODER_SEEDS = (20, 21, 22)  # the crosscoder, its seed twin, the L1 crosscoder beside (notebook 07)
HIERARCHY_SEEDS = (30, 31)  # notebook 08: the Matryoshka seed pair; its narrow TopK SAEs 32, 33, ...


# The fields of SAERun the matching study varies (helpers.analysis.matching.factor_pairs).
FACTORS = ("seed", "corpus", "architecture", "k", "d_sae", "layer", "tied")


@dataclass(frozen=True)
class SAERun:
    """One planned SAE, described by the factors the matching study varies (FACTORS)."""

    layer: int
    corpus: str
    architecture: str = "topk"
    d_sae: int = 4608
    k: int | None = 32
    seed: int = 0
    source: str | None = None  # an SAE read, not trained here (Profile.sae_sources); the fields above
    # then say only which layer and stream it is studied on
    tied: bool = False  # W_enc = W_dec^T (TrainConfig.tied)
    layers: tuple[int, ...] = ()  # a crosscoder: the layers it reads side by side (`layer` is the middle)
    tokens: int | None = None  # training tokens; None = the profile's train_tokens (every SAE of 02)
    hook: str = "hook_resid_pre"  # the hook kind it reads (helpers.model.hooks.KINDS; notebook 09)

    @property
    def name(self) -> str:
        if self.source is not None:
            return (
                f"L{self.layer}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", self.source.rstrip("/")).strip("-")[-80:]
            )
        k = f"-k{self.k}" if self.k is not None else ""
        where = "+".join(map(str, self.layers)) if self.layers else str(self.layer)
        tied = "-tied" if self.tied else ""
        tokens = f"-t{self.tokens}" if self.tokens is not None else ""
        hook = "" if self.hook == "hook_resid_pre" else "-" + self.hook.replace("hook_", "").replace(".", "_")
        return f"L{where}-{self.corpus}{hook}-{self.architecture}{tied}-m{self.d_sae}{k}{tokens}-s{self.seed}"

    @property
    def store_name(self) -> str:
        """The store folder it reads under a profile's store root (helpers.paths.store_name)."""
        return store_name(self.corpus, self.hook)

    @property
    def stream(self) -> tuple[int | tuple[int, ...], str]:
        """What the run reads: (layer or the crosscoder's layers, store folder); runs with one stream train
        together."""
        return (self.layers or self.layer, self.store_name)

    def to_dict(self) -> dict:
        return asdict(self)

    def lr(self, profile: Profile) -> float | None:
        """The profile's lr for this run: `crosscoder_lr` for a BatchTopK crosscoder and `tied_lr` for a
        tied TopK-like SAE where set, else `train_lr`."""
        uses_k = get_sae_class(self.architecture).uses_k
        if self.layers and uses_k and profile.crosscoder_lr is not None:
            return profile.crosscoder_lr
        tied_topk = self.tied and uses_k
        return profile.tied_lr if tied_topk and profile.tied_lr is not None else profile.train_lr

    def l1(self, profile: Profile) -> float:
        """The profile's L1 coefficient for this run: `crosscoder_l1` for a crosscoder where set."""
        return profile.crosscoder_l1 if self.layers and profile.crosscoder_l1 is not None else profile.l1

    def total_tokens(self, profile: Profile) -> int:
        """Training tokens of this run: `tokens`, else the profile's train_tokens."""
        return self.tokens if self.tokens is not None else profile.train_tokens

    def train_config(self, profile: Profile, d_in: int, seq_len: int) -> TrainConfig:
        total = self.total_tokens(profile)
        steps = total // profile.train_batch_size
        snaps = tuple(
            sorted(
                {
                    max(1, round(steps * 2.0**-i)) * profile.train_batch_size
                    for i in range(profile.n_snapshots)
                }
            )
        )
        return TrainConfig(
            d_in=d_in * max(1, len(self.layers)),
            architecture=self.architecture,
            tied=self.tied,
            layers=self.layers,
            d_sae=self.d_sae,
            k=self.k,
            batch_size=profile.train_batch_size,
            total_tokens=total,
            lr=self.lr(profile),
            options={"l1": self.l1(profile)},
            seed=self.seed,
            warmup_steps=max(1, steps // 20),
            checkpoint_every_tokens=max(total // 4, profile.train_batch_size),
            snapshot_tokens=snaps,
            precision=profile.train_precision,
            model_name=profile.model,
            layer=self.layer,
            corpus=self.corpus,
            dataset_path=self.corpus,
            context_size=seq_len,
            hook_name=None if self.hook == "hook_resid_pre" else f"blocks.{self.layer}.{self.hook}",
        )


def roles(profile: Profile, d_model: int) -> dict[str, SAERun]:
    """The main-layer SAEs by role (keys of SEEDS): the seed pair, one SAE per factor, the other
    corpus's seed pair, the tied pair and tied ReLU; each with its own seed."""
    m = profile.expansion_factor * d_model
    base = base_run(profile, d_model)
    out = {
        "base": base,
        "seed": replace(base, seed=SEEDS["seed"]),
        "batchtopk": replace(base, architecture="batchtopk", seed=SEEDS["batchtopk"]),
        "relu": replace(base, architecture="relu", k=None, seed=SEEDS["relu"]),
        "half_k": replace(base, k=profile.k // 2, seed=SEEDS["half_k"]),
        "half_width": replace(base, d_sae=m // 2, seed=SEEDS["half_width"]),
        "tied": replace(base, tied=True, seed=SEEDS["tied"]),
        "tied_seed": replace(base, tied=True, seed=SEEDS["tied_seed"]),
        "tied_relu": replace(base, architecture="relu", k=None, tied=True, seed=SEEDS["tied_relu"]),
    }
    for corpus in [c for c in profile.corpora if c != profile.main_corpus][:1]:
        out["corpus"] = replace(base, corpus=corpus, seed=SEEDS["corpus"])
        out["corpus_seed"] = replace(base, corpus=corpus, seed=SEEDS["corpus_seed"])
    return out


def plan(profile: Profile, d_model: int) -> list[SAERun]:
    """The SAEs trained here: the seed pair, the main-layer factor grid, then per-layer SAEs (see module
    docstring) at every layer without an SAE source."""
    runs = list(roles(profile, d_model).values())
    return runs + [
        r
        for layer, r in layer_runs(profile, d_model).items()
        if layer != profile.main_layer and r.source is None
    ]


def seed_pair(profile: Profile, d_model: int) -> tuple[SAERun, SAERun]:
    """The base SAE and its seed twin: same data, same order, different initialisation."""
    r = roles(profile, d_model)
    return r["base"], r["seed"]


def excluded_tokens(store: ActivationStore) -> tuple[int, ...]:
    """Token ids SAEs never train on: the store's BOS/separator token."""
    return (int(store.manifest["bos_id"]),)


def base_run(profile: Profile, d_model: int) -> SAERun:
    """The reference SAE of the factor grid: TopK, the profile's k and width, seed 0."""
    return SAERun(
        profile.main_layer, profile.main_corpus, "topk", profile.expansion_factor * d_model, profile.k, 0
    )


def layer_runs(profile: Profile, d_model: int) -> dict[int, SAERun]:
    """{layer: the base configuration at that layer of the main corpus}: the base SAE itself at the
    main layer, its own seed (LAYER_SEED + layer) and `layer_train_tokens` elsewhere; where the profile
    names an SAE source for a layer, a run that reads it instead."""
    base = base_run(profile, d_model)
    out = {}
    for layer in profile.layers:
        if profile.sae_source(layer) is not None:  # read, not trained (e.g. the gpt2-jb release)
            out[layer] = SAERun(
                layer,
                profile.main_corpus,
                "external",
                d_sae=0,
                k=None,
                seed=-1,
                source=profile.sae_source(layer),
            )
        else:
            out[layer] = (
                base
                if layer == profile.main_layer
                else replace(base, layer=layer, seed=LAYER_SEED + layer, tokens=profile.layer_train_tokens)
            )
    return out


def sae_path(root: Path, run: SAERun) -> Path:
    return Path(root) / run.name


def train_plan(
    runs: list[SAERun], profile: Profile, store_root: Path, sae_root: Path, progress: bool = True
) -> dict[str, Path]:
    """Train every planned SAE (resuming finished or checkpointed ones), grouped so that SAEs
    reading the same (layer, corpus) stream with the same token budget share one pass over the batches."""
    groups: dict[tuple, list[SAERun]] = defaultdict(list)
    for run in runs:
        groups[(*run.stream, run.tokens)].append(run)  # one pass trains SAEs of one token budget
    paths = {}
    for (layer, name, _), group in groups.items():
        store = ActivationStore(Path(store_root) / name)
        train_shards, _ = store.split(1)
        configs = [r.train_config(profile, store.d_model, store.seq_len) for r in group]
        out_dirs = [sae_path(sae_root, r) for r in group]
        batches = store.batches(
            layer,
            batch_size=profile.train_batch_size,
            seed=0,
            exclude_positions=EXCLUDE_POSITIONS,
            epochs=None,
            shards=train_shards,
            exclude_tokens=excluded_tokens(store),
            max_norm=max_norm(store, layer, profile)
            if isinstance(layer, int)
            else [max_norm(store, lay, profile) for lay in layer],
        )
        if progress:
            print(f"L{layer} {name}: {', '.join(r.name for r in group)}")
        train_saes(configs, batches, out_dirs, progress=progress, resume=True)
        paths.update({r.name: p for r, p in zip(group, out_dirs)})
    return paths


def is_trained(run: SAERun, sae_root: Path) -> bool:
    """Whether `run` finished training under `sae_root` (its eval_summary.json says completed)."""
    summary = sae_path(sae_root, run) / SUMMARY_NAME
    return summary.exists() and bool(json.loads(summary.read_text()).get("completed"))


def trained(
    runs: list[SAERun], profile: Profile, store_root: Path, sae_root: Path, progress: bool = True
) -> dict[str, Path]:
    """{name: directory} of every planned SAE, read from disk; the runs not finished yet train first
    (`train_plan`, resuming their checkpoints). What a notebook section calls to run on its own."""
    missing = [r for r in runs if not is_trained(r, sae_root)]
    if missing:
        train_plan(missing, profile, store_root, sae_root, progress)
    return {r.name: sae_path(sae_root, r) for r in runs}


def crosscoder_layers(profile: Profile) -> tuple[int, ...]:
    """The layers the crosscoder reads: Profile.crosscoder_layers, else the main layer and its two
    neighbours in the collected layers."""
    if profile.crosscoder_layers:
        return tuple(profile.crosscoder_layers)
    layers = sorted(profile.layers)
    i = layers.index(profile.main_layer)
    lo = max(0, min(i - 1, len(layers) - 3))
    return tuple(layers[lo : lo + 3])


def crosscoder_runs(profile: Profile, d_model: int) -> tuple[SAERun, SAERun]:
    """The crosscoder (Profile.crosscoder_architecture over `crosscoder_layers` of the main corpus, the
    base SAE's width, k = the base k per layer: the per-layer SAEs' total L0) and its seed twin."""
    layers = crosscoder_layers(profile)
    arch = profile.crosscoder_architecture
    run = SAERun(
        layers[len(layers) // 2],
        profile.main_corpus,
        arch,
        profile.expansion_factor * d_model,
        profile.k * len(layers) if get_sae_class(arch).uses_k else None,
        CROSSCODER_SEEDS[0],
        layers=layers,
        tokens=profile.crosscoder_train_tokens,
    )
    return run, replace(run, seed=CROSSCODER_SEEDS[1])


def l1_crosscoder_run(profile: Profile, d_model: int) -> SAERun | None:
    """The L1 crosscoder notebook 07 trains beside a BatchTopK pair (Profile.l1_crosscoder_beside): the
    pair's layers and width, one seed; None where the pair is itself L1 or the profile says no."""
    run, _ = crosscoder_runs(profile, d_model)
    if not profile.l1_crosscoder_beside or run.architecture == "crosscoder":
        return None
    return replace(run, architecture="crosscoder", k=None, seed=CROSSCODER_SEEDS[2])


def hierarchy_runs(profile: Profile, d_model: int) -> tuple[SAERun, SAERun, list[SAERun]]:
    """Notebook 08's SAEs on the main layer and corpus: the Matryoshka BatchTopK seed pair (the base SAE's
    width and k; compared with the factor grid's BatchTopK SAE of the same width) and narrow TopK SAEs at
    the Matryoshka's second and third prefix widths (helpers.sae.matryoshka.prefix_widths: m/32 + m/16
    and + m/8; the first, m/32, is below a useful width at k = profile.k, and the grid's half-width SAE
    stands near the fourth), each at half the profile's tokens: a narrow dictionary has fewer latents
    to settle."""
    base = base_run(profile, d_model)
    pair = replace(base, architecture="matryoshka_batchtopk", seed=HIERARCHY_SEEDS[0])
    narrow = [
        replace(
            base,
            d_sae=w,
            k=min(profile.k, w // 4),
            seed=HIERARCHY_SEEDS[1] + 1 + i,
            tokens=profile.train_tokens // 2,
        )
        for i, w in enumerate(prefix_widths(base.d_sae)[1:3])
    ]
    return pair, replace(pair, seed=HIERARCHY_SEEDS[1]), narrow


def load(run: SAERun, sae_root: Path) -> SAE:
    """The SAE of `run`: trained under `sae_root`, or read from its source (what notebooks 03-06 read)."""
    return load_sae(run.source if run.source is not None else sae_path(sae_root, run))


HOOK = re.compile(r"blocks\.(\d+)\.hook_(\w+)")


def check_sae_sources(profile: Profile, spec: ModelSpec) -> None:
    """Every SAE source of the profile must read this model's resid_pre at its layer: its d_in equal to
    the model's d_model and its hook (when the file names one) blocks.<layer>.hook_resid_pre of a block
    the model has. Raises SAEError in one line naming both sides (a hub source is fetched once here)."""
    for layer, source in profile.sae_sources:
        cfg = load_sae(source).cfg
        where = f"profile {profile.name}: the SAE for layer {layer} ({source})"
        if cfg.d_in != spec.d_model:
            raise SAEError(
                f"{where} has d_in {cfg.d_in}, but {spec.name} has d_model {spec.d_model}; "
                "use an SAE trained on this model"
            )
        hook = cfg.metadata.get("hook_name")
        m = HOOK.fullmatch(hook) if isinstance(hook, str) else None
        if m and (int(m.group(1)) >= spec.n_layers or m.group(2) not in ("resid_pre", "resid_post")):
            raise SAEError(
                f"{where} reads {hook}, which {spec.name} does not have (blocks 0-{spec.n_layers - 1}, "
                "residual hooks resid_pre/resid_post); use a residual-stream SAE of this model"
            )
        if m and (int(m.group(1)), m.group(2)) != (layer, "resid_pre"):
            raise SAEError(
                f"{where} reads {hook}, but this lab collects blocks.{layer}.hook_resid_pre for "
                f"layer {layer}; list it under the layer it reads"
                + (f" ({int(m.group(1)) + 1}, the resid_pre it equals)" if m.group(2) == "resid_post" else "")
            )


_MAX_NORM: dict[tuple[str, int, float, str], float] = {}


def max_norm(store: ActivationStore, layer: int, profile: Profile) -> float:
    """The massive-token cut of `layer`: profile.massive_ratio x its median token norm (one pass
    over the store per (store, layer, ratio); later calls, e.g. one per SAE in notebook 02, reuse it)."""
    key = (
        str(Path(store.path).resolve()),
        layer,
        profile.massive_ratio,
        json.dumps(store.manifest["shards"][-1]),
    )
    if key not in _MAX_NORM:
        _MAX_NORM[key] = massive_threshold(store, layer, profile.massive_ratio)
    return _MAX_NORM[key]
