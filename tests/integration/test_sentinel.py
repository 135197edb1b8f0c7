"""Redis with Sentinel: `redis+sentinel://H:P,H:P/SERVICE/DB` for the registry, the rate limits and the API
keys. The integration test starts a primary, a replica and three Sentinels of its own on free ports, runs
`microkit up` on them, and fails the primary over under a request loop through the gateway."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from support.cli import run_cli
from support.servers import free_port, server_missing
from support.up import Loop, Up, make_project
from support.waiting import seconds_until

from microkit import config, registry, storage
from microkit.errors import ConfigError
from microkit.storage.redis_urls import SentinelURL, client_from_url, parse_sentinel

SERVICE = "mymaster"


# The URL.

def test_sentinel_urls_parse():
    assert parse_sentinel("redis+sentinel://h1:26379,h2:26380/mymaster/3") == SentinelURL(
        (("h1", 26379), ("h2", 26380)), "mymaster", 3, None, None)
    assert parse_sentinel("redis+sentinel://:pw%40x@h1,[::1]:5/m") == SentinelURL(
        (("h1", 26379), ("::1", 5)), "m", 0, None, "pw@x")
    assert parse_sentinel("REDIS+SENTINEL://u:p@h/m/0").username == "u"


@pytest.mark.parametrize("url, message", [
    ("redis+sentinel://h1:26379", "expected /SERVICE"),
    ("redis+sentinel://h1:26379/m/x", "expected /SERVICE"),
    ("redis+sentinel://h1:26379/m/0/extra", "expected /SERVICE"),
    ("redis+sentinel://h1:99999/m", "HOST:PORT"),
    ("redis+sentinel://h1:1,,h2/m", "HOST:PORT"),
    ("redis+sentinel:///m", "HOST:PORT"),
])
def test_bad_sentinel_urls_are_config_errors_naming_the_key(tmp_path, url, message):
    with pytest.raises(ConfigError) as caught:
        config.parse(f'[project]\nname = "x"\n[registry]\nurl = "{url}"\n', tmp_path / "microkit.toml")
    assert "microkit.toml: registry.url: " in str(caught.value) and message in str(caught.value)


# A real primary, replica and three Sentinels.

class Cluster:
    """A primary and a replica (redis-server), and three Sentinels monitoring them as SERVICE, on free ports."""

    def __init__(self, folder: Path):
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            server_missing("redis-server", FileNotFoundError("redis-server is not on PATH"))
        self.folder = folder
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}/0"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.folder / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen([self.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                                cwd=self.folder)
        log.close()

    def start(self) -> None:
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0")
        self._start("primary", "--port", str(self.primary_port), *common)
        self._start("replica", "--port", str(self.replica_port), *common,
                    "--replicaof", "127.0.0.1", str(self.primary_port))
        replica = redis.Redis(port=self.replica_port, socket_timeout=1)
        seconds_until(lambda: _safe(lambda: replica.info("replication").get("master_link_status") == "up"), 15,
             "the replica syncs with the primary")
        # Each Sentinel is told its id, the replica and the other Sentinels up front (what it would otherwise
        # learn from hello messages every 2 s), so that the set-up takes a moment instead of seconds.
        ids = [f"{number + 1:040x}" for number in range(3)]
        for number, port in enumerate(self.sentinel_ports):
            others = "".join(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[n]}\n"
                             for n, other in enumerate(self.sentinel_ports) if n != number)
            conf = self.folder / f"sentinel{number}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.folder}\nsentinel myid {ids[number]}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n"
                            f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica_port}\n" + others)
            self._start(f"sentinel{number}", str(conf), "--sentinel")
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            seconds_until(lambda: _safe(lambda: len(sentinel.sentinel_sentinels(SERVICE)) == 2
                               and len(sentinel.sentinel_slaves(SERVICE)) == 1), 20,
                 f"the Sentinel on {port} knows the replica and the other Sentinels")

    def primary(self) -> int | None:
        """The primary's port as the first Sentinel answers it."""
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1, decode_responses=True)
        found = _safe(lambda: sentinel.sentinel_get_master_addr_by_name(SERVICE))
        return int(found[1]) if found else None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(5)


def _safe(check):
    try:
        return check()
    except (redis.RedisError, OSError):
        return None


@pytest.fixture
def cluster(tmp_path):
    found = Cluster(tmp_path)
    try:
        found.start()
        yield found
    finally:
        found.stop()


def users(reader: registry.Registry) -> set[int] | None:
    """The pids registered for users, or None while the registry cannot be read."""
    try:
        return {i.pid for i in reader.instances("users")}
    except registry.RegistryUnavailable:
        return None


