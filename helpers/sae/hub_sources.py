"""SAEs named by a hub source instead of a local path, fetched into the Hugging Face cache.

Sources (`load_sae` accepts them wherever it takes a path):
- "sae_lens:<release>/<sae id>", e.g. "sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre": the repo
  and folder come from SAELens's own pretrained_saes.yaml when sae_lens is importable, otherwise from
  `BUILTIN_RELEASES`, the releases the reference post used;
- "hf:<owner>/<repo>/<folder>": any hub repo and the folder inside it that holds the SAE files.
Only that folder is downloaded (`huggingface_hub.snapshot_download(allow_patterns=...)`). With
HF_HUB_OFFLINE=1 the cache alone answers; a source that is neither cached nor reachable fails at once
with one line (helpers.hub), never a retry loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers.hub import require_hub
from helpers.sae.base import SAEError

PREFIXES = ("sae_lens:", "hf:")
# release -> (repo id, {sae id: folder}); what SAELens's pretrained_saes.yaml lists for them
BUILTIN_RELEASES = {
    "gpt2-small-res-jb": (
        "jbloom/GPT2-Small-SAEs-Reformatted",
        {f"blocks.{i}.hook_resid_pre": f"blocks.{i}.hook_resid_pre" for i in range(12)}
        | {"blocks.11.hook_resid_post": "blocks.11.hook_resid_post"},
    ),
}


def is_hub_source(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIXES)


def repo_and_folder(source: str) -> tuple[str, str]:
    """(repo id, folder in the repo) of a hub source."""
    if source.startswith("hf:"):
        parts = source[3:].strip("/").split("/", 2)
        if len(parts) < 3 or not all(parts):
            raise SAEError(f"{source!r}: write hf:<owner>/<repo>/<folder with the SAE files>")
        return f"{parts[0]}/{parts[1]}", parts[2]
    release, _, sae_id = source[len("sae_lens:") :].partition("/")
    if not release or not sae_id:
        raise SAEError(
            f"{source!r}: write sae_lens:<release>/<sae id>, "
            "e.g. sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre"
        )
    try:  # SAELens's own table, when it is installed
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        table = {r: (repo, saes) for r, (repo, saes) in BUILTIN_RELEASES.items()}
    else:
        table = {r: (v.repo_id, v.saes_map) for r, v in get_pretrained_saes_directory().items()}
    if release not in table:
        known = ", ".join(sorted(table)[:6])
        raise SAEError(
            f"unknown SAELens release {release!r}; known here: {known} (install sae_lens for its full table)"
        )
    repo, saes = table[release]
    if sae_id not in saes:
        raise SAEError(f"release {release!r} has no SAE {sae_id!r}; it has e.g. {', '.join(list(saes)[:4])}")
    return repo, saes[sae_id]


def fetch(source: str) -> Path:
    """The local folder of a hub source, downloaded into the Hugging Face cache on first use."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, folder = repo_and_folder(source)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    root = None
    try:  # the cache first: no network for a source fetched before
        root = snapshot_download(repo, allow_patterns=[f"{folder}/*"], local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if root is None or not (Path(root) / folder).is_dir():
        if offline:
            raise SAEError(
                f"{source}: not in the Hugging Face cache and HF_HUB_OFFLINE=1; fetch it once online "
                "or pass a local SAE directory"
            )
        require_hub(f"SAE {source}")  # one line, at once, when the hub is unreachable
        root = snapshot_download(repo, allow_patterns=[f"{folder}/*"])
    path = Path(root) / folder
    if not path.is_dir():
        raise SAEError(f"{source}: {repo} has no folder {folder!r}; check the SAE id")
    return path
