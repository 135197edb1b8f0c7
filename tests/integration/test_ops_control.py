"""Issue 10, items 4, 6 and 7: reload and scale report their outcome, two gateways, status that tells the truth."""

from __future__ import annotations

import json
import re
import signal

import pytest

from microkit.testing import eventually

from support.cli import run_cli
from support.up import Up, get, make_project


@pytest.fixture
def up(tmp_path):
    running: list[Up] = []

    def start(services: dict, apps: dict, *args: str, gateway: bool = False, env: dict | None = None,
              extra: str = "") -> Up:
        root = tmp_path / "proj"
        if not root.exists():
            make_project(root, services, apps)
            (root / "microkit.toml").write_text((root / "microkit.toml").read_text() + extra)
        process = Up(root, *args, gateway=gateway, env=env)
        running.append(process)
        return process

    yield start
    for process in running:
        process.close()


def break_app(root, name="plain"):
    path = root / "services" / name / "app.py"
    path.write_text("import no_such_module_for_reload_tests\n" + path.read_text())


def test_reload_waits_and_reports_the_outcome(up):
    running = up({"plain": {"app": "services.plain.app:app", "workers": 2}}, {"plain": "plain_app.py"})
    urls = running.ready()
    before = running.pids("plain")
    result = run_cli("reload", "plain", cwd=running.root)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"reloaded plain: 2 workers, pids (\d+), (\d+)\n", result.stdout)
    assert match, result.stdout
    pids = {int(p) for p in match.groups()}
    assert not pids & before and pids == running.pids("plain")

    break_app(running.root)
    failed = run_cli("reload", "plain", timeout=30, cwd=running.root)
    assert failed.returncode == 1, failed.stdout
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (
        "microkit: error: reload of plain failed: the new code does not boot; the old workers keep serving: "
        "ModuleNotFoundError: No module named 'no_such_module_for_reload_tests'"), lines
    assert running.pids("plain") == pids and get(urls["plain"] + "/version") == (200, "v1")

    quick = run_cli("reload", "--no-wait", "plain", cwd=running.root)
    assert quick.returncode == 0 and quick.stdout == "reloading plain\n"


