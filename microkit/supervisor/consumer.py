"""Consumer processes: a service's `events` handlers (`[services.NAME] events = "module"`), run as
`consumers` supervised gevent processes. They are a group like the HTTP workers (the same restart with
backoff, FATAL after failed boots, heartbeats, rolling reload, scale, graceful stop), only without a
socket: a consumer is ready once its subscriptions exist, and on SIGTERM it takes no new events, lets
in-flight handlers finish for `graceful_timeout` and exits; what it had not acked is delivered again.

Each consumer has a stable identity, `HOST.SLOT`: broadcast subscriptions are per consumer, so a consumer
restarted in the same slot picks up what was published to it while it was down.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from .group import Group, Watch
from .printer import Printer
from .process import close_fds_except, die_with_parent, reset_signals, send_signal
from .worker import BOOT_ERROR, Notifier, boot_error_text


@dataclass(frozen=True)
class ConsumerSpec:
    name: str
    module: str
    root: Path
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 30.0
    graceful_timeout: float = 10.0

    @property
    def beat_interval(self) -> float:
        return min(0.5, self.timeout / 4)


class ConsumerProcess:
    """One consumer process, as the arbiter sees it, and the code the child runs."""

    port = None

    def __init__(self, spec: ConsumerSpec, slot: int, generation: int):
        self.spec = spec
        self.slot = slot
        self.generation = generation
        self.pid: int | None = None
        self.started_at = self.last_beat = 0.0
        self.ready = False
        self.retiring = False
        self.kill_at: float | None = None
        self.aborted = False
        self.error: str | None = None
        self.output_fd = self.notify_fd = -1

    @property
    def name(self) -> str:
        return f"{self.spec.name}.events.{self.slot}"

    def spawn(self) -> None:
        output_r, output_w = os.pipe()
        notify_r, notify_w = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                reset_signals()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(output_w, 1)
                os.dup2(output_w, 2)
                close_fds_except([notify_w])
                code = self.init_process(parent, notify_w)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(output_w)
        os.close(notify_w)
        self.pid = pid
        self.output_fd, self.notify_fd = output_r, notify_r
        self.started_at = self.last_beat = time.monotonic()

    def on_notify(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        self.last_beat = time.monotonic()
        if message.get("event") == "ready":
            self.ready = True
        elif message.get("event") == "boot_error":
            self.error = str(message.get("error", "cannot load the handlers"))

    def reaped(self, status: int) -> None:
        """Nothing to release: the pipes close at end of file."""

    def signal(self, signum: int) -> None:
        send_signal(self.pid, signum)

    # Child side.

    def init_process(self, parent: int, notify_fd: int) -> int:
        from gevent import monkey
        monkey.patch_all()
        from . import drivers
        drivers.install()  # before the handlers are imported: a psycopg2 query must not stop the heartbeat
        import gevent
        import gevent.event

        die_with_parent(parent)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        notify = Notifier(notify_fd)
        gevent.spawn(self.pulse, parent, notify)

        root = str(self.spec.root)
        os.chdir(root)
        if root not in sys.path:
            sys.path.insert(0, root)
        os.environ.update(self.spec.env)
        os.environ["MICROKIT_CONSUMER_SLOT"] = str(self.slot)  # its row of the event metrics (microkit.metrics.events)
        from microkit import events
        from microkit.events.consumer import Consumer, load_handlers

        try:
            handlers = load_handlers(self.spec.module)
            consumer = Consumer(events.configure(), self.spec.name, handlers, f"{socket.gethostname()}.{self.slot}")
            consumer.start()
        except Exception as exc:
            notify.send(event="boot_error", error=boot_error_text(self.spec.module, exc))
            return BOOT_ERROR

        stopped = gevent.event.Event()
        stopping: list[bool] = []

        def graceful_stop() -> None:
            if stopping:
                return
            stopping.append(True)
            cut = consumer.stop(self.spec.graceful_timeout)
            if cut:
                print(f"graceful timeout ({self.spec.graceful_timeout:g}s): {cut} handler(s) cut off; "
                      f"their events will be delivered again")
            stopped.set()

        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(graceful_stop))
        gevent.signal_handler(signal.SIGQUIT, stopped.set)
        notify.send(event="ready")
        kinds = ", ".join(f"{h.type} ({h.mode})" for h in handlers)
        print(f"consuming {kinds} from {events.settings().scheme}:// (pid {os.getpid()})")
        stopped.wait()
        events.backend().close()
        return 0

    def pulse(self, parent: int, notify: Notifier) -> None:
        import gevent
        while True:
            if os.getppid() != parent or not notify.send(event="beat"):
                os._exit(1)
            gevent.sleep(self.spec.beat_interval)


class ConsumerGroup(Group):
    """A service's consumer processes."""

    kind = "consumers"

    def __init__(self, spec: ConsumerSpec, consumers: int, printer: Printer, watch: Watch,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(f"{spec.name}.events", consumers, spec.timeout, spec.graceful_timeout, printer, watch, clock)
        self.spec = spec

    def new_instance(self, slot: int) -> ConsumerProcess:
        return ConsumerProcess(self.spec, slot, self.generation)

    def urls(self) -> list[str]:
        return []
