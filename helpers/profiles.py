"""Run profiles: which model, corpora, layers, SAEs and token budgets a notebook run uses.

Every notebook takes `PROFILE` as a papermill parameter (default "offline"): a built-in name or the
path of a TOML file (`load_profile_toml`, below).
- offline: SmolLM2-135M (from PyPI) on Debian text corpora; the main job, no hub. Its budgets are
  sized to the 45-minute main job on 2 CPU cores, most of it SAE training.
- gpt2: the reference post's setup through the hub (GPT-2 small, pile-10k + TinyStories); trains
  every SAE here.
- gpt2-jb: the post's Part 1 on the post's own SAEs: per-layer SAEs are jbloom's gpt2-small-res-jb
  release (24,576 latents, layers 0-11); the factor grid (Part 2) still trains here.
- tiny: random 4-layer model on synthetic text; tests and CI only (a minute or two).

A profile of one's own (a model by hub id or local path, corpora from local files or the hub, per
layer an SAE to read instead of train) is a TOML file:

    name = "my-study"                  # optional: the file's stem
    base = "tiny"                      # optional: start from a built-in profile's fields
    model = "EleutherAI/pythia-70m"    # registry name, hub id or local directory
    layers = [2, 3, 4]
    main_layer = 3
    tokens_main = 65536

    [corpora]                          # name = source; the first is the main corpus
    notes = "notes/"                   # a .txt/.md/.rst/.py/.jsonl/.parquet file or folder
                                       # (relative to this file)
    pile = "hf:NeelNanda/pile-10k"     # a hub dataset; or a built-in corpus name ("kjv")

    [saes]                             # layer = SAE source: read it instead of training one
    4 = "saes/layer4/"                 # a local SAE folder, "sae_lens:<release>/<id>" or "hf:..."

Scale-up in code: `dataclasses.replace(get_profile("offline"), tokens_main=...)`.
The reference post's SAEs saw ~1e8 (TinyStories) to 1e9 (OpenWebText) tokens; ours see 2.5e6
(several epochs over ~3e5 stored tokens).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    """Names the run's folders: data/activations/<name>/, data/saes/<name>/, figures."""
    model: str
    """A registry name of helpers.model.models (MODELS), a hub id ("org/model") or a local directory."""
    corpora: tuple[str, ...]
    """Corpus names; the first is the main corpus. A built-in name (helpers.data.corpora.CORPORA) needs no
    source; any other name is given one in `corpus_sources`."""
    layers: tuple[int, ...]
    """resid_pre layers collected on the main corpus (one per-layer SAE each)."""
    main_layer: int
    """The layer of the factor study, collected on every corpus."""
    seq_len: int
    """Tokens per sequence, BOS first."""
    tokens_main: int
    """Tokens collected on the main corpus (all `layers`)."""
    tokens_other: int
    """Tokens collected on each other corpus (`main_layer` only)."""
    batch_size: int = 16
    """Sequences per forward pass while collecting."""
    dtype: str = "float16"
    """Activation store dtype."""
    shard_seqs: int = 64
    """Sequences per shard file."""
    expansion_factor: int = 8
    """SAE width = expansion_factor * d_model."""
    k: int = 32
    """TopK / BatchTopK k of the base SAE."""
    train_tokens: int = 500_000
    """Tokens seen by each SAE trained here."""
    layer_train_tokens: int | None = None
    """Tokens seen by each per-layer SAE away from the main layer (notebooks 03, 04's layer factor, 05);
    None: `train_tokens`. The main layer's SAEs, every verdict's pair included, keep `train_tokens`."""
    crosscoder_train_tokens: int | None = None
    """Tokens seen by notebook 07's crosscoders; None: `train_tokens`."""
    train_batch_size: int = 4096
    """Activations per SAE step."""
    needs_hub: bool = False
    """True where the model, a corpus or an SAE comes from the Hugging Face hub (or its cache)."""
    collect_precision: str = "auto"
    """Model matmuls while collecting: "auto" (helpers.precision), "bfloat16" or "float32"."""
    train_precision: str = "auto"
    """SAE step GEMMs (fp32 master weights and Adam state either way)."""
    train_lr: float | None = None
    """None: TrainConfig's default 3e-4 / sqrt(d_sae / 2^14)."""
    tied_lr: float | None = None
    """lr of the tied TopK seed pair (TrainConfig.tied); None: train_lr. The tied ReLU+L1 SAE keeps
    train_lr, as its untied twin does."""
    l1: float = 5.0
    """L1 coefficient of the ReLU+L1 SAEs."""
    massive_ratio: float = 10.0
    """Tokens above this x the layer's median norm are left out of training and metrics."""
    n_snapshots: int = 8
    """Decoder snapshots (log-spaced) for the convergence curve."""
    crosscoder_layers: tuple[int, ...] = ()
    """Layers the crosscoder of notebook 07 reads side by side; () = the main layer and its neighbours
    in `layers`."""
    crosscoder_architecture: str = "batchtopk_crosscoder"
    """batchtopk_crosscoder (k = k per layer, the per-layer SAEs' total L0) or crosscoder (ReLU + L1 of
    the per-layer decoder norms, `l1`)."""
    crosscoder_lr: float | None = None
    """lr of notebook 07's BatchTopK crosscoders; None: train_lr. (The L1 crosscoder trains at
    train_lr, as the ReLU+L1 SAEs do.)"""
    crosscoder_l1: float | None = None
    """L1 coefficient of an L1 crosscoder (architecture "crosscoder"); None: `l1`."""
    l1_crosscoder_beside: bool = True
    """Where the crosscoder pair is BatchTopK, notebook 07 also trains one L1 crosscoder (one seed) on
    the same layers and asks it the same layer-share question: its loss makes a latent pay for every
    layer it writes to, the BatchTopK loss does not."""
    corpus_sources: tuple[tuple[str, str], ...] = ()
    """(name, source) for corpora that are not built in: a local .txt/.md/.rst/.py/.jsonl/.parquet file or
    folder, or "hf:<dataset id>" (helpers.data.corpora.load_corpus)."""
    sae_sources: tuple[tuple[int, str], ...] = ()
    """(layer, SAE source) for per-layer SAEs read instead of trained (helpers.sae.load_sae: a local
    directory in SAELens, dictionary_learning or sparsify layout, "sae_lens:<release>/<id>", "hf:...")."""
    eval_seqs: int = 4
    """Held-out sequences for the downstream (CE) evaluations of notebooks 02 and 04."""
    ablation_seqs: int = 8
    """Held-out sequences for notebook 03's position-embedding ablation."""
    umap_rows: int | None = 1500
    """Decoder rows per layer in notebook 05's UMAP (None: all)."""
    context_seqs: int = 8
    """Notebook 06: held-out sequences scanned for a feature's top contexts ..."""
    context_len: int = 64
    """... and the tokens of each."""
    prompt_len: int = 24
    """Notebook 06: prompt tokens of the steering demo ..."""
    new_tokens: int = 16
    """... and the tokens it generates."""
    ablation_len: int = 128
    """Notebook 06: tokens per sequence in the feature-ablation comparison."""
    steering_fit_tokens: int = 16384
    """Notebook 06: activations the contrastive (CAA) steering vector is fit on."""
    second_model: str = "gemma3-270m"
    """Notebook 09: the model compared with `model` on the same text (registry name, hub id or folder);
    its resid_pre at the layer most CKA-similar to `main_layer` gets a seed pair of SAEs of its own."""
    align_seqs: int = 24
    """Notebook 09: windows of the main store's held-out shard whose text both models read, one row per
    word (CKA between every pair of layers, cross-model latent matching)."""
    second_tokens: int = 98_304
    """Notebook 09: main-corpus tokens collected from the second model at its matched layer."""
    second_expansion_factor: int | None = None
    """Notebook 09: the second model's SAE width = this x its d_model; None: `expansion_factor`."""
    second_k: int | None = None
    """Notebook 09: the second model's SAE k; None: `k`."""
    second_train_tokens: int | None = None
    """Notebook 09: training tokens of the second model's seed pair; None: `train_tokens`."""
    hook_kinds: tuple[str, ...] = ("hook_attn_out", "hook_mlp_out", "mlp.hook_post")
    """Notebook 09: hook points of `main_layer` besides resid_pre (helpers.model.hooks.KINDS), one SAE
    each, the base SAE's width and k."""
    hook_tokens: int = 98_304
    """Notebook 09: main-corpus tokens collected at those hook points (one pass for all of them)."""
    hook_train_tokens: int | None = None
    """Notebook 09: training tokens of each hook-point SAE (one seed each); None: half of `train_tokens`."""
    interp_latents: int = 100
    """Notebook 10: directions drawn per dictionary (SAE, neurons, PCA, random) for the embedding score."""
    interp_llm_latents: int = 4
    """Notebook 10: of those, how many per dictionary an LLM explains and scores (the slow score; users
    with time raise it, e.g. to `interp_latents`)."""
    interp_llm_test: int = 6
    """Notebook 10: activating and random held-out excerpts per latent that the LLM judges."""
    interp_judge: str | None = None
    """Notebook 10: the LLM judge, a local instruct model folder; None: the profile's own model."""
    probe_seeds: int = 5
    """Notebook 10: train/test splits each sparse probe is fit on (accuracies averaged)."""

    @property
    def main_corpus(self) -> str:
        return self.corpora[0]

    def corpus_source(self, corpus: str) -> str | None:
        """Where a corpus's text comes from (None: the built-in corpus of that name)."""
        return dict(self.corpus_sources).get(corpus)

    def sae_source(self, layer: int) -> str | None:
        """The SAE read at `layer` instead of one trained here (None: train it)."""
        return dict(self.sae_sources).get(layer)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # offline: 4x width (2,304 latents), lr 8e-3 at batch 2048, from benchmarks/sweep_convergence.py
    # (L12 python-docs, seed pairs): at 2M tokens and lr 4e-3 the 4x pair shared 28% of latents, the 2x
    # (1,152) pair 22%; at 3M tokens lr 4e-3 gave 35% (median top-1 0.61) and lr 8e-3 55% (0.75, drift
    # 0.10, held-out FVU 0.12). 8x does not converge in this budget (7.9% at 1M tokens).
    # 2.5M tokens per SAE is ~8 epochs over the train shards; every SAE gets the same budget.
    "offline": Profile(
        name="offline",
        model="smollm2-135m",
        corpora=("python-docs", "kjv"),
        layers=(0, 4, 8, 12, 16, 20, 24),
        main_layer=12,
        seq_len=512,
        tokens_main=327_680,
        tokens_other=196_608,
        batch_size=16,
        shard_seqs=32,
        expansion_factor=4,
        k=32,
        train_tokens=2_500_000,
        train_batch_size=2048,
        train_lr=8e-3,
        # tied TopK pair (sweep_convergence.py --tied, L12 python-docs, 2.5M tokens, Zen 3): lr 4e-3 shared
        # 25.2% (top-1 0.56), 8e-3 39.9% (0.65), 1.6e-2 55.7% (0.74, dead 0.8%, held-out FVU 0.136 vs
        # 0.132). Untied pairs do not take 1.6e-2: at 1.5M tokens 32.8% of latents died (FVU 0.161).
        tied_lr=1.6e-2,
        # BatchTopK crosscoder pair (L8+12+16, k 96, 2.5M tokens, Zen 3): lr 4.6e-3 shared 20.1% (top-1
        # 0.49), 8e-3 31.6% (0.59, the run of 2026-12-06), 1.6e-2 19.3% (0.39): 8e-3 (train_lr) is the best
        # of the three and none converges at this budget. At 1.25M tokens (2026-12-07): width 1,152 0.42 vs
        # 2,304 0.52; lr decaying over the last 50% 0.49, over all of it 0.42 (default 20%: 0.52).
        # L1 crosscoder beside (notebook 07): l1 0.35 (the per-layer 0.6 halved) ended at training L0 ~42
        # (2.5M tokens, Zen 3); with L0 ~ l1^-1.7 (the ReLU sweep) 0.22 aimed at the pair's 3 x k = 96 and
        # gave held-out L0 83 against 98 (fresh-clone run of 2026-12-07)
        crosscoder_l1=0.22,
        l1=0.6,
        # Budget (main job 80 min on a Zen 3, 57 on a Zen 4 at 1.25M / 1.5M / 750k; bars 75 and 45):
        # per-layer SAEs away from L12 (no verdict reads them) 1M tokens, crosscoders (NOT CONVERGED at
        # 1.5M, 2M or 2.5M either) 1M, kjv 196k tokens collected, notebook 09's hook-point SAEs (one seed
        # each) 65k stored, 500k training tokens.
        layer_train_tokens=1_000_000,
        crosscoder_train_tokens=1_000_000,
        # Gemma's L4 is low-dimensional (participation ratio 16 vs SmolLM2 L12's 52): at k 32 its seed pair
        # shared 3.5-19% (width 640-2,560, lr 4e-3-1.6e-2, 2.5M tokens), at k 8 40%; k 4, width 640: 48.7%
        # / top-1 0.72 at 625k tokens, 51.6% / 0.75 at 1.25M (sweep_convergence.py, Zen 3; notebook 09).
        second_expansion_factor=1,
        second_k=4,
        second_train_tokens=1_250_000,
        hook_tokens=65_536,
        hook_train_tokens=500_000,
    ),  # sweep: at 1M tokens l1 0.5 -> L0 56, 1 -> 17; 0.6 aims at ~32 after 2.5M
    "gpt2": Profile(
        name="gpt2",
        model="gpt2",
        corpora=("pile-10k", "tinystories"),
        layers=tuple(range(12)),
        main_layer=8,
        seq_len=1024,
        tokens_main=2_097_152,
        tokens_other=2_097_152,
        batch_size=8,
        shard_seqs=16,
        expansion_factor=16,
        k=32,
        train_tokens=10_000_000,
        needs_hub=True,
        eval_seqs=16,
        ablation_seqs=16,
        umap_rows=2000,
    ),
    "tiny": Profile(
        name="tiny",
        model="tiny-llama",
        corpora=("synthetic-a", "synthetic-b"),
        layers=(0, 1, 2, 3),
        main_layer=2,
        seq_len=64,
        tokens_main=16_384,
        tokens_other=16_384,
        batch_size=16,
        shard_seqs=32,
        expansion_factor=4,
        k=8,
        train_tokens=32_768,
        train_batch_size=512,
        eval_seqs=8,
        umap_rows=None,
        context_len=32,
        prompt_len=12,
        new_tokens=8,
        ablation_len=32,
        steering_fit_tokens=4096,
        second_model="tiny-gpt2",
        align_seqs=8,
        second_tokens=16_384,
        hook_tokens=16_384,
        interp_latents=6,
        interp_llm_latents=2,
        interp_llm_test=3,
        probe_seeds=2,
    ),
}
# quick: a first taste of every notebook on the real offline model in minutes (not converged at this
# budget, and the notebooks say so): four layers around the main one, 20k tokens per corpus, half the
# offline width and 1/30 of its training tokens.
PROFILES["quick"] = replace(
    PROFILES["offline"],
    name="quick",
    layers=(0, 8, 12, 16),
    seq_len=256,
    tokens_main=20_480,
    tokens_other=20_480,
    shard_seqs=16,
    expansion_factor=2,
    train_tokens=81_920,
    n_snapshots=4,
    eval_seqs=2,
    ablation_seqs=4,
    umap_rows=None,
    context_seqs=4,
    ablation_len=64,
    steering_fit_tokens=4096,
    align_seqs=16,
    second_tokens=20_480,
    second_train_tokens=None,
    hook_tokens=20_480,
    interp_latents=30,
    interp_llm_latents=3,
    layer_train_tokens=None,
    crosscoder_train_tokens=None,
    hook_train_tokens=None,
)
# The post's Part 1 read jbloom's gpt2-small-res-jb SAEs at every layer (SAELens release names).
JB_RELEASE = "sae_lens:gpt2-small-res-jb/blocks.{layer}.hook_resid_pre"
PROFILES["gpt2-jb"] = replace(
    PROFILES["gpt2"],
    name="gpt2-jb",
    sae_sources=tuple((layer, JB_RELEASE.format(layer=layer)) for layer in range(12)),
)


