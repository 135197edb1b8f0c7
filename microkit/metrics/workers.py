"""What a service's worker measures: requests by method and status class, their durations, and the
requests in flight; restarts and blocked-loop kills are the supervisor's (see `scrape`).

`WorkerMeter` is the engine's access-log callable (it wraps the printing one, if any), so it sees
every request the worker answered, the engine's own refusals included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from microkit.metrics import CODE_CLASSES, METHODS, code_class, folder, method_label
from microkit.metrics.table import Family, Layout, SlotTable

REQUESTS = "microkit_worker_requests_total"
DURATION = "microkit_worker_request_duration_seconds"
IN_FLIGHT = "microkit_worker_requests_in_flight"
SAMPLE_INTERVAL = 0.25


def worker_layout(service: str) -> Layout:
    return Layout((
        Family(REQUESTS, "counter", "Requests a service's workers answered, by method and status class.",
               ("service", "method", "code_class"),
               tuple((service, m, c) for m in METHODS for c in CODE_CLASSES)),
        Family(DURATION, "histogram", "Time a service's workers took to answer a request, in seconds.",
               ("service",), ((service,),)),
        Family(IN_FLIGHT, "gauge", "Requests a service's workers are answering now.", ("service",), ((service,),)),
    ))


class WorkerMeter:
    """This worker's row in its service's table."""

    def __init__(self, root: Path, service: str, slot: int, health: str = "/healthz") -> None:
        layout = worker_layout(service)
        self.table = SlotTable(folder(root), service, layout, slot)
        self.requests = {(m, c): layout.offset(REQUESTS, service, m, c) for m in METHODS for c in CODE_CLASSES}
        self.duration = layout.offset(DURATION, service)
        self.buckets = layout.families[1].buckets
        self.in_flight = layout.offset(IN_FLIGHT, service)
        self.log: Callable[[str, str, int, float], None] | None = None
        self.health = health  # health probes (the supervisor's, the registration's) are not traffic

    def __call__(self, method: str, target: str, status: int, duration_ms: float) -> None:
        if target != self.health:
            self.count(method, status, duration_ms)
        if self.log is not None:
            self.log(method, target, status, duration_ms)

    def count(self, method: str, status: int, duration_ms: float) -> None:
        table = self.table
        table.cells[self.requests[method_label(method), code_class(status)]] += 1.0
        table.observe(self.duration, self.buckets, duration_ms / 1000.0)

    def wrap(self, log: Callable[[str, str, int, float], None] | None) -> "WorkerMeter":
        """The engine's access-log callable: this meter, passing each request on to `log`."""
        self.log = log
        return self

    def follow(self, *servers) -> None:
        """Copy the engines' count of active requests (one server per listening socket) into the row a few
        times a second (gevent)."""
        import gevent
        cells, offset = self.table.cells, self.in_flight

        def sample() -> None:
            while True:
                cells[offset] = float(sum(server.active_requests for server in servers))
                gevent.sleep(SAMPLE_INTERVAL)
        gevent.spawn(sample)

    def release(self) -> None:
        self.table.release()


def metered(root: Path, service: str, slot: int, health: str, log: Callable | None,
            servers_of: Callable[[Callable | None], list]):
    """Start the worker's servers (one per listening socket) through `servers_of(access_log)` with a
    WorkerMeter in front of `log`; returns (servers, meter or None). Without a usable table (a read-only
    project folder) the worker runs unmetered and says so once."""
    try:
        meter = WorkerMeter(root, service, slot, health)
    except OSError as exc:
        print(f"metrics off: cannot write {folder(root)}: {exc.strerror or exc}")
        return servers_of(log), None
    servers = servers_of(meter.wrap(log))
    meter.follow(*servers)
    return servers, meter
