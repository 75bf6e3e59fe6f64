"""Debian's Chromium for screenshots and browser tests: where it is, and the flags that keep it offline.

The flags keep Chromium off the network (machines here have none; without them it opens many
refused connections at every start) and out of any user profile. Installed by
`scripts/install_browser.sh` (apt-get install chromium); never a browser download.
"""

from __future__ import annotations

import shutil

OFFLINE_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium(override: str | None = None) -> str:
    """The Chromium executable: `override`, else `chromium` or `chromium-browser` on PATH."""
    exe = override or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise FileNotFoundError(
            "no chromium on PATH; run `bash scripts/install_browser.sh` (apt-get install chromium)"
        )
    return exe
