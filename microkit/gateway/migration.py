"""The path out of a monolith: a legacy upstream behind every route, and the means to move traffic to
the new services safely.

- Legacy fallback: `gateway.legacy` (a URL, or a route-less service that `up` runs) becomes a "/" route
  in the one route table, so unmatched requests take the same proxy path as any other.
- Split: `services.NAME.split` percent of a route's requests go to the service, the rest to legacy;
  with `sticky`, a user's bucket (a hash of a cookie, a header or the client address) decides, so the
  same user stays on one side, and raising the split only moves users from legacy to the service.
  `microkit route NAME --split N` writes an override to the registry's store; every gateway worker
  polls it (`Migration.run`) and logs the change.
- Failover: a bodyless idempotent request whose service cannot be reached ("connect") or answers one
  of the chosen statuses goes to legacy instead.
- Shadow: a share of matching requests is copied to the other side in a greenlet of its own (bounded by
  `queue`, its own `timeout`); after the primary's answer went to the client, the two are compared
  (microkit/gateway/compare.py) and mismatches counted and kept. The copy never touches the client's
  answer: the relay only hands the shadow a copy of the bytes it sent.
Store writes happen in one poller greenlet per worker, never on a request's path.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

import gevent
from gevent.event import AsyncResult

from microkit.config import Config, ServiceConfig, ShadowConfig, legacy_url
from microkit.gateway.balancer import Balancer
from microkit.gateway.compare import Answer, BodyCapture, compare, general, rule_pattern
from microkit.gateway.proxy import IDEMPOTENT, ProxyError
from microkit.gateway.route import Route
from microkit.gateway.upstream import NoResponse, Pool, Response
from microkit.http import Request
from microkit.http.body import Input
from microkit.http.wsgi import environ_key
from microkit.registry import RegistryUnavailable, Snapshot

log = logging.getLogger("microkit.gateway")

LEGACY = "legacy"
POLL_INTERVAL = 0.5
SHADOW_HEADER = b"X-Microkit-Shadow: 1\r\n"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def legacy_route(config: Config) -> Route | None:
    """The "/" route to `gateway.legacy`, or None when there is none."""
    gateway = config.gateway
    if gateway.legacy is None:
        return None
    address = legacy_url(gateway.legacy)
    balancer = Balancer(gateway.balance)
    if address is not None:
        balancer.update([(LEGACY, *address)])
        return Route("/", LEGACY, gateway.timeout, balancer, max_body=gateway.max_body)
    service = config.services[gateway.legacy]
    return Route("/", service.name, service.route_timeout or gateway.timeout, Balancer(service.balance or gateway.balance),
                 max_body=service.max_body if service.max_body is not None else gateway.max_body)


def bucket(key: bytes) -> float:
    """A stable place in [0, 100) for a stickiness key."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 10000 / 100


@dataclass
class RouteMigration:
    """One route's split, stickiness, failover and shadow, and its shadow counters (since last flush)."""

    service: ServiceConfig
    configured: float | None
    split: float | None
    sticky_key: str | None = None  # environ key of the header (the cookie's is HTTP_COOKIE)
    cookie: str | None = None
    connect_failover: bool = False
    failover_statuses: frozenset[int] = frozenset()
    shadow: ShadowConfig | None = None
    ignore: object = None
    noise: set[str] = field(default_factory=set)
    noise_pattern: object = None
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    def of(cls, service: ServiceConfig) -> RouteMigration:
        sticky = service.sticky or ""
        kind, _, name = sticky.partition(":")
        shadow = service.shadow
        return cls(service, service.split, service.split,
                   sticky_key=environ_key(name.encode()) if kind == "header" else ("HTTP_COOKIE" if kind == "cookie" else None),
                   cookie=name if kind == "cookie" else None,
                   connect_failover="connect" in service.failover,
                   failover_statuses=frozenset(s for s in service.failover if isinstance(s, int)),
                   shadow=shadow, ignore=rule_pattern(shadow.ignore) if shadow else None)

    def sticky_value(self, request: Request) -> bytes | None:
        if self.service.sticky == "client":
            return request.peer.encode()
        key = self.sticky_key
        if key is None:
            return None
        for name, (_, value) in zip(request.keys, request.headers):
            if name == key:
                if self.cookie is None:
                    return value
                try:
                    morsel = SimpleCookie(value.decode("latin-1")).get(self.cookie)
                except CookieError:
                    return None
                if morsel is not None:
                    return morsel.value.encode("latin-1")
        return None