def load_profile_toml(path: str | Path) -> Profile:
    """A profile from a TOML file (format: module docstring). Relative paths of the model, corpora
    and SAEs are read from the file's folder. Every bad input raises ProfileError, one line naming
    the file and the fix."""
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(
            f"profile file {path} not found; pass a built-in name or an existing .toml file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path} is not valid TOML ({e}); fix the line it names") from None
    here = path.resolve().parent

    def local(source: str) -> str:  # a relative path that exists next to the file, else as written
        if not isinstance(source, str):
            raise ProfileError(f"{path}: sources are strings, not {source!r}")
        p = Path(source).expanduser()
        q = p if p.is_absolute() else here / p
        return str(q.resolve()) if not source.startswith(("hf:", "sae_lens:")) and q.exists() else source

    base_name = raw.pop("base", None)
    if base_name is not None and base_name not in PROFILES:
        raise ProfileError(
            f"{path}: base {base_name!r} is not a built-in profile; use one of {sorted(PROFILES)}"
        )
    corpora = raw.pop("corpora", None)
    saes = raw.pop("saes", {})
    settable = [f.name for f in fields(Profile) if f.name not in ("corpora", "corpus_sources", "sae_sources")]
    unknown = sorted(set(raw) - set(settable))
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], settable, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ProfileError(
            f"{path}: unknown key {unknown[0]!r}{hint}; a profile sets the fields of "
            "helpers.profiles.Profile, base, [corpora] and [saes]"
        )
    kw = dict(raw)
    kw.setdefault("name", path.stem)
    for key in ("layers", "crosscoder_layers"):
        if key in kw:
            kw[key] = tuple(int(layer) for layer in kw[key])
    if "hook_kinds" in kw:
        kw["hook_kinds"] = tuple(kw["hook_kinds"])
    if "model" in kw:
        kw["model"] = local(kw["model"])
    if corpora is not None:
        if not isinstance(corpora, dict) or not corpora:
            raise ProfileError(f'{path}: [corpora] is a table of name = source, e.g. notes = "texts/"')
        kw["corpora"] = tuple(corpora)
        kw["corpus_sources"] = tuple((n, local(s)) for n, s in corpora.items() if s != n)
    if not isinstance(saes, dict):
        raise ProfileError(f'{path}: [saes] is a table of layer = source, e.g. 8 = "path/to/sae"')
    try:
        if saes:  # else the base profile's (none without a base)
            kw["sae_sources"] = tuple((int(layer), local(s)) for layer, s in saes.items())
    except ValueError:
        raise ProfileError(f"{path}: [saes] keys are layer numbers, not {list(saes)}") from None
    sources = kw.get("corpus_sources", ()) + kw.get("sae_sources", ())
    hub = [s for _, s in sources if s.startswith(("hf:", "sae_lens:"))]
    model = kw.get("model", PROFILES[base_name].model if base_name else "")
    if hub or (model.count("/") == 1 and not Path(model).exists()):  # a hub id, not a local directory
        kw.setdefault("needs_hub", True)
    try:
        profile = replace(PROFILES[base_name], **kw) if base_name else Profile(**kw)
    except TypeError as e:
        missing = [f.name for f in fields(Profile) if f.name not in kw and f.default is f.default_factory]
        raise ProfileError(
            f"{path}: {e}; without `base = ...` a profile sets at least {', '.join(missing)}"
        ) from None
    return check_profile(profile, str(path))


