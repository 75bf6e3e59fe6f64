"""Fail fast when a profile needs the Hugging Face hub and it cannot be reached.

Without this, `from_pretrained` / `load_dataset` retry for minutes on a closed network. We check
once, with a short timeout, and raise one line that names the offline profile.
`from_hub_or_cache(what, load)` runs a hub load online when the hub answers, and otherwise with
huggingface_hub, transformers and datasets in offline mode, so that what an earlier online run put in
the local cache (HF_HOME, HF_HUB_CACHE, HF_DATASETS_CACHE) answers and nothing else is tried.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

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


def _offline_flags() -> list[tuple[object, str]]:
    """(module, attribute) of every offline switch the loaded HF libraries read at call time."""
    import huggingface_hub.constants as hub_constants

    flags = [(hub_constants, "HF_HUB_OFFLINE")]
    if "datasets" in sys.modules:
        import datasets.config as ds_config

        flags.append((ds_config, "HF_HUB_OFFLINE"))
    return flags


@contextmanager
def offline_mode() -> Iterator[None]:
    """huggingface_hub, transformers and datasets answer from the local cache only, inside the block."""
    flags = _offline_flags()
    old = [getattr(m, a) for m, a in flags]
    for m, a in flags:
        setattr(m, a, True)
    try:
        yield
    finally:
        for (m, a), v in zip(flags, old):
            setattr(m, a, v)


def from_hub_or_cache(what: str, load: Callable[[], T]) -> T:
    """`load()` online when the hub answers; otherwise from the local cache, and a cache miss raises
    HubUnavailableError in one line naming the fix (never a retry loop)."""
    if hub_reachable():
        return load()
    with offline_mode():
        try:
            return load()
        except (OSError, ConnectionError, ValueError) as e:  # transformers, hub and datasets cache misses
            from huggingface_hub.constants import HF_HUB_CACHE

            raise HubUnavailableError(
                f"{what} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and the hub ({HUB_HOST}) "
                "is unreachable; run once online to cache it, or use the offline profile "
                f"(PROFILE=offline, the default) [{type(e).__name__}]"
            ) from None