class Migration:
    """The legacy route and every route's migration settings, for the proxy handler."""

    def __init__(self, config: Config, routes: list[Route], pool: Pool) -> None:
        legacy = legacy_route(config)
        if legacy is None:
            raise ValueError("the migration path needs gateway.legacy")
        self.legacy = legacy
        by_url = legacy_url(config.gateway.legacy) is not None
        self.legacy_service = None if by_url else legacy.service  # a service is found through the registry
        self.pool = pool
        self.by_prefix: dict[str, RouteMigration] = {}
        for route in routes:  # every route: `microkit route NAME --split N` may split any of them
            self.by_prefix[route.prefix] = RouteMigration.of(config.services[route.service])
        self.steered: set[str] = set()
        self._steer()
        self.in_flight = 0
        self.pending: dict[str, list[dict]] = defaultdict(list)
        self.learned: dict[str, set[str]] = defaultdict(set)
        self.random = random.random

    def _steer(self) -> None:
        """The prefixes of the routes that need the migration path: a split, a shadow or failover."""
        self.steered = {prefix for prefix, m in self.by_prefix.items()
                        if m.split is not None or m.shadow is not None or m.connect_failover or m.failover_statuses}

    # the proxy path

    def side(self, route: Route, request: Request) -> Route:
        """Which side serves this request: `route` itself, or the legacy route."""
        migration = self.by_prefix.get(route.prefix)
        if migration is None or migration.split is None or migration.split >= 100:
            return route
        if migration.split <= 0:
            return self.legacy
        key = migration.sticky_value(request) if migration.service.sticky else None
        place = bucket(key) if key is not None else self.random() * 100
        return route if place < migration.split else self.legacy

    def failover(self, route: Route, request: Request, error: ProxyError | None, status: int = 0) -> bool:
        """Whether a failed request to `route`'s service goes to legacy instead."""
        migration = self.by_prefix.get(route.prefix)
        if migration is None or request.method not in IDEMPOTENT or request.content_length or request.chunked:
            return False
        if error is not None:
            return (error.status == 503 and migration.connect_failover) or error.status in migration.failover_statuses
        return status in migration.failover_statuses

    def shadow(self, route: Route, side: Route, request: Request, heads: Callable[[Route], bytes]) -> Shadow | None:
        """A shadow copy of this request to the other side, started now; None when it is not copied."""
        migration = self.by_prefix.get(route.prefix)
        if migration is None or migration.shadow is None:
            return None
        config = migration.shadow
        if request.method not in config.methods or self.random() * 100 >= config.percent:
            return None
        if request.chunked or (request.content_length or 0) > config.max_body:
            return None
        if self.in_flight >= config.queue:
            migration.counts["dropped"] += 1
            return None
        body = None
        if request.content_length:
            body = request.input.read(request.content_length)
            replay = Input(None)
            replay.feed(body)
            request.input = replay
        other = self.legacy if side is route else route
        second = heads(side) if config.noise and request.method in SAFE else None
        job = Shadow(self, route.service, migration, side, other, heads(other), second, body, request)
        self.in_flight += 1
        gevent.spawn(job.run)
        return job

    # the store: one greenlet per worker

    def remember(self, service: str, record: dict, keep: int) -> None:
        """Queue a mismatch for the store; while the store is unreachable only the last `keep` wait."""
        pending = self.pending[service]
        pending.append(record)
        if len(pending) > keep:
            del pending[:-keep]

    def update(self, snapshot: Snapshot) -> None:
        """Point a legacy service's balancer at its instances (registry watcher callback)."""
        if self.legacy_service is not None:
            self.legacy.balancer.update((i.instance_id, i.host, i.port) for i in snapshot.get(self.legacy_service, []))

    def apply_splits(self, overrides: dict[str, dict]) -> None:
        """Take the live splits from the store, logging every change."""
        for migration in self.by_prefix.values():
            name = migration.service.name
            wanted = overrides[name]["split"] if name in overrides else migration.configured
            if wanted != migration.split:
                source = "microkit route" if name in overrides else "microkit.toml"
                log.info("route %s: split %s -> %s%% to the service (from %s)", name,
                         "none" if migration.split is None else f"{migration.split:g}%",
                         "100" if wanted is None else f"{wanted:g}", source)
                migration.split = wanted
                self._steer()

    def flush(self, store) -> None:
        counts = {}
        for migration in self.by_prefix.values():
            if migration.counts:
                counts[migration.service.name] = dict(migration.counts)
        diffs, noise = dict(self.pending), {k: set(v) for k, v in self.learned.items() if v}
        if not (counts or diffs or noise):
            return
        keep = {m.service.name: m.shadow.keep for m in self.by_prefix.values() if m.shadow is not None}
        store.add(counts, diffs, noise, keep)
        for migration in self.by_prefix.values():
            migration.counts.clear()
        self.pending.clear()
        self.learned.clear()

    def run(self, store) -> None:
        """Forever: read live splits, write shadow results; an unreachable store is retried. Noise other
        gateways learned is taken over once, at the first contact."""
        failing = False
        noise_known = False
        while True:
            try:
                if not noise_known:
                    for migration in self.by_prefix.values():
                        if migration.shadow is not None and migration.shadow.noise:
                            migration.noise |= set(store.report(migration.service.name)["noise"])
                    noise_known = True
                self.apply_splits(store.splits())
                self.flush(store)
                if failing:
                    log.info("migration store reachable again")
                failing = False
            except RegistryUnavailable as exc:
                if not failing:
                    log.warning("%s; keeping the current splits", exc)
                failing = True
            except Exception:
                log.exception("migration poller failed; retrying")
            gevent.sleep(POLL_INTERVAL)


