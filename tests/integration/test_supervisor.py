"""`microkit up` end to end: the real CLI in a temp project, real worker processes, real signals."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time

import pytest

from microkit.testing import eventually

from support.cli import run_cli
from support.up import Up, alive, get, make_project


def test_plain_wsgi_and_bottle_served_with_access_log_and_status(start):
    up = start({"plain": {"app": "services.plain.app:app", "workers": 2},
                "web": {"app": "services.web.app:app"}},
               {"plain": "plain_app.py", "web": "bottle_app.py"})
    urls = up.ready()
    assert get(urls["plain"] + "/version") == (200, "v1")
    assert get(urls["web"] + "/hello/ada") == (200, '{"hello": "ada"}')
    assert get(urls["web"] + "/healthz")[0] == 200, "the worker answers the health path the app does not route"
    up.wait_for(r"^web\.1 +\| GET /hello/ada 200 [\d.]+ms$")

    status = up.status()
    registered = eventually(lambda: len(up.status()["services"].get("plain", [])) == 2 and up.status(), 5)
    assert {i["health"] for i in registered["services"]["plain"]} == {"healthy"}
    assert {i["pid"] for i in registered["services"]["plain"]} == {w["pid"] for w in up.service("plain")["instances"]}
    plain = next(s for s in status["supervisor"]["services"] if s["name"] == "plain")
    assert plain["state"] == "running" and plain["kind"] == "app" and plain["urls"] == [urls["plain"]]
    assert len(plain["instances"]) == 2
    shared = int(urls["plain"].rsplit(":", 1)[1])
    registered_ports = {i["pid"]: i["port"] for i in registered["services"]["plain"]}
    for worker in plain["instances"]:
        assert worker["state"] == "ready" and worker["restarts"] == 0 and worker["uptime"] >= 0
        assert alive(worker["pid"])
        assert worker["port"] != shared and worker["port"] == registered_ports[worker["pid"]], "a port of its own"
        assert get(f"http://127.0.0.1:{worker['port']}/pid") == (200, str(worker["pid"]))
    table = run_cli("status", cwd=up.root)
    assert table.returncode == 0 and "plain.2" in table.stdout and "RESTARTS" in table.stdout

    up.signal(signal.SIGTERM)
    assert up.wait() == 0
    assert not any(alive(w["pid"]) for s in status["supervisor"]["services"] for w in s["instances"])
    after = json.loads(run_cli("status", "--json", cwd=up.root).stdout)
    assert after["services"] == {} and after["supervisor"] is None, "workers deregistered on the way out"


def test_no_access_log_flag(start):
    up = start({"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"}, "--no-access-log")
    urls = up.ready()
    assert get(urls["plain"] + "/version")[0] == 200
    up.signal(signal.SIGTERM)
    assert up.wait() == 0
    assert "GET /version" not in up.output


def test_killed_worker_is_replaced_within_a_second(start):
    up = start({"plain": {"app": "services.plain.app:app", "workers": 2}}, {"plain": "plain_app.py"})
    urls = up.ready()
    before = up.pids("plain")
    victim = min(before)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    after = eventually(lambda: (lambda p: p if victim not in p and len(p) == 2 else None)(up.pids("plain")), 3)
    assert time.monotonic() - killed_at < 1.0
    up.wait_for(rf"\(pid {victim}\) killed by SIGKILL; restarting")
    eventually(lambda: all(i["state"] == "ready" for i in up.service("plain")["instances"]), 3)
    assert all(get(urls["plain"] + "/version")[0] == 200 for _ in range(20))
    assert len(after - before) == 1
    assert up.service("plain")["restarts"] == 1


def test_sigterm_lets_in_flight_requests_finish(start):
    up = start({"plain": {"app": "services.plain.app:app", "workers": 2, "graceful_timeout": 5}},
               {"plain": "plain_app.py"})
    urls = up.ready()
    results: list = []

    def slow() -> None:
        try:
            results.append(get(urls["plain"] + "/nap?1.5", timeout=10))
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for thread in threads:
        thread.start()
    eventually(lambda: up.output.count("| napping") == 4, 10, "the four requests reached the app")
    up.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(10)
    assert results == [(200, "slept")] * 4
    assert up.wait() == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(urls["plain"].rsplit(":", 1)[1]))) != 0


def test_sighup_rolling_restart_loses_no_request_and_loads_new_code(start):
    """Half the clients use keep-alive, half a connection per request: none sees an error."""
    up = start({"plain": {"app": "services.plain.app:app", "workers": 2}}, {"plain": "plain_app.py"})
    urls = up.ready()
    before = up.pids("plain")
    app_file = up.root / "services" / "plain" / "app.py"
    app_file.write_text(app_file.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    failures: list = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer(keep_alive: bool) -> None:
        connection = http.client.HTTPConnection(urls["plain"].split("//")[1], timeout=5)
        while not stop.is_set():
            try:
                connection.request("GET", "/version", headers={} if keep_alive else {"Connection": "close"})
                response = connection.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    failures.append(response.status)
                versions.append(body)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(exc)
                connection.close()

    threads = [threading.Thread(target=hammer, args=(n % 2 == 0,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: len(versions) >= 25, 10, "answers from the old code")
        mark = len(up.lines)
        up.signal(signal.SIGHUP)
        up.wait_for(r"^plain +\| reloaded$", 15, start=mark)
        after = len(versions)
        eventually(lambda: len(versions) >= after + 25 and versions[-1] == "v2", 10, "answers from the new code")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    assert len(versions) > 50 and versions[0] == "v1" and versions[-1] == "v2"
    eventually(lambda: not before & up.pids("plain"), 3)


def test_reload_command_reloads_one_service(start):
    up = start({"plain": {"app": "services.plain.app:app"}, "web": {"app": "services.web.app:app"}},
               {"plain": "plain_app.py", "web": "bottle_app.py"})
    up.ready()
    plain, web = up.pids("plain"), up.pids("web")
    result = run_cli("reload", "plain", cwd=up.root)
    assert result.returncode == 0 and result.stdout.startswith("reloaded plain: 1 worker, pid ")
    up.wait_for(r"^plain +\| reloaded$")
    eventually(lambda: not plain & up.pids("plain"), 3)
    assert up.pids("web") == web
    result = run_cli("reload", "nope", cwd=up.root)
    assert result.returncode == 2 and "no running service named 'nope'" in result.stderr


def test_boot_failure_is_fatal_while_other_services_stay_up(start):
    up = start({"plain": {"app": "services.plain.app:app"}, "broken": {"app": "services.broken.app:app"}},
               {"plain": "plain_app.py", "broken": "broken_app.py"})
    up.wait_for(r"^broken +\| FATAL: gave up after 3 failed boots")
    urls = up.ready()
    up.wait_for(r"^ready: plain http://[\d.:]+ \(failed: broken\)$")
    assert get(urls["plain"] + "/version") == (200, "v1")
    assert up.output.count("No module named 'no_such_module_for_microkit_tests'") == 1
    assert up.service("broken")["state"] == "FATAL"
    up.signal(signal.SIGINT)
    assert up.wait() == 0


def test_up_exits_1_when_every_service_fails(start):
    up = start({"broken": {"app": "services.broken.app:app"}}, {"broken": "broken_app.py"})
    assert up.wait() == 1
    assert "microkit: error: every service failed to start" in up.output
    assert "Traceback" not in up.output.split("FATAL")[1]


def test_supervisor_sigkill_leaves_no_orphan_and_frees_ports(start):
    up = start({"plain": {"app": "services.plain.app:app", "workers": 2},
                "cmd": {"command": f"{sys.executable} services/cmd/command_server.py"}},
               {"plain": "plain_app.py", "cmd": "command_server.py"})
    urls = up.ready()
    pids = up.pids("plain") | up.pids("cmd")
    assert len(pids) == 3
    up.process.kill()
    killed_at = time.monotonic()
    eventually(lambda: not any(alive(pid) for pid in pids), 2)
    assert time.monotonic() - killed_at < 2
    for url in urls.values():
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_blocked_loop_is_killed_after_timeout_but_a_long_request_is_not(start):
    up = start({"plain": {"app": "services.plain.app:app", "timeout": 1.5}}, {"plain": "plain_app.py"})
    urls = up.ready()
    (pid,) = up.pids("plain")
    assert get(urls["plain"] + "/sleep?2.5") == (200, "slept")
    assert up.pids("plain") == {pid}
    with pytest.raises((OSError, Exception)):
        get(urls["plain"] + "/block", timeout=6)
    up.wait_for(rf"plain\.1 \(pid {pid}\) is blocked for more than 1.5s: killing it")
    up.wait_for(rf"\(pid {pid}\) blocked for more than 1.5s, so it was killed by SIG(ABRT|KILL); restarting")
    eventually(lambda: get(urls["plain"] + "/version") == (200, "v1"), 3)
    assert pid not in up.pids("plain")


def test_scale_up_and_down_at_run_time(start):
    up = start({"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    urls = up.ready()
    result = run_cli("scale", "plain=3", cwd=up.root)
    assert result.returncode == 0 and result.stdout.startswith("scaled plain: 3 workers, pids "), result.stderr
    eventually(lambda: [i["state"] for i in up.service("plain")["instances"]] == ["ready"] * 3, 5)
    seen = {get(urls["plain"] + "/pid")[1] for _ in range(60)}
    assert len(seen) >= 2
    assert run_cli("scale", "plain=1", cwd=up.root).returncode == 0
    eventually(lambda: len(up.service("plain")["instances"]) == 1, 5)
    up.signal(signal.SIGTTIN)
    eventually(lambda: [i["state"] for i in up.service("plain")["instances"]] == ["ready"] * 2, 5)
    up.signal(signal.SIGTTOU)
    eventually(lambda: len(up.service("plain")["instances"]) == 1, 5)
    bad = run_cli("scale", "plain=0", cwd=up.root)
    assert bad.returncode == 2 and "SERVICE=N" in bad.stderr


def test_command_service_gets_a_port_each_and_is_health_checked(start):
    up = start({"cmd": {"command": f"{sys.executable} services/cmd/command_server.py", "workers": 2,
                        "health": "/ping"}},
               {"cmd": "command_server.py"})
    line = up.wait_for(r"^ready: cmd (http://\S+) (http://\S+)$", 15)
    ports = {url.rsplit(":", 1)[1] for url in line.groups()}
    assert len(ports) == 2
    for url in line.groups():
        assert get(url + "/x") == (200, f"port {url.rsplit(':', 1)[1]} path /x")
    up.wait_for(r"^cmd\.\d +\| command server listening on \d+$")
    service = up.service("cmd")
    assert service["kind"] == "command" and {str(i["port"]) for i in service["instances"]} == ports
    victim = service["instances"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    up.wait_for(rf"\(pid {victim}\) killed by SIGKILL; restarting")
    eventually(lambda: [i["state"] for i in up.service("cmd")["instances"]] == ["ready"] * 2, 5)
    before = up.pids("cmd")
    mark = len(up.lines)
    assert run_cli("reload", "cmd", cwd=up.root).returncode == 0
    up.wait_for(r"^cmd +\| reloaded$", 10, start=mark)
    eventually(lambda: not before & up.pids("cmd") and len(up.pids("cmd")) == 2, 3)
    up.signal(signal.SIGTERM)
    assert up.wait() == 0


def test_reload_flag_reloads_the_service_whose_file_changed(start):
    up = start({"plain": {"app": "services.plain.app:app"}, "web": {"app": "services.web.app:app"}},
               {"plain": "plain_app.py", "web": "bottle_app.py"}, "--reload")
    urls = up.ready()
    web = up.pids("web")
    app_file = up.root / "services" / "plain" / "app.py"
    app_file.write_text(app_file.read_text().replace('VERSION = "v1"', 'VERSION = "v3"'))
    up.wait_for(r"changed: services/plain/app\.py; reloading plain$", 5)
    up.wait_for(r"^plain +\| reloaded$", 10)
    assert get(urls["plain"] + "/version") == (200, "v3")
    assert up.pids("web") == web


def test_second_up_for_the_same_project_is_refused(start):
    up = start({"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    up.ready()
    second = run_cli("up", timeout=15, cwd=up.root)
    assert second.returncode == 1 and "already running" in second.stderr
    assert up.status()["supervisor"]["services"][0]["state"] == "running"


def test_unknown_service_and_not_running(tmp_path):
    root = make_project(tmp_path / "proj", {"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    result = run_cli("up", "nope", cwd=root)
    assert result.returncode == 2 and "no service named 'nope'" in result.stderr
    for command in (["reload"], ["scale", "plain=2"]):
        result = run_cli(*command, cwd=root)
        assert result.returncode == 1
        assert result.stderr.startswith("microkit: error: no `microkit up` is running")
    result = run_cli("status", cwd=root)
    assert result.returncode == 0 and "no instance" in result.stdout and "no `microkit up` running" in result.stdout


def test_scaffolded_project_is_served(tmp_path):
    assert run_cli("new", "project", "shop", cwd=tmp_path).returncode == 0
    root = tmp_path / "shop"
    assert run_cli("new", "service", "users", "--workers", "2", cwd=root).returncode == 0
    assert run_cli("new", "service", "orders", cwd=root).returncode == 0
    up = Up(root)
    try:
        urls = up.ready()
        assert set(urls) == {"users", "orders"}
        connection = http.client.HTTPConnection(urls["users"].split("//")[1], timeout=5)
        connection.request("POST", "/users/", body=json.dumps({"name": "ada"}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 201 and json.loads(response.read())["name"] == "ada"
        connection.close()
        status, body = get(urls["users"] + "/users/")
        assert status == 200 and [u["name"] for u in json.loads(body)] == ["ada"]
        assert get(urls["orders"] + "/healthz")[0] == 200
        up.signal(signal.SIGINT)
        assert up.wait() == 0
    finally:
        up.close()


@pytest.mark.parametrize("argument", ["users", "users=x", "=2", "users=-1"])
def test_scale_rejects_bad_counts(argument, tmp_path):
    (tmp_path / "microkit.toml").write_text('[project]\nname = "p"\n')
    result = run_cli("scale", argument, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "SERVICE=N" in result.stderr