def check_profile(profile: Profile, where: str = "profile") -> Profile:
    """Fields that must agree with each other (the model and SAEs are checked against each other by
    helpers.training.experiments.check_sae_sources once the model is known)."""
    import re

    bad = [c for c in profile.corpora if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", c)]
    if bad:
        raise ProfileError(
            f"{where}: corpus name {bad[0]!r} names a folder; use letters, digits, '.', '_', '-'"
        )
    if profile.main_layer not in profile.layers:
        raise ProfileError(
            f"{where}: main_layer {profile.main_layer} is not one of layers {list(profile.layers)}; add it"
        )
    off = sorted(set(profile.crosscoder_layers) - set(profile.layers))
    if off or len(profile.crosscoder_layers) == 1:
        raise ProfileError(
            f"{where}: crosscoder_layers {list(profile.crosscoder_layers)} must be >= 2 of the collected "
            f"layers {list(profile.layers)} (or empty: the main layer and its neighbours)"
        )
    if profile.crosscoder_architecture not in ("batchtopk_crosscoder", "crosscoder"):
        raise ProfileError(
            f"{where}: crosscoder_architecture {profile.crosscoder_architecture!r}; "
            "use batchtopk_crosscoder or crosscoder"
        )
    stray = sorted(set(dict(profile.sae_sources)) - set(profile.layers))
    if stray:
        raise ProfileError(
            f"{where}: [saes] names layer {stray[0]}, which is not in layers {list(profile.layers)}"
        )
    return profile


def get_profile(name: str | Path) -> Profile:
    """A built-in profile by name, or a profile from a TOML file (`load_profile_toml`)."""
    if isinstance(name, Profile):
        return name
    if str(name) in PROFILES:
        return PROFILES[str(name)]
    if str(name).endswith(".toml") or Path(str(name)).expanduser().is_file():
        return load_profile_toml(name)
    raise ProfileError(
        f"unknown profile {str(name)!r}; choose one of {sorted(PROFILES)} or pass the path of a .toml "
        "profile (offline is the default and needs no hub)"
    )
