"""Fail fast when a profile needs the Hugging Face hub and it cannot be reached.

Without this, `from_pretrained` / `load_dataset` retry for minutes on a closed network. We check
once, with a short timeout, and raise one line that names the offline profile.
"""
from __future__ import annotations

import os
import socket
import threading

HUB_HOST = "huggingface.co"
_status: dict[str, bool] = {}


class HubUnavailableError(RuntimeError):
    pass


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if huggingface.co:443 accepts a TCP connection within `timeout` seconds.

    Honours HF_HUB_OFFLINE=1. DNS resolution runs in a daemon thread so a resolver that hangs
    cannot hang us."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if HUB_HOST in _status:
        return _status[HUB_HOST]
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    _status[HUB_HOST] = result["ok"]
    return result["ok"]


def require_hub(what: str) -> None:
    """Raise HubUnavailableError (one line, naming the fix) unless the hub is reachable."""
    if not hub_reachable():
        raise HubUnavailableError(
            f"{what} needs the Hugging Face hub ({HUB_HOST}), which is unreachable from this "
            f"machine; use the offline profile instead (PROFILE=offline, the default)."
        )
