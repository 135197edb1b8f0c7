"""Issue 10, items 4, 6 and 7: reload and scale report their outcome, two gateways, status that tells the truth."""

from __future__ import annotations

import json
import re
import signal

import pytest

from sup_apps.harness import Up, eventually, get, make_project, run_cli


@pytest.fixture
def up(tmp_path):
    running: list[Up] = []

    def start(services: dict, apps: dict, *args: str, gateway: bool = False) -> Up:
        root = tmp_path / "proj"
        if not root.exists():
            make_project(root, services, apps)
        process = Up(root, *args, gateway=gateway)
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
    result = run_cli(running.root, "reload", "plain")
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"reloaded plain: 2 workers, pids (\d+), (\d+)\n", result.stdout)
    assert match, result.stdout
    pids = {int(p) for p in match.groups()}
    assert not pids & before and pids == running.pids("plain")

    break_app(running.root)
    failed = run_cli(running.root, "reload", "plain", timeout=30)
    assert failed.returncode == 1, failed.stdout
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (
        "microkit: error: reload of plain failed: the new code does not boot; the old workers keep serving: "
        "ModuleNotFoundError: No module named 'no_such_module_for_reload_tests'"), lines
    assert running.pids("plain") == pids and get(urls["plain"] + "/version") == (200, "v1")

    quick = run_cli(running.root, "reload", "--no-wait", "plain")
    assert quick.returncode == 0 and quick.stdout == "reloading plain\n"


def test_scale_waits_and_reports_the_outcome(up):
    running = up({"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    running.ready()
    result = run_cli(running.root, "scale", "plain=3")
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"scaled plain: 3 workers, pids (\d+), (\d+), (\d+)\n", result.stdout)
    assert match and {int(p) for p in match.groups()} == running.pids("plain")
    assert all(i["state"] == "ready" for i in running.service("plain")["instances"])
    down = run_cli(running.root, "scale", "plain=1")
    assert down.returncode == 0 and down.stdout.startswith("scaled plain: 1 worker, pid "), down.stdout
    assert len(running.service("plain")["instances"]) == 1

    break_app(running.root)
    failed = run_cli(running.root, "scale", "plain=2", timeout=30)
    assert failed.returncode == 1
    assert "scale of plain failed: new workers do not boot; keeping the 1 that run: ModuleNotFoundError" in failed.stderr
    quick = run_cli(running.root, "scale", "--no-wait", "plain=1")
    assert quick.returncode == 0 and quick.stdout == "plain=1\n"


def test_two_gateways_in_one_project_folder(tmp_path):
    from helpers import free_port
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
        from sup_apps.harness import CLI
        self.root = root
        self.process = subprocess.Popen([*CLI, "gateway", "-c", config_file], cwd=root, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
