"""Helpers for microkit's tests: the real CLI in a subprocess, folder snapshots, server checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: a test that needs a server never passes by not running."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing server is a failure)")
    pytest.skip(message)



def microkit_executable() -> str:
    """The installed `microkit` console script beside this Python: the real executable users run."""
    path = Path(sys.executable).parent / "microkit"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project first (pip install -e '.[test]')")
    return str(path)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60,
            executable: str | None = None) -> subprocess.CompletedProcess:
    """Run `microkit ARGS` in a subprocess, with a clean MICROKIT_* environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_")}
    environ.update(env or {})
    return subprocess.run([executable or microkit_executable(), *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes: compared before and after a refusal."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of one test's own on a free port, without persistence, that the test can stop and
    start again (for outages). Missing redis-server: skipped locally, a failure under CI=true."""

    def __init__(self) -> None:
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            server_missing("redis-server", FileNotFoundError("redis-server is not on PATH"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                pytest.fail(f"private redis-server on port {self.port} did not start within {timeout}s")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