def test_scale_waits_and_reports_the_outcome(up):
    running = up({"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    running.ready()
    result = run_cli("scale", "plain=3", cwd=running.root)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"scaled plain: 3 workers, pids (\d+), (\d+), (\d+)\n", result.stdout)
    assert match and {int(p) for p in match.groups()} == running.pids("plain")
    assert all(i["state"] == "ready" for i in running.service("plain")["instances"])
    down = run_cli("scale", "plain=1", cwd=running.root)
    assert down.returncode == 0 and down.stdout.startswith("scaled plain: 1 worker, pid "), down.stdout
    assert len(running.service("plain")["instances"]) == 1

    break_app(running.root)
    failed = run_cli("scale", "plain=2", timeout=30, cwd=running.root)
    assert failed.returncode == 1
    assert "scale of plain failed: new workers do not boot; keeping the 1 that run: ModuleNotFoundError" in failed.stderr
    quick = run_cli("scale", "--no-wait", "plain=1", cwd=running.root)
    assert quick.returncode == 0 and quick.stdout == "plain=1\n"


def test_two_gateways_in_one_project_folder(tmp_path):
    from support.servers import free_port
    root = make_project(tmp_path / "proj", {"plain": {"app": "services.plain.app:app", "route": "/plain"}},
                        {"plain": "plain_app.py"})
    text = (root / "microkit.toml").read_text()
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        (root / f"gw{n}.toml").write_text(text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
    gateways = []
    try:
        for n in range(2):
            gateways.append(GatewayProcess(root, f"gw{n}.toml"))
        for gateway, port in zip(gateways, ports):
            gateway.wait_for(rf"^ready: gateway http://127\.0\.0\.1:{port}$", 20)
        for gateway in gateways:
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
        assert "already running" not in gateways[1].output
    finally:
        for gateway in gateways:
            gateway.close()


class GatewayProcess(Up):
    """`microkit gateway -c FILE`, read like an `up`."""

    def __init__(self, root, config_file):
        import subprocess
        import threading
        from support.cli import CLI
        self.root = root
        self.process = subprocess.Popen([*CLI, "gateway", "-c", config_file], cwd=root, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        self.raw_lines = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()


@pytest.fixture
def redis_server():
    from support.servers import PrivateRedis
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def test_status_and_routes_with_the_registry_down(up, redis_server):
    running = up({"plain": {"app": "services.plain.app:app", "route": "/plain"}}, {"plain": "plain_app.py"},
                 extra=f'\n[registry]\nurl = "{redis_server.url}"\n')
    running.ready()
    eventually(lambda: running.status()["services"].get("plain"), 5)
    pid = next(iter(running.pids("plain")))
    redis_server.stop()
    status = run_cli("status", timeout=20, cwd=running.root)
    assert status.returncode == 1, status.stdout
    assert "UNREACHABLE" in status.stdout and str(pid) in status.stdout and "plain.1" in status.stdout
    assert len(status.stderr.strip().splitlines()) == 1 and "cannot read the registry" in status.stderr
    as_json = run_cli("status", "--json", timeout=20, cwd=running.root)
    assert as_json.returncode == 1
    found = json.loads(as_json.stdout)
    assert "cannot read the registry" in found["registry_error"] and found["services"] is None
    assert [w["pid"] for g in found["supervisor"]["services"] for w in g["instances"]] == [pid]
    routes = run_cli("routes", timeout=20, cwd=running.root)
    assert routes.returncode == 1 and "?" not in routes.stdout and "unknown" in routes.stdout
    assert "cannot read the registry" in routes.stderr


def test_status_reads_the_registry_the_running_up_uses(up, redis_server):
    running = up({"plain": {"app": "services.plain.app:app", "workers": 2}}, {"plain": "plain_app.py"},
                 env={"MICROKIT_REGISTRY_URL": redis_server.url})
    running.ready()
    workers = running.pids("plain")
    status = eventually(lambda: (lambda s: s if len(s["services"].get("plain", [])) == 2 else None)(running.status()), 5)
    assert status["registry"] == redis_server.url
    assert {i["pid"] for i in status["services"]["plain"]} == workers
    table = run_cli("status", cwd=running.root)
    assert table.returncode == 0 and "no instance" not in table.stdout and redis_server.url in table.stdout
    created = run_cli("keys", "create", "ops", cwd=running.root)
    assert created.returncode == 0
    import redis
    client = redis.Redis.from_url(redis_server.url)
    assert any(client.scan_iter(match="*")), "the key went to the Redis the running up uses"
    client.close()


def test_routes_and_status_under_monolith(up):
    running = up({"plain": {"app": "services.plain.app:app", "route": "/plain"}}, {"plain": "plain_app.py"},
                 "--monolith", gateway=True)
    gateway = running.wait_for(r"^ready: gateway (http://\S+) \(monolith\)$", 15).group(1)
    assert get(gateway + "/plain/version")[1] in ("v1", "not found"), "the app itself answers"
    routes = run_cli("routes", "--json", cwd=running.root)
    assert routes.returncode == 0, routes.stderr
    (row,) = json.loads(routes.stdout)
    assert row["instances"] == 1 and row["served_by"] == "monolith"
    table = run_cli("status", cwd=running.root)
    assert "served by the monolith" in table.stdout and "no instance" not in table.stdout


def test_status_shows_a_fatal_service_reason_and_restarts(up):
    running = up({"plain": {"app": "services.plain.app:app"}, "broken": {"app": "services.broken.app:app"}},
                 {"plain": "plain_app.py", "broken": "broken_app.py"})
    running.wait_for(r"^broken +\| FATAL: gave up after 3 failed boots")
    broken = running.service("broken")
    assert broken["state"] == "FATAL" and broken["restarts"] == 3
    assert "No module named 'no_such_module_for_microkit_tests'" in broken["error"]
    table = run_cli("status", cwd=running.root).stdout
    assert re.search(r"^broken +app, 1 wanted +FATAL +3$", table, re.M), table
    assert "error: ModuleNotFoundError: No module named 'no_such_module_for_microkit_tests'" in table


def test_status_shows_a_command_services_program_pid(up):
    import sys
    running = up({"cmd": {"command": f"{sys.executable} services/cmd/command_server.py"}},
                 {"cmd": "command_server.py"})
    running.ready()
    (pid,) = running.pids("cmd")
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().split(b"\0")
    assert argv[1:2] == [b"services/cmd/command_server.py"], argv
    registered = eventually(lambda: running.status()["services"].get("cmd"), 5)
    assert [i["pid"] for i in registered] == [pid]
