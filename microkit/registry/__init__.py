"""Service discovery: where instances register and gateways find them, chosen by URL scheme.

`connect(url, project_root=..., namespace=...)` is the one entry point: `redis://` and `rediss://` give
the multi-host RedisRegistry, no URL gives the EmbeddedRegistry in `<project_root>/.microkit/registry.db`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from microkit import storage
from microkit.registry.base import Registry
from microkit.registry.contract import (
    DEFAULT_TTL, HEARTBEAT_INTERVAL, POLL_INTERVAL, Instance, RegistryUnavailable, Snapshot,
)
from microkit.registry.embedded import EmbeddedRegistry
from microkit.registry.heartbeat import Heartbeat
from microkit.registry.watcher import Watcher
from microkit.storage import redacted

__all__ = [
    "DEFAULT_TTL", "HEARTBEAT_INTERVAL", "POLL_INTERVAL", "EmbeddedRegistry", "Heartbeat", "Instance",
    "RedisRegistry", "Registry", "RegistryUnavailable", "Snapshot", "Watcher", "backend_for", "connect", "embedded_path",
    "redacted", "schemes",
]

def _redis(url: str, namespace: str) -> Registry:
    """RedisRegistry, imported on first use: a worker on the embedded registry never loads redis-py."""
    from microkit.registry.redis_registry import RedisRegistry

    return RedisRegistry(url, namespace)


T = TypeVar("T")

schemes: dict[str, Callable[[str, str], Registry]] = {
    "redis": _redis,
    "rediss": _redis,
    "redis+sentinel": _redis,
}


def __getattr__(name: str):
    if name == "RedisRegistry":
        from microkit.registry.redis_registry import RedisRegistry

        return RedisRegistry
    raise AttributeError(name)


def embedded_path(project_root: Path) -> Path:
    """Where a project's embedded registry lives."""
    return Path(project_root) / ".microkit" / "registry.db"


def backend_for(url: str, table: dict[str, T]) -> T:
    """The entry of a `schemes` table for the URL's scheme; a ConfigError listing the known ones otherwise."""
    return storage.backend_for(url, table)


def connect(url: str | None, *, project_root: Path, namespace: str) -> Registry:
    """The registry for `url` (None: the embedded one), isolated under `namespace`; nothing connects yet."""
    if url is None:
        return EmbeddedRegistry(embedded_path(project_root), namespace)
    return backend_for(url, schemes)(url, namespace)