@pytest.mark.parametrize("how", ["kill -9 of the primary", "SENTINEL FAILOVER"])
def test_a_failover_under_load_loses_no_request_and_no_registration_beyond_one_ttl(cluster, tmp_path, how):
    services = {"users": {"app": "services.users.app:app", "route": "/users", "workers": 2,
                          "rate_limit": "1000000/min"}}
    root = make_project(tmp_path / "proj", services, {"users": "routed_app.py"})
    text = (root / "microkit.toml").read_text()
    (root / "microkit.toml").write_text(text.replace("[gateway]", f'[registry]\nurl = "{cluster.url}"\n\n[gateway]'))
    up = Up(root, gateway=True)
    reader = registry.connect(cluster.url, project_root=root, namespace="suptest")
    try:
        port = int(up.ready(30)["gateway"].rsplit(":", 1)[1])
        seconds_until(lambda: len(users(reader) or ()) == 2, 10, "both workers registered")
        before = users(reader)
        with Loop(f"http://127.0.0.1:{port}/users/pid") as loop:
            seconds_until(lambda: len(loop.results) >= 20, 10, "requests flowing before the failover")
            old = cluster.primary_port
            if how == "SENTINEL FAILOVER":
                redis.Redis(port=cluster.sentinel_ports[0], socket_timeout=2).execute_command("SENTINEL", "FAILOVER",
                                                                                              SERVICE)
            else:
                cluster.processes["primary"].send_signal(signal.SIGKILL)
            promoted = seconds_until(lambda: cluster.primary() == cluster.replica_port, 20, "the replica is promoted")
            # From the promotion on, every registration is back within one TTL.
            restored = seconds_until(lambda: users(reader) == before, registry.DEFAULT_TTL, "both workers registered again")
            # and they stay: the heartbeats reach the new primary (replicated keys alone would expire by now)
            held_until = time.monotonic() + registry.DEFAULT_TTL + 0.5
            while time.monotonic() < held_until:
                assert users(reader) == before
                time.sleep(0.1)
            counted = len(loop.results)
            seconds_until(lambda: any("ratelimit-limit" in headers for _, headers in loop.results[counted:]), 10, "rate limits counted on the new primary")
            seconds_until(lambda: len(loop.results) >= counted + 50, 10, "requests after the failover")
        failed = [status for status in loop.statuses if status != 200]
        assert failed == [] and loop.errors == [], (failed[:10], loop.errors[:5])
        print(f"{how}: promoted after {promoted:.2f}s, registrations complete {restored:.2f}s later; "
              f"{len(loop.results)} requests, none failed (old primary {old})")
    finally:
        reader.close()
        up.close()


def test_client_from_url_follows_the_primary_and_api_keys_live_there(cluster, tmp_path):
    client = client_from_url(cluster.url, socket_timeout=1, socket_connect_timeout=1)
    client.set("k", "v")
    assert client.connection_pool.get_master_address() == ("127.0.0.1", cluster.primary_port)
    client.close()
    (tmp_path / "microkit.toml").write_text(f'[project]\nname = "keys"\n[registry]\nurl = "{cluster.url}"\n')
    created = run_cli("keys", "create", "ops", "--scope", "a", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    primary = redis.Redis(port=cluster.primary_port)
    assert primary.hlen("keys:apikeys") == 1


def _connections_to(ports: list[int]) -> int:
    """This process's established TCP connections to any of `ports` (from /proc: its sockets' inodes)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    found = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]
                found += state == "01" and inode in mine and remote_port in ports
    return found


def test_closing_a_sentinel_client_closes_its_connections_to_the_sentinels_too(cluster):
    # `microkit up` checks the registry, closes the client, then forks its workers: a connection to a
    # Sentinel left open there lived on in a reference cycle, and a worker that garbage-collected it after
    # close_fds_except closed an fd number that was by then gevent's epoll fd (libev aborted the worker).
    was_enabled = gc.isenabled()
    gc.collect()  # the set-up's own clients, left to the collector
    gc.disable()  # and no collection may hide a connection that close() left open
    try:
        before = _connections_to([*cluster.sentinel_ports, cluster.primary_port])
        client = storage.redis_client(cluster.url)
        client.ping()
        assert _connections_to(cluster.sentinel_ports) >= 1
        client.close()
        assert _connections_to([*cluster.sentinel_ports, cluster.primary_port]) == before
    finally:
        if was_enabled:
            gc.enable()
