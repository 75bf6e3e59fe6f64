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


def tcp_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if host:port accepts a TCP connection within `timeout` seconds. DNS resolution runs in
    a daemon thread so a resolver that hangs cannot hang us."""
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result["ok"]


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if huggingface.co:443 accepts a TCP connection within `timeout` seconds (checked once).

    Honours HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if HUB_HOST not in _status:
        _status[HUB_HOST] = tcp_reachable(HUB_HOST, 443, timeout)
    return _status[HUB_HOST]


def require_hub(what: str) -> None:
    """Raise HubUnavailableError (one line, naming the fix) unless the hub is reachable."""
    if not hub_reachable():
        raise HubUnavailableError(
            f"{what} needs the Hugging Face hub ({HUB_HOST}), which is unreachable from this "
            f"machine; use the offline profile instead (PROFILE=offline, the default)."
        )
