"""GET /__microkit/metrics: everything this host's gateway and workers measured, in the Prometheus
text format, for an API key with the admin scope or a peer in `[gateway] metrics_allow`.

A scrape reads the tables of the gateway and of every service (one row per worker slot, whatever
the number of recycles: see `table`), adds what the answering gateway worker knows now (instances
per service, registry age), and asks this project's `microkit up` for restarts, blocked-loop kills
and FATAL services over its control socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import bottle

from microkit.errors import MicrokitError
from microkit.gateway.checks import Call, checks_for
from microkit.gateway.policy import admin_policy
from microkit.gateway.proxy import TrustedProxies
from microkit.gateway.routing import split_target
from microkit.gateway.security import Denied
from microkit.metrics import events as events_meter, folder
from microkit.metrics.exposition import CONTENT_TYPE, document, render_tables, render_values
from microkit.metrics.gateway import SERVICE, GatewayMeter, gateway_layout
from microkit.metrics.table import Family, Layout, read_totals, tables
from microkit.metrics.workers import worker_layout

SLOT_ENV = "MICROKIT_WORKER_SLOT"
HEALTHY = Family("microkit_gateway_instances_healthy", "gauge", "Instances of a service the gateway routes to "
                 "(registered, not ejected), as the answering gateway worker sees them.", ("service",), ())
TOTAL = Family("microkit_gateway_instances", "gauge", "Instances of a service in the registry.", ("service",), ())
AGE = Family("microkit_gateway_registry_age_seconds", "gauge", "Age of the registry snapshot the gateway routes "
             "with (grows while the registry is unreachable).", (), ())
RESTARTS = Family("microkit_worker_restarts_total", "counter", "Workers of a service replaced after they died.",
                  ("service",), ())
BLOCKED = Family("microkit_worker_blocked_kills_total", "counter", "Workers killed because their event loop was "
                 "blocked for longer than the service's timeout.", ("service",), ())
READY = Family("microkit_workers_ready", "gauge", "Workers of a service ready to serve.", ("service",), ())
FATAL = Family("microkit_service_fatal", "gauge", "1 when a service gave up booting (FATAL).", ("service",), ())


def install(gateway) -> None:
    """Meter the gateway's proxy path in this worker and serve GET /__microkit/metrics."""
    slot = os.environ.get(SLOT_ENV)
    owner = os.getppid() if slot else os.getpid()
    try:
        meter = GatewayMeter(gateway.config.root, gateway.routes, int(slot or 1), owner)
    except OSError as exc:
        print(f"metrics off: cannot write {folder(gateway.config.root)}: {exc.strerror or exc}")
        meter = None
    gateway.meter = meter
    handler = gateway.microkit_raw_handler
    handler.meter = meter
    if meter is not None:
        meter.start(gateway.proxy, handler.tunnels)
    from microkit.gateway.app import ADMIN_PREFIX
    def metrics() -> bytes:
        bottle.response.content_type = CONTENT_TYPE
        return scrape(gateway)
    gateway.app.route(f"{ADMIN_PREFIX}/metrics", "GET", guarded(gateway, metrics))


def guarded(gateway, render: Callable[[], bytes], allow_networks: bool = True) -> Callable[[], bytes]:
    """`render` for an admin API key (or a `metrics_allow` peer when `allow_networks`); else the refusal."""
    allow = TrustedProxies(gateway.config.gateway.metrics_allow if allow_networks else ())
    checks = checks_for(admin_policy(gateway.config), gateway.security)

    def view() -> bytes:
        environ = bottle.request.environ
        session_ok = getattr(gateway, "session_ok", None)  # a dashboard session (microkit/dashboard)
        if environ["REMOTE_ADDR"] not in allow and not (session_ok is not None and session_ok(environ)):
            request = environ["microkit.request"]
            call = Call(request, *split_target(request.target))
            try:
                for check in checks:
                    check(call)
            except Denied as denied:
                return gateway._error(denied.status, denied.message, denied.headers)
        return render()
    return view


