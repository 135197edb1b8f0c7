"""Keeps a process's instances alive in the registry for as long as the process runs."""

from __future__ import annotations

import logging
import threading

from microkit.registry.base import Registry
from microkit.registry.contract import HEARTBEAT_INTERVAL, RegistryUnavailable

log = logging.getLogger(__name__)


class Heartbeat:
    """Refreshes every instance this process registered, every `interval` seconds, in a daemon thread.

    A store outage is logged once and retried on the next beat; when the store comes back empty (a
    restarted Redis), the beat re-creates the instances.
    """

    def __init__(self, registry: Registry, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.registry = registry
        self.interval = interval
        self.error: RegistryUnavailable | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"registry-heartbeat-{registry.namespace}",
                                        daemon=True)

    def start(self) -> Heartbeat:
        """Begin beating in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; deregister the instances separately to remove them at once."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def beat(self) -> None:
        """Refresh each registered instance once."""
        try:
            for instance in self.registry.registered():
                try:
                    self.registry.heartbeat(instance)
                except LookupError:
                    continue  # deregistered since registered() was read
        except RegistryUnavailable as exc:
            if self.error is None:
                log.warning("%s; heartbeats will retry every %.1f s", exc, self.interval)
            self.error = exc
            return
        if self.error is not None:
            log.info("registry %r reachable again; instances refreshed", self.registry)
            self.error = None

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a heartbeat thread that dies takes the instance out of routing for good
                log.exception("registry heartbeat failed; retrying in %.1f s", self.interval)
