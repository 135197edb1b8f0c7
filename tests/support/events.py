"""A project with events handlers, on a real store of the test's own: a RabbitMQ vhost made for the test
(deleted afterwards, so its connections can be force-closed without touching anyone else's), a Redis key
prefix (the namespace), or the embedded SQLite file in the temp project."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from support.servers import PrivateRedis, free_port, server_missing
from support.up import Up

REDIS = os.environ.get("MICROKIT_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBIT = os.environ.get("MICROKIT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")

HANDLERS = '''
import json, os, time
from microkit import events

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records.jsonl")
SERVICE = os.environ["MICROKIT_SERVICE"]


def record(step, event, **extra):
    line = json.dumps({"step": step, "service": SERVICE, "id": event.id, "type": event.type, "pid": os.getpid(),
                       "payload": event.payload, "delivery": event.delivery, "source": event.source,
                       "request_id": event.request_id, "time": time.time(), **extra})
    fd = os.open(RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)


def work(event):
    payload = event.payload or {}
    if payload.get("once") and not events.once(event):
        record("duplicate", event)
        return
    record("start", event)
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    if payload.get("fail_while") and os.path.exists(payload["fail_while"]):
        record("fail", event)
        raise RuntimeError("failing on purpose")
    if payload.get("publish"):
        events.publish(payload["publish"], {"from": event.id})
    record("done", event)
'''


def rabbit_reachable() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), 2).close()
    except OSError as exc:
        server_missing("RabbitMQ at 127.0.0.1:5672", exc)
    if shutil.which("rabbitmqctl") is None:
        server_missing("rabbitmqctl", FileNotFoundError("rabbitmqctl is not on PATH"))


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Vhost:
    """A RabbitMQ vhost of the test's own."""

    def __init__(self) -> None:
        rabbit_reachable()
        self.name = f"mk_{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = RABBIT.rstrip("/") + "/" + self.name

    def close_connections(self) -> None:
        """Force-close every connection to this vhost (as a broker restart does), without restarting the
        shared broker."""
        rabbitmqctl("close_all_connections", "--vhost", self.name, "microkit test: simulated broker restart")

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


class PersistentRedis(PrivateRedis):
    """A private redis-server that fsyncs every write to its append-only file, so a restart keeps what
    XADD acknowledged."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def start(self, timeout: float = 5.0) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                pytest.fail(f"private redis-server on port {self.port} did not start within {timeout}s")
            time.sleep(0.02)


def redis_reachable(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        server_missing(f"Redis at {url}", exc)


class EventsProject:
    """A temp project whose services run the HANDLERS above; `up()` runs the real `microkit up`."""

    def __init__(self, root: Path, url: str | None, services: dict[str, dict], *, handlers: dict[str, list[str]],
                 events: dict | None = None) -> None:
        self.root = root
        self.url = url
        self.namespace = f"ev{uuid.uuid4().hex[:10]}"
        self.records = root / "records.jsonl"
        self.running: list[Up] = []
        root.mkdir(parents=True, exist_ok=True)
        lines = ["[project]", f'name = "{self.namespace}"', ""]
        table = dict(events or {})
        if url:
            table["url"] = url
        if table:
            lines.append("[events]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
            lines.append("")
        for name, settings in services.items():
            lines.append(f"[services.{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in {"events": f"{name}_handlers", **settings}.items()]
            lines.append("")
            decorators = "\n".join(handlers[name])
            (root / f"{name}_handlers.py").write_text(HANDLERS + f"\n\n{decorators}\ndef handle(event):\n    work(event)\n"
                                                      if len(handlers[name]) == 1 else HANDLERS + "\n".join(
                f"\n\n{d}\ndef handle_{i}(event):\n    work(event)\n" for i, d in enumerate(handlers[name])))
        (root / "microkit.toml").write_text("\n".join(lines))

    def up(self, *args: str, ready: bool = True) -> Up:
        up = Up(self.root, *args)
        self.running.append(up)
        if ready:
            up.wait_for(r"^ready: ", 30)
        return up

    def events(self):
        """The events API in this test process, configured for the project (as `microkit events` is)."""
        from microkit import config, events
        from microkit.events.settings import resolve

        events.configure(resolve(config.load(self.root / "microkit.toml"), "test"))
        return events

    def read(self, step: str | None = None, **match) -> list[dict]:
        if not self.records.exists():
            return []
        rows = [json.loads(line) for line in self.records.read_text().splitlines() if line]
        return [r for r in rows if (step is None or r["step"] == step) and all(r.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        for up in self.running:
            up.close()
        from microkit import events

        events.backend().close() if events._settings is not None else None
        events._settings = None


def redis_cleanup(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


__all__ = ["EventsProject", "PersistentRedis", "REDIS", "Vhost", "free_port", "redis_cleanup", "redis_reachable"]
