"""A project with events handlers, on a real store of the test's own: a RabbitMQ vhost made for the test
(deleted afterwards, so its connections can be force-closed without touching anyone else's), a Redis key
prefix (the namespace), or the embedded SQLite file in the temp project."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

from support.cli import PROGRAMS
from support.servers import PrivateRedis, server_missing
from support.up import Up

RABBIT = os.environ.get("MICROKIT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


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


def persistent_redis(folder: Path) -> PrivateRedis:
    """A private redis-server that fsyncs every write to its append-only file in `folder`, so a restart
    keeps what XADD acknowledged."""
    return PrivateRedis("--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(folder))


class EventsProject:
    """A temp project whose services' handlers run programs/events_work.py; `up()` runs the real
    `microkit up`."""

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
            (root / f"{name}_handlers.py").write_text("from microkit import events\nfrom events_work import work\n" + "".join(
                f"\n\n{decorator}\ndef handle_{i}(event):\n    work(event)\n" for i, decorator in enumerate(handlers[name])))
        shutil.copy(PROGRAMS / "events_work.py", root / "events_work.py")
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

        if events._settings is not None:
            events.backend().close()
        events._settings = None