class Shadow:
    """One copy in flight: sent to the other side at once, compared once the primary's answer is known."""

    def __init__(self, migration: Migration, service: str, route: RouteMigration, primary: Route, other: Route,
                 head: bytes, second_head: bytes | None, body: bytes | None, request: Request) -> None:
        self.migration = migration
        self.service = service
        self.route = route
        self.primary = primary
        self.other = other
        self.head = head
        self.second_head = second_head
        self.body = body
        self.method = request.method
        self.target = request.target.decode("latin-1")
        self.capture = BodyCapture(route.shadow.max_body)
        self.answer: AsyncResult = AsyncResult()

    def primary_done(self, status: int, headers: list[tuple[bytes, bytes]], rid: bytes) -> None:
        """The primary's answer went out whole (its body went through `capture`)."""
        self.rid = rid.decode("latin-1")
        self.answer.set(Answer.of(status, headers, self.capture, self.primary.service))

    def primary_failed(self) -> None:
        self.answer.set(None)

    def run(self) -> None:
        config = self.route.shadow
        counts = self.route.counts
        try:
            try:
                with gevent.Timeout(config.timeout):
                    copy = self._exchange(self.other, self.head)
            except (Exception, gevent.Timeout):
                counts["failed"] += 1
                return
            primary = self.answer.get(timeout=max(config.timeout, 1.0) * 2) if not self.answer.ready() else self.answer.value
            if primary is None:
                return
            noise = self._learn_noise(primary) if self.second_head is not None else None
            found = compare(primary, copy, config.headers, self.route.ignore)
            if noise is not None and found:
                found = [d for d in found if not noise.match(d[0])]
            counts["compared"] += 1
            if found:
                counts["mismatched"] += 1
                self.migration.remember(self.service, {
                    "at": time.time(), "method": self.method, "target": self.target, "request_id": self.rid,
                    "differences": [[f, left, right] for f, left, right in found[:50]],
                    "primary": primary.shown(config.headers), "shadow": copy.shown(config.headers)}, config.keep)
        except gevent.Timeout:
            counts["failed"] += 1
        finally:
            self.migration.in_flight -= 1

    def _learn_noise(self, primary: Answer):
        """Diffy's trick: the primary side asked again; what differs between its own answers is noise."""
        try:
            with gevent.Timeout(self.route.shadow.timeout):
                again = self._exchange(self.primary, self.second_head)
        except (Exception, gevent.Timeout):
            return rule_pattern(self.route.noise)
        fresh = {general(f) for f, _, _ in compare(primary, again, self.route.shadow.headers)}
        if fresh - self.route.noise:
            self.route.noise |= fresh
            self.migration.learned[self.service] |= fresh
        return rule_pattern(self.route.noise)

    def _exchange(self, side: Route, head: bytes) -> Answer:
        upstream = side.balancer.pick()
        if upstream is None:
            raise ProxyError(503, f"no healthy instance of {side.service}")
        pool = self.migration.pool
        upstream.outstanding += 1
        try:
            conn, reused = pool.acquire(upstream.address)
            try:
                response = self._send(conn, head)
            except NoResponse:
                if not reused:  # a fresh connection's failure is final; a pooled one may just be stale
                    raise
                response = self._send(pool.connect(upstream.address), head)
            capture = BodyCapture(self.route.shadow.max_body)
            try:
                if response.complete:
                    capture(response.take())
                else:
                    for chunk in response.body():
                        capture(chunk)
            finally:
                response.release()
            return Answer.of(response.status, response.headers, capture, side.service)
        finally:
            upstream.outstanding -= 1

    def _send(self, conn, head: bytes) -> Response:
        try:
            conn.send(head, self.body, False)
            return Response(conn, self.migration.pool, head_only=self.method == "HEAD")
        except BaseException:
            conn.close()
            raise
