"""How fast routing follows the registry, measured with the real CLI.

Run from the repository root: `python benchmarks/bench_discovery.py [--registry redis://127.0.0.1:6379/9]`
(default: the embedded registry). One `microkit gateway` and `microkit run users` processes (each its
own port) share a temporary project. It prints, as medians over --rounds:
- join: from starting a new `microkit run users` to the first request the gateway routes to it;
- leave: from a kill -9 of an instance's processes to the moment the gateway stops routing to it
  (its routing table no longer lists the instance), and how many client requests failed meanwhile.
A GET loop runs through the gateway the whole time; every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROKIT = str(Path(sys.executable).with_name("microkit"))

APP = '''
import os

def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def make_project(registry: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="microkit-discovery-"))
    (root / "services" / "users").mkdir(parents=True)
    (root / "services" / "__init__.py").write_text("")
    (root / "services" / "users" / "__init__.py").write_text("")
    (root / "services" / "users" / "app.py").write_text(APP)
    registry_table = f'[registry]\nurl = "{registry}"\n\n' if registry else ""
    (root / "microkit.toml").write_text(
        f'[project]\nname = "discovery{os.getpid()}"\n\n{registry_table}'
        '[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n\n'
        '[services.users]\napp = "services.users.app:app"\nroute = "/users"\naccess_log = false\n')
    return root


def start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([MICROKIT, *args], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def gateway_port(root: Path, deadline: float) -> int:
    sys.path.insert(0, str(ROOT))
    from microkit.supervisor import control

    while time.monotonic() < deadline:
        try:
            group = control.request(root, {"command": "status"}, name="gateway")["services"][0]
            if group["instances"] and group["instances"][0]["state"] == "ready":
                return group["instances"][0]["port"]
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError("the gateway did not start")


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def routed(port: int) -> int:
    """How many users instances the gateway routes to now."""
    return json.loads(get(port, "/__microkit/health")[1])["instances"].get("users", 0)


class Loop:
    """GET /users/ through the gateway until stopped; remembers when each pid first answered."""

    def __init__(self, port: int):
        self.port = port
        self.first_seen: dict[str, float] = {}
        self.failures = 0
        self.last_failure: tuple[int, str] | None = None
        self.requests = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        end = time.monotonic() + 300
        while not self.stopping.is_set() and time.monotonic() < end:
            try:
                status, body = get(self.port, "/users/")
            except OSError:
                status, body = 0, ""
            self.requests += 1
            if status != 200:
                self.failures += 1
                self.last_failure = (status, body[:200])
            else:
                self.first_seen.setdefault(body, time.monotonic())


def wait(condition, timeout: float, interval: float = 0.005) -> float:
    """Poll until `condition()`; returns the time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(interval)
    raise RuntimeError(f"not within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=None, help="redis:// URL (default: the embedded registry)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = make_project(args.registry)
    procs: list[subprocess.Popen] = []
    joins, leaves, failures = [], [], []
    try:
        procs.append(start(root, "gateway"))
        port = gateway_port(root, time.monotonic() + 20)
        procs.append(start(root, "run", "users"))
        wait(lambda: routed(port) == 1, 20)
        loop = Loop(port)
        loop.thread.start()
        wait(lambda: loop.first_seen, 10)
        for _ in range(args.rounds):
            known = set(loop.first_seen)
            started = time.monotonic()
            newcomer = start(root, "run", "users")
            procs.append(newcomer)
            wait(lambda: set(loop.first_seen) - known, 20)
            joins.append(loop.first_seen[(set(loop.first_seen) - known).pop()] - started)
            before = loop.failures
            victim = procs.pop(1)
            killed = time.monotonic()
            kill(victim)
            wait(lambda: routed(port) == 1, 20)
            leaves.append(time.monotonic() - killed)
            time.sleep(0.3)
            failures.append(loop.failures - before)
        loop.stopping.set()
        loop.thread.join(10)
    finally:
        for proc in procs:
            kill(proc)
    where = args.registry or "embedded registry"
    print(f"{where}, {args.rounds} rounds, a GET loop through the gateway ({loop.requests} requests)")
    print(f"new instance started -> first routed request: median {statistics.median(joins) * 1000:.0f} ms "
          f"(max {max(joins) * 1000:.0f} ms)")
    print(f"kill -9 -> the gateway stops routing to it:    median {statistics.median(leaves) * 1000:.0f} ms "
          f"(max {max(leaves) * 1000:.0f} ms; bound: TTL 2 s + poll 1 s)")
    print(f"failed requests meanwhile: {sum(failures)} (retried on the live instance)"
          + (f"; last failure: {loop.last_failure}" if loop.last_failure else ""))


if __name__ == "__main__":
    main()
