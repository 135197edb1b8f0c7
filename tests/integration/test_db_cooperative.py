"""Database drivers never block a worker's loop (issue 9), connect included: on the real PostgreSQL and
MariaDB, with each server's handshake held back by a proxy, so that a connect waiting in C (as psycopg2
does without its wait callback) would stop every other request of the worker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from urllib.parse import urlparse, urlunparse

import pytest

from support.cli import REPO
from support.up import Up, concurrent, make_project

HANDSHAKE_DELAY = 0.5
CONCURRENT = 8


class SlowHandshakeProxy:
    """A TCP proxy to `upstream` that holds each connection's first answer from the server for `delay`
    seconds, as a server busy forking a backend would, then relays both ways untouched."""

    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream, self.delay = upstream, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                return
            self.sockets += [client, server]
            threading.Thread(target=self.pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, self.delay), daemon=True).start()

    @staticmethod
    def pump(source: socket.socket, target: socket.socket, first_delay: float) -> None:
        try:
            while data := source.recv(65536):
                if first_delay:
                    time.sleep(first_delay)
                    first_delay = 0.0
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlparse(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunparse(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def proxied(url: str, default_port: int) -> SlowHandshakeProxy:
    parts = urlparse(url)
    return SlowHandshakeProxy((parts.hostname, parts.port or default_port), HANDSHAKE_DELAY)


@pytest.fixture
def slow_servers(postgres_url, mysql_url):
    proxies = [proxied(postgres_url, 5432), proxied(mysql_url, 3306)]
    yield proxies[0].url(postgres_url), proxies[1].url(mysql_url)
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize("route", ["/raw/psycopg2", "/raw/psycopg", "/raw/pymysql"])
def test_a_connect_never_blocks_the_worker(tmp_path, slow_servers, route):
    """8 requests at once on one worker, each connecting while the server holds its handshake 0.5 s:
    about 0.5 s in all when connecting waits on the hub, 4 s when each connect blocks the loop."""
    pg_url, mysql_url = slow_servers
    root = make_project(tmp_path / "proj", {"dbs": {"app": "services.dbs.app:app", "workers": 1}},
                        {"dbs": "db_app.py"})
    with open(root / "microkit.toml", "a") as config:
        config.write(f"env = {{ PG_URL = {json.dumps(pg_url)}, MYSQL_URL = {json.dumps(mysql_url)} }}\n")
    up = Up(root)
    try:
        base = up.ready()["dbs"]
        elapsed, answers = concurrent(f"{base}{route}?0", CONCURRENT)
    finally:
        up.close()
    assert all(status == 200 for status, _ in answers), answers
    assert len({body["backend"] for _, body in answers}) == CONCURRENT, "a connection per request"
    serialised = CONCURRENT * HANDSHAKE_DELAY
    assert elapsed < serialised / 2, f"{route}: {CONCURRENT} connects took {elapsed:.2f}s (serialised: {serialised}s)"


GREEN_SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, time, gevent
    from microkit.supervisor import drivers
    drivers.install()
    import psycopg2
    url = sys.argv[1]
    gaps = []

    def ticker():
        last = time.monotonic()
        while True:
            gevent.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    def client(n):
        for round_ in range(5):  # each round closes its connection: sockets (and their numbers) are reused
            conn = psycopg2.connect(url)
            cur = conn.cursor()
            cur.execute("SELECT %s, pg_sleep(0.3)", (n * 10 + round_,))
            assert cur.fetchone()[0] == n * 10 + round_
            conn.close()

    tick = gevent.spawn(ticker)
    gevent.joinall([gevent.spawn(client, n) for n in range(10)], raise_error=True)
    gevent.get_hub().threadpool.apply(client, (7,))  # another thread, another hub, the same socket numbers
    client(8)

    victim = psycopg2.connect(url)
    backend = victim.info.backend_pid
    admin = psycopg2.connect(url)
    admin.autocommit = True
    killer = gevent.spawn_later(0.2, admin.cursor().execute, "SELECT pg_terminate_backend(%s)", (backend,))
    try:
        victim.cursor().execute("SELECT pg_sleep(5)")
    except psycopg2.OperationalError:
        pass
    else:
        raise SystemExit("a query whose backend was terminated did not fail")
    killer.join()
    fresh = psycopg2.connect(url)  # likely on the victim's socket number
    cur = fresh.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    tick.kill()
    print(max(gaps))
""")


def test_queries_on_reused_sockets_and_a_lost_connection_never_stall_the_hub(postgres_url):
    """The wait callback keeps one watcher per socket: sockets closed and their numbers reused by new
    connections, 10 clients at once, then in a thread of its own hub and back, and a backend terminated
    mid-query (an error, not a hang), while a greenlet ticking every 5 ms is never held up long."""
    result = subprocess.run([sys.executable, "-c", GREEN_SCRIPT, postgres_url], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 0.2, f"the hub was held up {float(result.stdout):.3f}s"
