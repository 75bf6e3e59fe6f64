"""Hub sources for load_sae, resolved and fetched from a local Hugging Face cache with HF_HUB_OFFLINE=1."""

import pytest
import torch

from helpers.sae import SAEError, load_sae, make_sae, save_sae
from helpers.sae.base import SAEConfig
from helpers.sae.hub_sources import repo_and_folder

REV = "0123456789abcdef0123456789abcdef01234567"


def _cache_with(tmp_path, repo: str, folder: str, sae) -> None:
    """A hub cache as huggingface_hub lays it out: models--<owner>--<repo>/{refs/main, snapshots/<rev>}."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REV)
    save_sae(sae, root / "snapshots" / REV / folder)


def test_sae_lens_release_resolves_through_the_builtin_table_when_sae_lens_is_absent():
    assert repo_and_folder("sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre") == (
        "jbloom/GPT2-Small-SAEs-Reformatted",
        "blocks.8.hook_resid_pre",
    )
    assert repo_and_folder("hf:owner/repo/some/folder") == ("owner/repo", "some/folder")
    with pytest.raises(SAEError, match="unknown SAELens release 'nope'; known here: gpt2-small-res-jb"):
        repo_and_folder("sae_lens:nope/x")
    with pytest.raises(SAEError, match="has no SAE 'blocks.99.hook_resid_pre'"):
        repo_and_folder("sae_lens:gpt2-small-res-jb/blocks.99.hook_resid_pre")
    with pytest.raises(SAEError, match="hf:<owner>/<repo>/<folder"):
        repo_and_folder("hf:owner/repo")


def test_hub_sources_load_from_the_cache_offline_and_fail_in_one_line_when_absent(tmp_path, monkeypatch):
    sae = make_sae(SAEConfig("relu", 24, 48), seed=3)
    _cache_with(tmp_path, "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre", sae)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    got = load_sae("sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre")
    x = torch.randn(10, 24)
    with torch.no_grad():
        torch.testing.assert_close(got.encode(x), sae.encode(x))
    assert got.cfg.metadata["source"] == "sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre"
    same = load_sae("hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre")
    torch.testing.assert_close(same.W_dec, sae.W_dec)
    with pytest.raises(SAEError, match="not in the Hugging Face cache and HF_HUB_OFFLINE=1"):
        load_sae("sae_lens:gpt2-small-res-jb/blocks.3.hook_resid_pre")
