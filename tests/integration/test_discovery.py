"""Services, registry and gateway together, through the real CLI: `microkit up`, `run`, `gateway`.

Every request loop is bounded in time; every process is killed at teardown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from microkit.testing import eventually

from support.cli import CLI, run_cli
from support.up import Loop, Up, get, make_project


ROUTED = {"users": {"app": "services.users.app:app", "route": "/users", "workers": 2}}
APPS = {"users": "routed_app.py"}


@pytest.fixture
def project(tmp_path):
    """A project whose users service runs the routed test app."""
    def make(services=ROUTED, registry: str | None = None, apps=APPS) -> Path:
        root = make_project(tmp_path / "proj", services, apps)
        if registry:
            text = (root / "microkit.toml").read_text()
            (root / "microkit.toml").write_text(text.replace("[gateway]", f'[registry]\nurl = "{registry}"\n\n[gateway]'))
        return root
    return make


def replaced(up: Up, victim: int, service: str = "users") -> None:
    """Wait until `victim` is out of the registry and its replacement registered."""
    seen: list = []

    def done() -> bool:
        seen[:] = [registered_pids(up.root, service), set(worker_pids(up, service))]
        return victim not in seen[0] and seen[0] == seen[1] and len(seen[0]) == 2

    try:
        eventually(done, 15, f"{service}'s pid {victim} replaced in the registry")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; registered {seen[0]}, workers {seen[1]}; output:\n" + up.output[-3000:]) from None


def gateway_url(up: Up) -> str:
    return re.search(r"^ready: gateway (http://\S+)", up.wait_for(r"^ready: gateway", 20).string).group(1)


def worker_pids(up: Up, service: str) -> list[int]:
    return [w["pid"] for w in up.service(service)["instances"]]


def registered_pids(root: Path, service: str) -> set[int]:
    result = run_cli("status", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    return {i["pid"] for i in json.loads(result.stdout)["services"].get(service, [])}


def test_up_prints_the_gateway_and_routes_through_it(project, ups):
    root = project()
    up = ups(root, gateway=True)
    url = gateway_url(up)
    assert up.wait_for(r"^services: users http://127\.0\.0\.1:\d+").string
    pids = {int(Loop_get(url + "/users/pid")) for _ in range(6)}
    assert pids <= set(worker_pids(up, "users"))
    assert registered_pids(root, "users") == set(worker_pids(up, "users"))
    routes = run_cli("routes", cwd=root)
    assert routes.returncode == 0 and re.search(r"/users\s+users\s+30s\s+round_robin\s+2", routes.stdout)
    status, body = get(url + "/nothing")
    assert status == 404 and json.loads(body)["error"] == "no route for this path"


def Loop_get(url: str) -> str:
    status, body = get(url)
    assert status == 200, body
    return body


def test_kill_9_of_one_of_two_instances_under_a_get_loop_fails_nothing(project, ups):
    up = ups(project(), gateway=True)
    url = gateway_url(up)
    victim = worker_pids(up, "users")[0]
    with Loop(url + "/users/pid") as loop:
        eventually(lambda: len(loop.statuses) >= 25, 10, "requests flowing")
        os.kill(victim, signal.SIGKILL)
        replaced(up, victim)
        after = len(loop.statuses)
        eventually(lambda: len(loop.statuses) >= after + 25, 10, "requests after the replacement")
    assert loop.failures() == [], "\n".join(line for line in up.lines if " 502 " in line or "users" in line)[-4000:]


def test_sigterm_of_an_instance_under_load_gives_no_5xx(project, ups):
    up = ups(project(), gateway=True)
    url = gateway_url(up)
    victim = worker_pids(up, "users")[0]
    with Loop(url + "/users/pid") as loop, Loop(url + "/users/echo", "POST") as posts:
        eventually(lambda: len(loop.statuses) >= 25 and len(posts.statuses) >= 25, 10, "requests flowing")
        os.kill(victim, signal.SIGTERM)
        replaced(up, victim)
        after = len(loop.statuses), len(posts.statuses)
        eventually(lambda: len(loop.statuses) >= after[0] + 25 and len(posts.statuses) >= after[1] + 25, 10,
                   "requests after the replacement")
    assert loop.failures() == [] and posts.failures() == []


def test_a_killed_instance_leaves_the_registry_within_3_seconds(project, ups):
    root = project({"users": {**ROUTED["users"], "workers": 1}})
    up = ups(root, gateway=True)
    gateway_url(up)
    victim = worker_pids(up, "users")[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    eventually(lambda: victim not in registered_pids(root, "users"), 5)
    assert time.monotonic() - killed <= 3.0
    eventually(lambda: registered_pids(root, "users") == set(worker_pids(up, "users")), 5)


def test_gateway_and_run_as_separate_processes(project, tmp_path):
    """`microkit run` on "another host" and `microkit gateway` alone, sharing only the registry."""
    root = project({"users": {**ROUTED["users"], "workers": 1}})
    procs = []
    try:
        for args in (["run", "users"], ["run", "users"], ["gateway"]):
            procs.append(subprocess.Popen([*CLI, *args], cwd=root, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True))
        eventually(lambda: len(registered_pids(root, "users")) == 2, 15)
        routes = json.loads(run_cli("routes", "--json", cwd=root).stdout)
        assert routes == [{"prefix": "/users", "service": "users", "timeout": 30.0, "balance": "round_robin",
                           "instances": 2}]
        state = json.loads((root / ".microkit" / f"gateway-{procs[2].pid}.json").read_text())
        assert state["pid"] == procs[2].pid
        port = gateway_port(root, f"gateway-{procs[2].pid}")
        seen = {Loop_get(f"http://127.0.0.1:{port}/users/pid") for _ in range(8)}
        assert seen == {str(pid) for pid in registered_pids(root, "users")}
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
            proc.stdout.close()


def gateway_port(root: Path, name: str) -> int:
    """The gateway's real port (the test config listens on port 0), from its supervisor's status."""
    from microkit.supervisor import control

    def port():
        try:
            reply = control.request(root, {"command": "status"}, name=name)
        except Exception:
            return None
        group = reply["services"][0]
        return group["instances"] and group["instances"][0]["state"] == "ready" and group["instances"][0]["port"]
    return eventually(port, 15)


def test_a_redis_outage_longer_than_the_ttl_fails_no_request(project, ups, private_redis):
    """Redis down for longer than registrations live (the gateway says so once its snapshot is 5 s old, more
    than DEFAULT_TTL plus two polls): requests to the instances it knows keep succeeding."""
    root = project(registry=f"redis://127.0.0.1:{private_redis.port}/0")
    up = ups(root, gateway=True)
    url = gateway_url(up)
    with Loop(url + "/users/pid") as loop:
        eventually(lambda: len(loop.statuses) >= 25, 10, "requests flowing")
        mark = len(up.lines)
        private_redis.stop()
        up.wait_for(r"registry unreachable: routing to the instances known \d+ s ago", 15, start=mark)
        assert loop.failures() == [], "requests to existing instances succeed while Redis is down"
        private_redis.start()
        eventually(lambda: registered_pids(root, "users") == set(worker_pids(up, "users")), 10)
        after = len(loop.statuses)
        eventually(lambda: len(loop.statuses) >= after + 25, 10, "requests after Redis came back")
    assert loop.failures() == []


def test_registry_url_from_the_environment(project, tmp_path, private_redis):
    """MICROKIT_REGISTRY_URL points `up` at Redis without touching microkit.toml."""
    root = project({"users": {**ROUTED["users"], "workers": 1}})
    env = {**os.environ, "MICROKIT_REGISTRY_URL": f"redis://127.0.0.1:{private_redis.port}/0"}
    proc = subprocess.Popen([*CLI, "up"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        import redis

        client = redis.Redis(port=private_redis.port)
        eventually(lambda: any(k.startswith(b"suptest:instance:users:") for k in client.keys("*")), 15)
        assert not (root / ".microkit" / "registry.db").exists(), "the embedded registry was not used"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        proc.stdout.close()


def test_a_command_service_is_registered_and_routed(project, ups):
    """An asyncio server run as a command service: registered once healthy, reached through the gateway,
    and deregistered when it stops."""
    import sys

    root = project({"clock": {"command": f"{sys.executable} services/clock/command_server.py", "route": "/clock",
                              "workers": 2}}, apps={"clock": "command_server.py"})
    up = ups(root, gateway=True)
    url = gateway_url(up)
    eventually(lambda: len({Loop_get(url + "/clock/now").split()[1] for _ in range(6)}) == 2, 5)
    eventually(lambda: registered_pids(root, "clock") == set(worker_pids(up, "clock")), 5)
    victim = worker_pids(up, "clock")[0]  # the program's pid; the supervisor stops it through its shim, the parent
    shim = int(Path(f"/proc/{victim}/stat").read_text().rsplit(")", 1)[1].split()[1])
    with Loop(url + "/clock/now") as loop:
        eventually(lambda: len(loop.statuses) >= 10, 10, "requests flowing")
        os.kill(shim, signal.SIGTERM)
        replaced(up, victim, "clock")
        after = len(loop.statuses)
        eventually(lambda: len(loop.statuses) >= after + 10, 10, "requests after the replacement")
    assert loop.failures() == []
    eventually(lambda: victim not in registered_pids(root, "clock"), 3)


def test_the_advertised_host_is_what_gets_registered(project):
    """MICROKIT_ADVERTISE_HOST (or services.NAME.advertise) is the address other hosts are told."""
    root = project({"users": {**ROUTED["users"], "workers": 1, "listen": "0.0.0.0:0"}})
    proc = subprocess.Popen([*CLI, "run", "users"], cwd=root, env={**os.environ, "MICROKIT_ADVERTISE_HOST": "127.0.0.2"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def hosts():
            result = run_cli("status", "--json", cwd=root)
            return {i["host"] for i in json.loads(result.stdout)["services"].get("users", [])}
        assert eventually(hosts, 15) == {"127.0.0.2"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
