"""Servers the tests need: a port check, the shared Redis (a namespace of the test's own), private
redis-server and PostgreSQL processes; a missing server is a skip locally and a failure under CI=true."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from microkit.testing import eventually

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI: a test that needs a server never passes by not running."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing server is a failure)")
    pytest.skip(message)


REDIS_URL = os.environ.get("MICROKIT_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("MICROKIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("MICROKIT_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


def require_redis(url: str = REDIS_URL) -> None:
    """Skip (fail under CI=true) when no Redis answers at `url`."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        server_missing(f"Redis at {url}", exc)
    finally:
        client.close()


def delete_namespace(url: str, namespace: str) -> None:
    """Remove every key a test left under `namespace`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of one test's own on a free port, without persistence unless `options` ask for it,
    that the test can stop and start again (for outages). Missing redis-server: skipped locally, a
    failure under CI=true."""

    def __init__(self, *options: str) -> None:
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            server_missing("redis-server", FileNotFoundError("redis-server is not on PATH"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = options or ("--save", "", "--appendonly", "no")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(self.answers, timeout, f"private redis-server on port {self.port} answering")

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
        def answers() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"private PostgreSQL on port {self.port} exited with {self.process.returncode}")
            return self.answers()

        eventually(answers, timeout, f"private PostgreSQL on port {self.port} answering")

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
