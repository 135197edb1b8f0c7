"""A local, always-readable copy of the registry, kept current by notifications and bounded polling."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from microkit.registry.contract import (
    DEFAULT_TTL, POLL_INTERVAL, ChangeFeed, Instance, RegistryUnavailable, Snapshot, Source,
)

log = logging.getLogger(__name__)

WAIT_SLICE = 0.1


def membership(snapshot: Snapshot) -> dict[str, list[Instance]]:
    """The snapshot without heartbeat times, so that only real changes count as changes."""
    return {service: [replace(i, last_seen=0.0) for i in found] for service, found in snapshot.items()}


class Watcher:
    """Refreshes a snapshot on every change notification and at least every `interval` seconds.

    Notifications make changes visible at once; the poll is what guarantees convergence after a missed
    message, an expired instance or a restarted store. While the store is down the last snapshot stays
    readable, and `age` says how old it is. For `recovery_grace` seconds after the store comes back,
    instances it no longer lists are kept: a restarted Redis starts empty, and heartbeats need a moment
    to re-create their entries.
    """

    def __init__(self, registry: Source, callback: Callable[[Snapshot], None] | None = None,
                 interval: float = POLL_INTERVAL, recovery_grace: float = DEFAULT_TTL) -> None:
        self.registry = registry
        self.recovery_grace = recovery_grace
        self._recovered_at = -math.inf
        self.callback = callback
        self.interval = interval
        self.error: RegistryUnavailable | None = None
        self._snapshot: Snapshot = {}
        self._refreshed_at: float | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"registry-watcher-{registry.namespace}",
                                        daemon=True)

    def start(self) -> Watcher:
        """Take a first snapshot now (if the store answers), then keep it current in a daemon thread."""
        try:
            self.refresh()
        except RegistryUnavailable as exc:
            self._failed(exc)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing; returns within about WAIT_SLICE plus one store call."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def snapshot(self) -> Snapshot:
        """The last known services and their instances."""
        return self._snapshot

    def instances(self, service: str) -> list[Instance]:
        """The last known instances of `service`."""
        return self._snapshot.get(service, [])

    @property
    def age(self) -> float:
        """Seconds since the snapshot was last confirmed by the store (infinite if never)."""
        if self._refreshed_at is None:
            return math.inf
        return time.monotonic() - self._refreshed_at

    def refresh(self) -> None:
        """Read the whole namespace now; call the callback if membership changed."""
        snapshot = self.registry.services()
        if self.error is not None:
            self._recovered_at = time.monotonic()
        if time.monotonic() - self._recovered_at < self.recovery_grace:
            snapshot = self._with_missing_kept(snapshot)
        changed = membership(snapshot) != membership(self._snapshot)
        self._snapshot = snapshot
        self._refreshed_at = time.monotonic()
        if self.error is not None:
            log.info("registry %r reachable again", self.registry)
            self.error = None
        if changed and self.callback is not None:
            try:
                self.callback(snapshot)
            except Exception:
                log.exception("registry watcher callback failed")

    def _with_missing_kept(self, snapshot: Snapshot) -> Snapshot:
        """`snapshot` plus the instances of the previous one it lacks."""
        merged = {service: list(found) for service, found in snapshot.items()}
        for service, found in self._snapshot.items():
            present = {i.instance_id for i in merged.get(service, [])}
            merged.setdefault(service, []).extend(i for i in found if i.instance_id not in present)
        return merged

    def _run(self) -> None:
        feed: ChangeFeed | None = None
        while not self._stopping.is_set():
            try:
                if feed is None:
                    feed = self.registry.changes()
                self.refresh()
                self._wait(feed)
            except Exception as exc:  # the watcher must outlive any store error, keeping its last snapshot
                if not isinstance(exc, RegistryUnavailable):
                    log.exception("registry watcher: unexpected error; retrying")
                    exc = RegistryUnavailable(f"registry {self.registry!r}: {exc}")
                self._failed(exc)
                if feed is not None:
                    try:
                        feed.close()
                    except Exception:
                        pass
                    feed = None
                self._stopping.wait(self.interval)
        if feed is not None:
            feed.close()

    def _wait(self, feed: ChangeFeed) -> None:
        """Return on a notification, after `interval`, or soon after stop()."""
        deadline = time.monotonic() + self.interval
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or feed.wait(min(WAIT_SLICE, remaining)):
                return

    def _failed(self, exc: RegistryUnavailable) -> None:
        if self.error is None:
            log.warning("%s; keeping the last snapshot (%.1f s old)", exc, self.age)
        self.error = exc
