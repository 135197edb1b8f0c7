"""Metrics (issue 14): the Prometheus text format read back with prometheus_client's own parser, the
figures of pre-forked workers added up, and a scrape that stays fast after 1,000 worker recycles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


from microkit.metrics.exposition import document, render_tables
from microkit.metrics.table import Family, Layout, SlotTable, read_totals, tables
from microkit.metrics.workers import REQUESTS, WorkerMeter, worker_layout
from microkit.testing import eventually
from support.cli import PROGRAMS, run_cli
from support.metrics import samples, value
from support.up import Up, make_project, request


def test_a_recycled_slot_keeps_adding_and_dead_rows_leave_gauges(tmp_path):
    layout = worker_layout("users")
    first = WorkerMeter(tmp_path, "users", 1)
    first("GET", "/", 200, 3.0)
    first("POST", "/", 503, 30.0)
    first.table.cells[first.in_flight] = 5.0
    second = WorkerMeter(tmp_path, "users", 1)  # a new worker in the same slot: counters go on, gauges restart
    second("GET", "/", 200, 1.0)
    [(_, path)] = list(tables(tmp_path / ".microkit" / "metrics", "users"))
    totals, rows = read_totals(path, layout)
    assert rows == 1
    assert totals[layout.offset(REQUESTS, "users", "GET", "2xx")] == 2
    assert totals[layout.offset(REQUESTS, "users", "POST", "5xx")] == 1
    assert totals[second.in_flight] == 0
    parsed = samples(document([render_tables([(layout, totals)])]).decode())
    assert value(parsed, "microkit_worker_request_duration_seconds_count", service="users") == 3
    assert value(parsed, "microkit_worker_request_duration_seconds_bucket", service="users", le="0.005") == 2
    assert value(parsed, "microkit_worker_request_duration_seconds_bucket", service="users", le="+Inf") == 3


def test_the_tables_of_a_supervisor_that_is_gone_are_removed(tmp_path):
    layout = Layout([Family("x_total", "counter", "x", (), ((),))])
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    SlotTable(tmp_path, "svc", layout, 1, owner=dead)
    live = SlotTable(tmp_path, "svc", layout, 1, owner=os.getpid())
    assert [path for _, path in tables(tmp_path)] == [live.path]
    assert len(os.listdir(tmp_path)) == 1


def test_scrape_stays_fast_after_1000_worker_recycles(tmp_path):
    """1,000 real processes take a slot among 4, count 3 requests each and die without cleaning up
    (os._exit, as a killed worker would): the table keeps 4 rows, the totals are exact, and reading
    and rendering it stays far under 50 ms."""
    layout = worker_layout("users")
    supervisor = subprocess.Popen([sys.executable, str(PROGRAMS / "metrics_recycles.py"), str(tmp_path), "1000"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout.readline() == "recycled\n"
        folder = tmp_path / ".microkit" / "metrics"
        assert len(os.listdir(folder)) == 1
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            [(_, path)] = list(tables(folder, "users"))
            totals, rows = read_totals(path, layout)
            text = document([render_tables([(layout, totals)])])
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        print(f"scrape after 1000 recycles: median {timings[10]:.2f} ms, max {timings[-1]:.2f} ms, {rows} rows")
        parsed = samples(text.decode())
        assert rows == 4
        assert value(parsed, REQUESTS, service="users", method="GET", code_class="2xx") == 2000
        assert value(parsed, REQUESTS, service="users", method="GET", code_class="4xx") == 1000
        assert timings[10] < 50, timings
    finally:
        supervisor.stdin.close()
        supervisor.wait(10)


METRICS_TOML = """
metrics_allow = ["127.0.0.1"]
"""


def test_metrics_under_microkit_up(tmp_path):
    """Two pre-forked workers behind the gateway: the counts add up across them, a worker killed with
    SIGKILL keeps its figures in the total and shows as a restart; refusals are counted per route."""
    root = make_project(tmp_path / "proj", {
        "users": {"app": "services.users.app:app", "route": "/users", "workers": 2},
        "orders": {"app": "services.orders.app:app", "route": "/orders", "rate_limit": "3/min"}},
        {"users": "routed_app.py", "orders": "routed_app.py"})
    toml = (root / "microkit.toml").read_text().replace('listen = "127.0.0.1:0"\n',
                                                         'listen = "127.0.0.1:0"\n' + METRICS_TOML, 1)
    (root / "microkit.toml").write_text(toml)
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(30)["gateway"]
        pids = set()
        for i in range(20):
            status, _, body = request(gateway, "GET", "/users/pid")
            assert status == 200
            pids.add(int(body))
        assert request(gateway, "GET", "/users/nothing")[0] == 404
        statuses = [request(gateway, "GET", "/orders/pid")[0] for _ in range(5)]
        assert statuses.count(429) == 2

        def scraped():
            status, headers, text = request(gateway, "GET", "/__microkit/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
            return samples(text)
        parsed = eventually(lambda: (p := scraped()) and value(
            p, "microkit_worker_requests_total", service="users") >= 21 and p, what="worker figures")
        assert value(parsed, "microkit_worker_requests_total", service="users", method="GET", code_class="2xx") == 20
        assert value(parsed, "microkit_worker_requests_total", service="users", code_class="4xx") == 1
        assert value(parsed, "microkit_gateway_requests_total", route="/users", service="users", code_class="2xx") == 20
        assert value(parsed, "microkit_gateway_requests_total", route="/orders", code_class="4xx") == 2
        assert value(parsed, "microkit_gateway_ratelimit_refusals_total", route="/orders", service="orders") == 2
        assert value(parsed, "microkit_gateway_request_duration_seconds_count", route="/users") == 21
        assert value(parsed, "microkit_gateway_upstream_duration_seconds_count", route="/users") == 21
        assert value(parsed, "microkit_gateway_upstream_duration_seconds_count", route="/orders") == 3
        assert value(parsed, "microkit_gateway_instances_healthy", service="users") == 2
        assert value(parsed, "microkit_gateway_instances", service="orders") == 1
        assert value(parsed, "microkit_workers_ready", service="users") == 2
        assert ("microkit_gateway_registry_age_seconds", ()) in parsed

        os.kill(pids.pop(), signal.SIGKILL)
        eventually(lambda: value(scraped(), "microkit_worker_restarts_total", service="users") == 1, 20,
                   "a restart counted")
        eventually(lambda: value(scraped(), "microkit_workers_ready", service="users") == 2, 20, "two workers again")
        parsed = scraped()
        assert value(parsed, "microkit_worker_requests_total", service="users") >= 21, "the dead worker's figures stay"
        up.signal(signal.SIGTERM)
        assert up.wait(20) == 0
    finally:
        up.close()


def test_metrics_need_the_admin_scope_outside_metrics_allow(tmp_path):
    root = make_project(tmp_path / "proj", {"users": {"app": "services.users.app:app", "route": "/users"}},
                        {"users": "routed_app.py"})
    (root / "microkit.toml").write_text((root / "microkit.toml").read_text() + '\n[gateway.auth]\nadmin_scope = "ops"\n')
    admin = run_cli("keys", "create", "ops", "--scope", "ops", cwd=root).stdout.strip()
    user = run_cli("keys", "create", "app", cwd=root).stdout.strip()
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(30)["gateway"]
        assert request(gateway, "GET", "/__microkit/metrics")[0] == 401
        assert request(gateway, "GET", "/__microkit/metrics", {"X-API-Key": user})[0] == 403
        status, _, text = request(gateway, "GET", "/__microkit/metrics", {"X-API-Key": admin})
        assert status == 200 and "microkit_gateway_requests_total" in text
        assert request(gateway, "GET", "/__microkit/metrics", {"X-Forwarded-For": "127.0.0.1"})[0] == 401
    finally:
        up.close()


def test_a_blocked_loop_kill_is_counted(tmp_path):
    root = make_project(tmp_path / "proj", {"poison": {"app": "services.poison.app:app", "route": "/poison",
                                                       "timeout": 1}}, {"poison": "poison_app.py"})
    toml = (root / "microkit.toml").read_text().replace('listen = "127.0.0.1:0"\n',
                                                         'listen = "127.0.0.1:0"\n' + METRICS_TOML, 1)
    toml = toml.replace("[services.poison]\n", f'[services.poison]\nenv = {{ POISON_LOG = "{tmp_path / "log"}" }}\n')
    (root / "microkit.toml").write_text(toml)
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(30)["gateway"]
        assert request(gateway, "GET", "/poison/block")[0] == 502

        def scraped():
            return samples(request(gateway, "GET", "/__microkit/metrics")[2])
        parsed = eventually(lambda: (p := scraped()) and value(p, "microkit_worker_blocked_kills_total",
                                                               service="poison") == 1 and p, 20, "a blocked kill")
        assert value(parsed, "microkit_worker_restarts_total", service="poison") == 1
        assert value(parsed, "microkit_gateway_requests_total", route="/poison", code_class="5xx") == 1
    finally:
        up.close()
