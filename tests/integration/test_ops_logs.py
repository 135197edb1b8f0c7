"""Issue 10, item 8: timestamps on every line, --log-format json, --log-level, health probes not access-logged."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from microkit.testing import eventually

from support.up import Up, get


@pytest.fixture
def up(start):
    """up(*args, gateway=False): `microkit up` on a project with one plain service routed at /plain."""
    return lambda *args, **options: start({"plain": {"app": "services.plain.app:app", "route": "/plain"}},
                                          {"plain": "plain_app.py"}, *args, **options)


def records(up: Up) -> list[dict]:
    return [json.loads(line) for line in up.raw_lines]


def test_every_line_has_a_timestamp_and_health_probes_are_not_logged(up):
    running = up()
    urls = running.ready()
    assert get(urls["plain"] + "/version") == (200, "v1")
    running.wait_for(r"^plain\.1 +\| GET /version 200 [\d.]+ms$")
    running.signal(signal.SIGTERM)
    assert running.wait() == 0
    for line in running.raw_lines:
        if not line.startswith(("ready: ", "services: ")):
            assert re.match(r"^\d\d:\d\d:\d\d (microkit|plain\.1|plain) +\| ", line), line
    assert "GET /healthz" not in running.output, "the supervisor's own health probes are not access-logged"


def test_health_probes_are_logged_when_asked(up):
    running = up("--log-health")
    running.ready()
    running.wait_for(r"^plain\.1 +\| GET /healthz 200 [\d.]+ms$")


def test_json_lines_with_access_fields_from_workers_and_the_gateway(up):
    running = up("--log-format", "json", gateway=True)
    ready = running.wait_for(r'"message": "ready: gateway (http://[\d.:]+)"', 20)
    gateway = ready.group(1)
    services = running.wait_for(r'"message": "services: plain (http://[\d.:]+)"', 5).group(1)
    assert get(services + "/version") == (200, "v1")
    assert get(gateway + "/plain/version") == (404, "not found"), "the app answers the whole path"
    running.wait_for(r'"service": "gateway".*"path": "/plain/version"', 5)
    running.wait_for(r'"service": "plain".*"path": "/version"', 5)
    running.signal(signal.SIGTERM)
    assert running.wait() == 0
    found = records(running)
    for record in found:
        assert {"time", "service", "worker", "level", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    direct = next(r for r in found if r.get("path") == "/version")
    assert direct["service"] == "plain" and direct["worker"] == "plain.1" and direct["level"] == "info"
    assert direct["method"] == "GET" and direct["status"] == 200 and isinstance(direct["ms"], float)
    proxied = next(r for r in found if r.get("path") == "/plain/version" and r["service"] == "gateway")
    assert proxied["service"] == "gateway" and proxied["status"] == 404
    assert proxied["upstream"].startswith("127.0.0.1:") and proxied["request_id"] not in (None, "-")
    assert not any(r.get("path") in ("/healthz", "/__microkit/health") for r in found)


def test_log_level_warning_leaves_out_info_lines(up):
    running = up("--log-level", "warning")
    urls = running.ready()
    assert get(urls["plain"] + "/version") == (200, "v1")
    (pid,) = eventually(lambda: running.pids("plain"), 5)
    os.kill(pid, signal.SIGKILL)
    running.wait_for(rf"^plain +\| plain\.1 \(pid {pid}\) killed by SIGKILL; restarting$")
    running.signal(signal.SIGTERM)
    assert running.wait() == 0
    assert "GET /version" not in running.output and "supervisor pid" not in running.output
    assert "serving services.plain.app:app" not in running.output
