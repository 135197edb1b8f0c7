"""What the gateway measures, per route and service (names after Traefik's and Envoy's).

`GatewayMeter.record` is called once per routed request (from the access-log path of
microkit/gateway/handler.py): requests by method and status class, the whole duration and the part
spent upstream, and the gateway's own 401/403 (auth) and 429 (rate limit) refusals. Figures the proxy
keeps anyway (upstream requests in flight, open WebSocket tunnels, retries, ejections) are copied into
the row by `sample()` a few times a second, so the proxy path pays nothing for them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from microkit.metrics import CODE_CLASSES, METHODS, code_class, folder, method_label
from microkit.metrics.table import Family, Layout, SlotTable

REQUESTS = "microkit_gateway_requests_total"
DURATION = "microkit_gateway_request_duration_seconds"
UPSTREAM = "microkit_gateway_upstream_duration_seconds"
IN_FLIGHT = "microkit_gateway_requests_in_flight"
TUNNELS = "microkit_gateway_websocket_tunnels"
RETRIES = "microkit_gateway_retries_total"
EJECTIONS = "microkit_gateway_ejections_total"
RATELIMITED = "microkit_gateway_ratelimit_refusals_total"
AUTH_REFUSED = "microkit_gateway_auth_refusals_total"
SERVICE = "gateway"
SAMPLE_INTERVAL = 0.25
RECENT = 50


def gateway_layout(routes: Sequence[tuple[str, str]]) -> Layout:
    """The families for routes given as (prefix, service)."""
    keys = tuple(routes)
    by = ("route", "service")
    return Layout((
        Family(REQUESTS, "counter", "Requests the gateway answered per route, by method and status class.",
               (*by, "method", "code_class"), tuple((*k, m, c) for k in keys for m in METHODS for c in CODE_CLASSES)),
        Family(DURATION, "histogram", "Time from a request's head to the end of its answer, in seconds.", by, keys),
        Family(UPSTREAM, "histogram", "Time from sending a request to an instance to the end of its answer, "
                                      "in seconds.", by, keys),
        Family(IN_FLIGHT, "gauge", "Requests sent to an instance and not answered yet.", by, keys),
        Family(TUNNELS, "gauge", "Open WebSocket tunnels.", by, keys),
        Family(RETRIES, "counter", "Requests sent again (another instance after a failed connect, or a fresh "
                                   "connection after a stale pooled one).", by, keys),
        Family(EJECTIONS, "counter", "Instances ejected by passive health checks.", by, keys),
        Family(RATELIMITED, "counter", "Requests refused with 429 by the route's rate limit.", by, keys),
        Family(AUTH_REFUSED, "counter", "Requests refused by the route's auth (401 no or bad credentials, "
                                        "403 missing scope).", (*by, "code"),
               tuple((*k, code) for k in keys for code in ("401", "403"))),
    ))


class _RouteCells:
    __slots__ = ("requests", "duration", "upstream", "in_flight", "tunnels", "retries", "ejections",
                 "ratelimited", "auth", "seen_retries", "ejected_until")

    def __init__(self, layout: Layout, key: tuple[str, str]) -> None:
        self.requests = {(m, c): layout.offset(REQUESTS, *key, m, c) for m in METHODS for c in CODE_CLASSES}
        self.duration = layout.offset(DURATION, *key)
        self.upstream = layout.offset(UPSTREAM, *key)
        self.in_flight = layout.offset(IN_FLIGHT, *key)
        self.tunnels = layout.offset(TUNNELS, *key)
        self.retries = layout.offset(RETRIES, *key)
        self.ejections = layout.offset(EJECTIONS, *key)
        self.ratelimited = layout.offset(RATELIMITED, *key)
        self.auth = {401: layout.offset(AUTH_REFUSED, *key, "401"), 403: layout.offset(AUTH_REFUSED, *key, "403")}
        self.seen_retries = 0
        self.ejected_until: dict[int, float] = {}


class GatewayMeter:
    """This gateway worker's row in the gateway's table; `routes` are microkit.gateway.route.Route objects."""

    def __init__(self, root: Path, routes: Sequence, slot: int, owner: int | None = None) -> None:
        self.routes = list(routes)
        self.layout = gateway_layout([(r.prefix, r.service) for r in self.routes])
        self.table = SlotTable(folder(root), SERVICE, self.layout, slot, owner)
        self.cells_of = {r.prefix: _RouteCells(self.layout, (r.prefix, r.service)) for r in self.routes}
        self.buckets = self.layout.families[1].buckets
        self.recent: deque = deque(maxlen=RECENT)
        self.spans = None  # a microkit.otlp.SpanExport when [gateway] otlp_endpoint is set

    def record(self, route, method: str, status: int, started: float, upstream_started: float,
               rid: bytes = b"", trace=None) -> None:
        """One answered request of `route`; `upstream_started` is 0 when the gateway answered it itself.
        Errors (5xx) and refusals (401, 403, 429) are also kept among the recent ones, with their ids."""
        rc = self.cells_of.get(route.prefix)
        if rc is None:
            return
        now = time.monotonic()
        if status >= 500 or status in (401, 403, 429):
            self.recent.append((time.time(), route.prefix, route.service, method, status, rid.decode("latin-1"),
                                trace.trace_id.decode() if trace is not None else ""))
        table = self.table
        cells = table.cells
        cells[rc.requests[method_label(method), code_class(status)]] += 1.0
        table.observe(rc.duration, self.buckets, now - started)
        if upstream_started:
            table.observe(rc.upstream, self.buckets, now - upstream_started)
        elif status == 429:
            cells[rc.ratelimited] += 1.0
        elif status == 401 or status == 403:
            cells[rc.auth[status]] += 1.0
        if self.spans is not None:
            self.spans.record(route, method, status, started, rid, trace)

    def sample(self, retries: dict[str, int], tunnels: dict[str, int]) -> None:
        """Copy the proxy's own figures into the row: in flight and tunnels as they are now, retries and
        ejections as increments (an ejection is seen as an instance's ejected_until moving ahead)."""
        cells = self.table.cells
        for route in self.routes:
            rc = self.cells_of[route.prefix]
            upstreams = route.balancer.upstreams
            cells[rc.in_flight] = float(sum(u.outstanding for u in upstreams))
            cells[rc.tunnels] = float(tunnels.get(route.prefix, 0))
            total = retries.get(route.service, 0)
            if total > rc.seen_retries:
                cells[rc.retries] += total - rc.seen_retries
                rc.seen_retries = total
            seen = rc.ejected_until
            fresh = {}
            for u in upstreams:
                until = u.ejected_until
                if until > seen.get(id(u), 0.0) and until > 0.0:
                    cells[rc.ejections] += 1.0
                fresh[id(u)] = until
            rc.ejected_until = fresh

    def start(self, proxy, tunnels) -> None:
        """Sample `proxy.retries` and `tunnels.open` every SAMPLE_INTERVAL (gevent)."""
        import gevent

        def loop() -> None:
            while True:
                self.sample(proxy.retries, tunnels.open)
                gevent.sleep(SAMPLE_INTERVAL)
        gevent.spawn(loop)

    def release(self) -> None:
        self.table.release()
