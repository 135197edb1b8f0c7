"""Choosing an instance of a service: round-robin or least-outstanding, over instances not ejected.

Passive health: `failure_threshold` consecutive connect failures or 5xx answers eject an instance for
`base_ejection` seconds, doubling with each consecutive ejection up to `max_ejection`. At most half of
a service's instances are ever ejected at once, so a bad deploy cannot empty a service by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

POLICIES = ("round_robin", "least_outstanding")


@dataclass(eq=False)
class Upstream:
    """One instance as the balancer sees it, with its live counters."""

    key: str
    host: str
    port: int
    outstanding: int = 0
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


class Balancer:
    """The instances of one service and the policy that spreads requests over them."""

    def __init__(self, policy: str = "round_robin", *, failure_threshold: int = 3, base_ejection: float = 1.0,
                 max_ejection: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown balancing policy {policy!r} (known: {', '.join(POLICIES)})")
        self.policy = policy
        self.failure_threshold = failure_threshold
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.clock = clock
        self.upstreams: list[Upstream] = []
        self._next = 0

    def update(self, instances: Iterable[tuple[str, str, int]]) -> None:
        """Replace the instance list with (key, host, port) triples, keeping the counters of known keys."""
        known = {u.key: u for u in self.upstreams}
        fresh = []
        for key, host, port in instances:
            upstream = known.get(key)
            if upstream is None or upstream.address != (host, port):
                upstream = Upstream(key, host, port)
            fresh.append(upstream)
        self.upstreams = fresh

    def pick(self, exclude: Iterable[Upstream] = ()) -> Upstream | None:
        """The instance for the next request, skipping ejected and `exclude`d ones; None if there is none."""
        now = self.clock()
        excluded = set(map(id, exclude))
        candidates = [u for u in self.upstreams if u.ejected_until <= now and id(u) not in excluded]
        if not candidates:
            return None
        start = self._next % len(candidates)
        self._next += 1
        if self.policy == "round_robin":
            return candidates[start]
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda u: u.outstanding)

    def succeeded(self, upstream: Upstream) -> None:
        upstream.failures = 0
        upstream.ejections = 0

    def failed(self, upstream: Upstream) -> bool:
        """Count a connect failure or 5xx; returns True if this ejected the instance."""
        upstream.failures += 1
        if upstream.failures < self.failure_threshold:
            return False
        now = self.clock()
        ejected = sum(1 for u in self.upstreams if u.ejected_until > now and u is not upstream)
        if (ejected + 1) * 2 > len(self.upstreams):
            return False
        upstream.ejected_until = now + min(self.base_ejection * 2 ** upstream.ejections, self.max_ejection)
        upstream.ejections += 1
        upstream.failures = 0
        return True

    def healthy(self) -> list[Upstream]:
        now = self.clock()
        return [u for u in self.upstreams if u.ejected_until <= now]
