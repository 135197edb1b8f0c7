"""The registry's shared data types: what an instance is, a snapshot of them, a change feed, and the
narrow view of a registry that a Watcher reads. Backends, the Registry base class and the watcher
import these; this module imports none of them, so imports run one way."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from microkit.storage import StoreUnavailable

DEFAULT_TTL = 2.0
HEARTBEAT_INTERVAL = 0.5
POLL_INTERVAL = 1.0

Snapshot = dict[str, list["Instance"]]


RegistryUnavailable = StoreUnavailable
"""The registry's store cannot be reached: the one storage error, under the name registry callers know."""


@dataclass(frozen=True)
class Instance:
    """One running copy of a service, reachable at host:port; times are Unix epoch seconds."""

    service: str
    host: str
    port: int
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pid: int = field(default_factory=os.getpid)
    hostname: str = field(default_factory=socket.gethostname)
    started_at: float = field(default_factory=time.time)
    last_seen: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        """Hash by identity so instances can key balancer and health tables despite the `meta` dict."""
        return hash(self.instance_id)

    def to_json(self) -> str:
        """Serialize for storage; the same text in Redis and SQLite."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Instance:
        """Parse what `to_json` wrote."""
        return cls(**json.loads(text))


def ordered(instances: list[Instance]) -> list[Instance]:
    """Sort instances oldest first, so every reader sees the same order for balancing."""
    return sorted(instances, key=lambda i: (i.started_at, i.instance_id))


class ChangeFeed(ABC):
    """A subscription to a namespace's change notifications; a hint to refresh, never the data itself."""

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when a change was announced meanwhile."""

    @abstractmethod
    def close(self) -> None:
        """Release the subscription's connection."""


class Source(Protocol):
    """What a Watcher needs of a registry: its namespace, every live instance, change notifications."""

    namespace: str

    def services(self) -> Snapshot:
        """Every service with at least one live instance, mapped to its instances."""

    def changes(self) -> ChangeFeed:
        """Subscribe to this namespace's change notifications."""
