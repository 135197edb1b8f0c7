"""Command services: `[services.x] command = "..."` runs any program (an asyncio or aiohttp server, say)
with `PORT` (and `HOST`) in its environment, one port per instance. Its health is its answer to
`GET <health path>` over HTTP: an instance is ready at its first 200, and one that has not answered 200
for `timeout` seconds is killed and replaced, like a blocked worker. Restart, reload and stop are the
group's, as for gevent workers.

The command is split like a shell would (shlex) and run without a shell, so signals reach the program
itself; `$PORT`, `${HOST}` and other variables of its environment are expanded in its arguments. It runs
in a process group of its own, so a Ctrl-C at the terminal reaches only the arbiter, which stops it
gracefully (SIGTERM); it dies with the arbiter through PR_SET_PDEATHSIG. With a registry, the program
runs under `shim`, which registers it once healthy and deregisters it before passing SIGTERM on.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from .group import Group, Watch
from .printer import Printer
from .process import die_with_parent, free_port, send_signal, url
from .registration import RegistrySpec

PROBE_TIMEOUT = 0.5
BOOT_PROBE_INTERVAL = 0.2


@dataclass(frozen=True)
class CommandSpec:
    name: str
    command: str
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 30.0
    graceful_timeout: float = 10.0
    health: str = "/healthz"
    registry: RegistrySpec | None = None

    @property
    def probe_interval(self) -> float:
        return min(2.0, self.timeout / 3)


class CommandProcess:
    """One running instance of a command, as the arbiter sees it."""

    notify_fd = -1

    def __init__(self, spec: CommandSpec, slot: int, generation: int, port: int):
        self.spec = spec
        self.slot = slot
        self.generation = generation
        self.port = port
        self.pid: int | None = None
        self.started_at = self.last_beat = self.next_probe_at = 0.0
        self.ready = False
        self.routable = True  # the shim registers it once healthy: the first 200 that makes it ready
        self.retiring = False
        self.kill_at: float | None = None
        self.aborted = False
        self.error: str | None = None
        self.output_fd = -1
        self.process: subprocess.Popen | None = None
        self.program: int | None = None

    @property
    def name(self) -> str:
        return f"{self.spec.name}.{self.slot}"

    @property
    def beat_interval(self) -> float:
        return self.spec.probe_interval

    def spawn(self) -> None:
        env = {**os.environ, **self.spec.env, "PORT": str(self.port), "HOST": self.spec.host,
               "PYTHONUNBUFFERED": "1"}
        args = [string.Template(arg).safe_substitute(env) for arg in shlex.split(self.spec.command)]
        registry = self.spec.registry
        if registry is not None:
            shim = {"url": registry.url, "root": str(registry.project_root), "namespace": registry.namespace,
                    "advertise": registry.host, "service": self.spec.name, "host": self.spec.host,
                    "port": self.port, "health": self.spec.health, "slot": self.slot}
            args = [sys.executable, "-m", "microkit.supervisor.shim", json.dumps(shim), "--", *args]
        self.process = subprocess.Popen(
            args, cwd=self.spec.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, process_group=0, preexec_fn=partial(die_with_parent, os.getpid()))
        self.output_fd = os.dup(self.process.stdout.fileno())
        self.process.stdout.close()
        self.pid = self.process.pid
        self.started_at = self.last_beat = time.monotonic()

    def probe(self, now: float) -> None:
        """Ask the health path, when due; a 200 counts as a beat."""
        if now < self.next_probe_at or self.retiring:
            return
        self.next_probe_at = now + (self.spec.probe_interval if self.ready else BOOT_PROBE_INTERVAL)
        if check_health(self.spec.host, self.port, self.spec.health):
            self.ready = True
            self.last_beat = now

    @property
    def program_pid(self) -> int | None:
        """The program's own pid: the shim's child when it runs under the shim (Linux /proc), else ours."""
        if self.pid is None or self.spec.registry is None:
            return self.pid
        if self.program is None:
            try:
                with open(f"/proc/{self.pid}/task/{self.pid}/children") as children:
                    found = children.read().split()
            except OSError:
                found = []
            self.program = int(found[0]) if found else None
        return self.program or self.pid

    def on_notify(self, line: str) -> None:
        """Commands have no notify pipe."""

    def reaped(self, status: int) -> None:
        if self.process is not None:
            self.process.returncode = os.waitstatus_to_exitcode(status)

    def signal(self, signum: int) -> None:
        send_signal(self.pid, signum)


def health_status(host: str, port: int, path: str, timeout: float = PROBE_TIMEOUT, tls: bool = False) -> int:
    """The status of `GET path` on host:port (over TLS, whatever its certificate, with `tls`); OSError or
    HTTPException when there is no answer."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    connection = (http.client.HTTPSConnection(host, port, timeout=timeout, context=unverified_context()) if tls
                  else http.client.HTTPConnection(host, port, timeout=timeout))
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def unverified_context():
    """TLS for the supervisor's probes of its own gateway: the certificate is for clients to check."""
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def check_health(host: str, port: int, path: str, timeout: float = PROBE_TIMEOUT, tls: bool = False) -> bool:
    """True when `GET path` answers 200 within `timeout`."""
    try:
        return health_status(host, port, path, timeout, tls) == 200
    except (OSError, http.client.HTTPException):
        return False


class CommandGroup(Group):
    """A command service's instances. With `listen` port 0 each new instance gets a free port; with a
    fixed port P, instance N listens on P + N - 1."""

    kind = "command"

    def __init__(self, spec: CommandSpec, workers: int, printer: Printer, watch: Watch,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(spec.name, workers, spec.timeout, spec.graceful_timeout, printer, watch, clock)
        self.spec = spec

    def new_instance(self, slot: int) -> CommandProcess:
        port = self.spec.port + slot - 1 if self.spec.port else free_port(self.spec.host)
        return CommandProcess(self.spec, slot, self.generation, port)

    def tick(self) -> None:
        now = self.clock()
        for instance in self.instances:
            instance.probe(now)
        super().tick()

    def urls(self) -> list[str]:
        return [url(self.spec.host, i.port) for i in sorted(self.instances, key=lambda i: i.slot)
                if i.ready and not i.retiring]
