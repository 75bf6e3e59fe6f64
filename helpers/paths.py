"""Where things live on disk: the repo's `data/` and `figures/`, overridable by environment.

`SAE_LAB_DATA` moves all generated data (activation stores, models, SAEs, executed notebooks);
`SAE_LAB_FIGURES` moves the figures. The offline profile's figures are the committed ones in
`figures/`; the post's hub setups write beside them in a subfolder, every other profile under data/.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("SAE_LAB_DATA", REPO_ROOT / "data"))


# Profiles whose figures sit in the repo beside the main job's (figures/<profile>/): the post's setups.
REPO_FIGURE_PROFILES = ("gpt2", "gpt2-jb")


def figures_dir(profile: str = "offline") -> Path:
    """`figures/` for the main (offline) profile, `figures/<profile>/` for the post's hub setups (gpt2,
    gpt2-jb), `data/figures/<profile>/` for every other profile (tiny, a user's .toml profile)."""
    if "SAE_LAB_FIGURES" in os.environ:
        root = Path(os.environ["SAE_LAB_FIGURES"])
        return root if profile == "offline" else root / profile
    if profile == "offline":
        return REPO_ROOT / "figures"
    if profile in REPO_FIGURE_PROFILES:
        return REPO_ROOT / "figures" / profile
    return data_dir() / "figures" / profile


def store_root(profile: str) -> Path:
    """data/activations/<profile>/: one activation store per corpus (notebook 01 writes them)."""
    return data_dir() / "activations" / profile


def store_name(corpus: str, hook: str = "hook_resid_pre") -> str:
    """The folder of a corpus's store of one hook kind: the corpus's name for resid_pre (what notebook 01
    collects), "<corpus>.<kind>" for the others (notebook 09: "python-docs.hook_mlp_out", ...)."""
    return corpus if hook == "hook_resid_pre" else f"{corpus}.{hook}"


def store_dir(profile: str, corpus: str, hook: str = "hook_resid_pre") -> Path:
    """The activation store of one corpus (and hook kind) of a profile."""
    return store_root(profile) / store_name(corpus, hook)


def sae_dir(profile: str) -> Path:
    """data/saes/<profile>/: every planned SAE, the convergence certificate, the eval table (notebook 02)."""
    return data_dir() / "saes" / profile


def position_stats_path(profile: str, layer: int) -> Path:
    """The position statistics of one layer's SAE: notebook 03 writes them, notebook 05 reads them."""
    return data_dir() / "positions" / profile / f"L{layer}.npz"


def feature_pages_dir(profile: str) -> Path:
    """The exported HTML feature pages (notebook 05)."""
    return data_dir() / "feature_pages" / profile


def models_dir() -> Path:
    return data_dir() / "models"
