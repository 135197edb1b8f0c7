"""Several hosts for real: three network namespaces on one bridge, built and torn down by the test.

host 1: Redis (the registry and the rate limits), and the test's client
host 2: `microkit run users` (2 workers) and `microkit gateway`
host 3: `microkit run users` (2 workers) and `microkit gateway`

Each host has its own copy of the project (as separate machines would) and the same microkit.toml:
users listens on 0.0.0.0 and registers the address MICROKIT_ADVERTISE_HOST gives. Needs root and
`ip netns`: skipped with a message elsewhere, a failure under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from support.cli import PROGRAMS, microkit_executable
from support.netns import Host, NetnsUnavailable, Network, http_get
from support.servers import server_missing
from support.waiting import seconds_until

from microkit.registry import DEFAULT_TTL, POLL_INTERVAL

GATEWAY_PORT = 8000          # inside each host's own namespace: nothing else listens there
LIMIT = 6                    # requests a minute to /limited, shared by both gateways
SLACK = 1.5                  # seconds for process start-up and a loaded machine

def config(redis: str) -> str:
    return f'''[project]
name = "hosts"

[registry]
url = "redis://{redis}:6379/0"

[gateway]
listen = "0.0.0.0:{GATEWAY_PORT}"
access_log = false

[services.users]
app = "services.users.app:app"
route = "/users"
workers = 2
listen = "0.0.0.0:0"
health = "/users/health"
access_log = false

[services.limited]
app = "services.users.app:app"
route = "/limited"
rate_limit = "{LIMIT}/min"
'''


def project(folder: Path, redis: str) -> Path:
    (folder / "services" / "users").mkdir(parents=True)
    (folder / "services" / "__init__.py").write_text("")
    (folder / "services" / "users" / "__init__.py").write_text("")
    (folder / "services" / "users" / "app.py").write_text((PROGRAMS / "host_name_app.py").read_text())
    (folder / "microkit.toml").write_text(config(redis))
    return folder


class Processes:
    """Processes started inside namespaces, each in a session of its own, killed whole at teardown."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, label: str, host: Host, *args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_")}
        environ.update(env or {})
        log = open(self.logs / f"{label}.log", "w")
        process = subprocess.Popen(host.command(*args), cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.started.append((label, process))
        return process

    def kill(self, label: str) -> None:
        for name, process in self.started:
            if name == label and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def kill_all(self) -> None:
        for label, _ in self.started:
            self.kill(label)

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def wait_until(check, timeout: float, what: str, output=lambda: ""):
    """`seconds_until`; on a failure the processes' output is printed (pytest shows it with the failure)."""
    try:
        return seconds_until(check, timeout, what)
    except pytest.fail.Exception:
        print(output())
        raise


@pytest.fixture
def network():
    net = Network(3)
    try:
        net.build()
    except NetnsUnavailable as exc:
        server_missing("network namespaces", exc)
    try:
        yield net
    finally:
        net.destroy()


def test_three_hosts_share_one_registry_and_one_rate_limit(network, tmp_path):
    client, second, third = network.hosts
    microkit = microkit_executable()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        server_missing("redis-server", FileNotFoundError("redis-server is not on PATH"))
    processes = Processes(tmp_path)
    try:
        processes.start("redis", client, redis_server, "--bind", client.address, "--port", "6379", "--save", "",
                        "--appendonly", "no", "--protected-mode", "no", cwd=tmp_path)
        for host in (second, third):
            root = project(tmp_path / host.name, client.address)
            env = {"MICROKIT_ADVERTISE_HOST": host.address, "HOST_NAME": host.name}
            processes.start(f"{host.name}-users", host, microkit, "run", "users", cwd=root, env=env)
            processes.start(f"{host.name}-gateway", host, microkit, "gateway", cwd=root, env=env)
        run_checks(network, processes, client, second, third)
    finally:
        processes.kill_all()


def healthy(client: Host, gateway: Host) -> int | None:
    """How many users instances `gateway` routes to, asked from the client host."""
    status, body = client.call(http_get, gateway.address, GATEWAY_PORT, "/__microkit/health", 1.0)
    return json.loads(body)["instances"]["users"] if status == 200 else None


def answers(client: Host, gateway: Host, count: int) -> list[tuple[int, str]]:
    return client.call(lambda: [http_get(gateway.address, GATEWAY_PORT, "/users/where") for _ in range(count)])


def registered(client: Host, root: Path) -> dict[str, set]:
    """What the registry holds, read from the client host with the real CLI."""
    found = subprocess.run(client.command(microkit_executable(), "status", "--json"), cwd=root, capture_output=True,
                           text=True, timeout=20)
    assert found.returncode == 0, found.stderr
    instances = json.loads(found.stdout)["services"].get("users", [])
    return {"addresses": {(i["host"], i["port"]) for i in instances}, "pids": {i["pid"] for i in instances}}


def run_checks(network: Network, processes: Processes, client: Host, second: Host, third: Host) -> None:
    gateways = (second, third)
    output = processes.output
    root = Path(processes.logs) / second.name

    # Every gateway routes to every instance, at its advertised address.
    for gateway in gateways:
        wait_until(lambda g=gateway: healthy(client, g) == 4, 30, f"gateway on {gateway.name} sees 4 instances", output)
    listed = registered(client, root)
    assert {host for host, _ in listed["addresses"]} == {second.address, third.address}, listed
    for gateway in gateways:
        seen = answers(client, gateway, 40)
        assert {status for status, _ in seen} == {200}, seen
        # A host's workers share one socket (one advertised address): which of them accepts is the kernel's
        # choice, so every address answers, and only registered workers answer.
        pids = {int(body.split()[1]) for _, body in seen}
        assert pids <= listed["pids"], (gateway.name, pids, listed)
        assert {body.split()[0] for _, body in seen} == {second.name, third.name}

    # One rate limit for both gateways: LIMIT requests a minute in all, not per gateway.
    statuses = [client.call(http_get, gateways[i % 2].address, GATEWAY_PORT, "/limited/x")[0] for i in range(2 * LIMIT)]
    assert statuses.count(429) == LIMIT, statuses
    assert all(s != 429 for s in statuses[:LIMIT]), statuses

    # A host cut off (its link down) is dropped within TTL + poll, and comes back with its link.
    network.cut(third)
    took = wait_until(lambda: healthy(client, second) == 2, DEFAULT_TTL + POLL_INTERVAL + SLACK,
                      "the cut-off host leaves routing", output)
    seen = answers(client, second, 20)
    assert {(status, body.split()[0]) for status, body in seen} == {(200, second.name)}, seen
    network.mend(third)
    back = wait_until(lambda: healthy(client, second) == 4, 15, "the host is routed again with its link up", output)
    seen = answers(client, second, 40)
    assert {body.split()[0] for _, body in seen} == {second.name, third.name}, seen
    print(f"cut off: dropped after {took:.2f}s; link up: routed again after {back:.2f}s")

    # A host whose processes are killed leaves routing within TTL + poll.
    processes.kill(f"{third.name}-users")
    processes.kill(f"{third.name}-gateway")
    took = wait_until(lambda: healthy(client, second) == 2, DEFAULT_TTL + POLL_INTERVAL + SLACK,
                      "the killed host leaves routing", output)
    seen = answers(client, second, 20)
    assert {(status, body.split()[0]) for status, body in seen} == {(200, second.name)}, seen
    print(f"killed: out of routing after {took:.2f}s")
