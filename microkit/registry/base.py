"""The Registry base class: what every backend must do, and the per-process state it keeps."""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from microkit.registry.contract import DEFAULT_TTL, POLL_INTERVAL, ChangeFeed, Instance, Snapshot
from microkit.registry.watcher import Watcher


@dataclass
class _ProcessState:
    """What one process owns: its connection, its lock, and the instances it keeps alive."""

    conn: Any
    pid: int = field(default_factory=os.getpid)
    lock: threading.RLock = field(default_factory=threading.RLock)
    own: dict[str, tuple[Instance, float]] = field(default_factory=dict)


_creating = threading.Lock()


class Registry(ABC):
    """Where service instances announce themselves; backends differ only in storage and notification.

    Per-process state (connection, lock, owned instances) is created lazily and again after a fork,
    so a registry built before gevent patching or before forking workers is safe to use in each child.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._state: _ProcessState | None = None

    def register(self, instance: Instance, ttl: float = DEFAULT_TTL) -> Instance:
        """Announce `instance` as live for `ttl` seconds; it is remembered first, so heartbeats retry it
        if the store is unavailable now (the RegistryUnavailable is still raised)."""
        record = replace(instance, last_seen=time.time())
        state = self._process()
        with state.lock:
            state.own[record.instance_id] = (record, ttl)
            self._put(record, ttl, announce=True)
        return record

    def heartbeat(self, instance: Instance | str) -> Instance:
        """Extend an instance registered by this process; re-creates it (and announces it) if the store lost it."""
        instance_id = instance if isinstance(instance, str) else instance.instance_id
        state = self._process()
        with state.lock:
            if instance_id not in state.own:
                raise LookupError(f"instance {instance_id!r} is not registered by this process")
            record, ttl = state.own[instance_id]
            record = replace(record, last_seen=time.time())
            state.own[instance_id] = (record, ttl)
            self._put(record, ttl, announce=False)
        return record

    def deregister(self, instance: Instance) -> None:
        """Remove `instance` now and stop heartbeating it; unknown instances are ignored."""
        state = self._process()
        with state.lock:
            state.own.pop(instance.instance_id, None)
            self._remove(instance)

    def registered(self) -> list[Instance]:
        """The instances this process registered and has not deregistered."""
        state = self._process()
        with state.lock:
            return [record for record, _ in state.own.values()]

    def watch(self, callback: Callable[[Snapshot], None] | None = None,
              interval: float = POLL_INTERVAL) -> Watcher:
        """Start a Watcher that keeps a local snapshot current and calls `callback` when membership changes."""
        return Watcher(self, callback, interval).start()

    def close(self) -> None:
        """Release this process's connection; owned instances are left to expire (deregister them first)."""
        state = self._state
        self._state = None
        if state is not None and state.pid == os.getpid():
            self._disconnect(state.conn)

    def _process(self) -> _ProcessState:
        """This process's state, created on first use and again after a fork."""
        state = self._state
        if state is None or state.pid != os.getpid():
            with _creating:
                if self._state is None or self._state.pid != os.getpid():
                    self._state = _ProcessState(conn=self._connect())
                state = self._state
        return state

    @abstractmethod
    def instances(self, service: str) -> list[Instance]:
        """Live instances of `service` (last seen within their TTL), oldest first."""

    @abstractmethod
    def services(self) -> Snapshot:
        """Every service with at least one live instance, mapped to its instances."""

    @abstractmethod
    def changes(self) -> ChangeFeed:
        """Subscribe to this namespace's change notifications."""

    @abstractmethod
    def _connect(self) -> Any:
        """Make this process's connection object (without I/O where the backend allows)."""

    @abstractmethod
    def _disconnect(self, conn: Any) -> None:
        """Close a connection made by `_connect`."""

    @abstractmethod
    def _put(self, record: Instance, ttl: float, *, announce: bool) -> None:
        """Store `record` for `ttl` seconds; notify if `announce` or if the record had vanished."""

    @abstractmethod
    def _remove(self, instance: Instance) -> None:
        """Delete `instance` and notify."""
