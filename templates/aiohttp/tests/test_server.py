"""The {{service}} server as microkit runs it: a process reading PORT and HOST, stopped by SIGTERM; and the
same server started by microkit.testing's `service` fixture."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def test_serves_on_port_and_host_and_stops_gracefully_on_sigterm():
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MICROKIT_ROUTE": "/{{service}}"}
    server = subprocess.Popen([sys.executable, "-m", "services.{{service}}.server"], cwd=PROJECT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:  # until it answers
            try:
                assert get(base + "/healthz", timeout=1) == (200, {"status": "ok", "waiting": 0})
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        answer = {}
        in_flight = threading.Thread(target=lambda: answer.update(r=get(base + "/{{service}}/wait?seconds=1")))
        in_flight.start()
        while get(base + "/healthz")[1]["waiting"] != 1:  # the request is in the server
            assert time.monotonic() < deadline and in_flight.is_alive()
            time.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
        in_flight.join(timeout=5)
        assert answer["r"] == (200, {"waited": 1.0}), "the in-flight request was answered before the exit"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_runs_as_microkit_runs_it(service):
    """microkit.testing's `service` fixture runs a command service as a process (`microkit run`), on a
    port bound for it and registered in the test's own registry."""
    notes = service("{{service}}")
    assert notes.get("/healthz", expect=200).json()["status"] == "ok"
    item = notes.post("/{{service}}/", json={"name": "first"}, expect=201).json()
    assert notes.get("/{{service}}", expect=200).json() == [item]