def summed(root: Path, service: str, layout: Layout, owner: int | None = None) -> list[float]:
    """A service's cells added up over every live table of this host (or only those of the supervisor
    `owner`: a gateway reports its own figures, not those of another gateway on the same host)."""
    totals = [0.0] * layout.cells
    for _, path in tables(folder(root), service):
        if owner is not None and not path.name.endswith(f"-{owner}.table"):
            continue
        read = read_totals(path, layout)
        if read is not None:
            totals = [a + b for a, b in zip(totals, read[0])]
    return totals


def supervisor_status(root: Path) -> dict | None:
    """The status of this project's `microkit up`, or None when none answers."""
    from microkit.supervisor import control
    try:
        return control.request(root, {"command": "status"}, timeout=1.0)
    except (MicrokitError, OSError):
        return None


LAG = Family(events_meter.LAG, "gauge", "Events of a type not yet delivered to a consumer group, as the store "
             "tells it (embedded, Redis Streams; AMQP: the ready messages of pool queues).", ("group", "type"), ())
PENDING = Family(events_meter.PENDING, "gauge", "Events delivered to a consumer group and not acked yet "
                 "(embedded, Redis Streams).",
                 ("group", "type"), ())


def event_parts(gateway) -> list[list[str]]:
    """The event tables of this host, and each consumer group's lag as the store tells it (nothing when the
    store cannot answer now; a scrape waits for it for about a second at most)."""
    found = events_meter.tables_of(gateway.config.root)
    parts = [render_tables(found)]
    pools = sorted({values[:2] for layout, _ in found for family in layout.families
                    if family.name == events_meter.HANDLED for values in family.series})
    try:
        store = getattr(gateway, "events_store", None)
        if store is None:
            from microkit.events.backends import connect
            from microkit.events.settings import resolve
            where = resolve(gateway.config, SERVICE)
            store = gateway.events_store = connect(where.url, where.namespace, publish_timeout=0.5)
        lag = store.lag(pools)
    except Exception:  # the store is down or cannot tell: the rest of the scrape stands
        return parts
    if lag:
        parts.append(render_values(LAG, {key: waiting for key, (waiting, _) in sorted(lag.items())
                                         if waiting is not None}))
        parts.append(render_values(PENDING, {key: pending for key, (_, pending) in sorted(lag.items())
                                             if pending is not None}))
    return parts


def scrape(gateway) -> bytes:
    root = gateway.config.root
    meter = getattr(gateway, "meter", None)
    glayout = meter.layout if meter is not None else gateway_layout([(r.prefix, r.service) for r in gateway.routes])
    services = [name for name, s in gateway.config.services.items() if s.app] + [SERVICE]
    workers = [(layout, summed(root, name, layout)) for name, layout in ((n, worker_layout(n)) for n in services)]
    owner = meter.table.owner if meter is not None else None
    parts = [render_tables([(glayout, summed(root, SERVICE, glayout, owner))]), render_tables(workers)]
    parts.append(render_values(HEALTHY, {(r.service,): len(r.balancer.healthy()) for r in gateway.routes}))
    parts.append(render_values(TOTAL, {(r.service,): len(r.balancer.upstreams) for r in gateway.routes}))
    parts.append(render_values(AGE, {(): round(min(gateway.snapshot_age(), 1e9), 3)}))
    parts += event_parts(gateway)
    status = supervisor_status(root)
    if status is not None:
        groups = status.get("services", [])
        parts.append(render_values(RESTARTS, {(g["name"],): g.get("restarts", 0) for g in groups}))
        parts.append(render_values(BLOCKED, {(g["name"],): g.get("blocked_kills", 0) for g in groups}))
        parts.append(render_values(READY, {(g["name"],): sum(i["state"] == "ready" for i in g.get("instances", []))
                                           for g in groups}))
        parts.append(render_values(FATAL, {(g["name"],): int(g.get("state") == "FATAL") for g in groups}))
    return document(parts)
