"""Helpers for microkit's tests: the real CLI in a subprocess, folder snapshots, server checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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


class PrivatePostgres:
    """A PostgreSQL server of one test's own (initdb in a temp folder, a free port, trust auth, fsync off)
    that the test can stop and start again, for database restarts; the shared server is never touched.
    Missing binaries: skipped locally, a failure under CI=true."""

    def __init__(self, folder: Path) -> None:
        self.bin = self._bindir()
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen | None = None
        # PostgreSQL refuses to run as root: as root, run it as the postgres user (exec'd directly, so the
        # process this object holds is the server itself)
        self.as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
        if self.as_postgres:
            shutil.chown(folder, "postgres")
        result = subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                 "--no-sync", "-E", "UTF8"], capture_output=True, text=True, **self.as_postgres)
        if result.returncode != 0:
            pytest.fail(f"initdb failed: {result.stderr.strip()}")

    @staticmethod
    def _bindir() -> Path:
        for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (folder / "initdb").exists():
                return folder
        found = shutil.which("initdb")
        if found is None:
            server_missing("PostgreSQL binaries (initdb)", FileNotFoundError("initdb is not installed"))
        return Path(found).parent

    def start(self, timeout: float = 15.0) -> None:
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self.as_postgres)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"private PostgreSQL on port {self.port} did not start within {timeout}s")
            time.sleep(0.05)

    def answers(self) -> bool:
        import psycopg2
        try:
            psycopg2.connect(self.url, connect_timeout=1).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, as in a real restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
