"""Consumer processes: a service's `events` handlers (`[services.NAME] events = "module"`), run as
`consumers` supervised gevent processes. They are a group like the HTTP workers (the same restart with
backoff, FATAL after failed boots, heartbeats, rolling reload, scale, graceful stop), only without a
socket: a consumer is ready once its subscriptions exist, and on SIGTERM it takes no new events, lets
in-flight handlers finish for `graceful_timeout` and exits; what it had not acked is delivered again.

Each consumer has a stable identity, `HOST.SLOT`: broadcast subscriptions are per consumer, so a consumer
restarted in the same slot picks up what was published to it while it was down.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from .group import Group, Watch
from .printer import Printer
from .worker import BOOT_ERROR, ChildProcess, boot_error_text


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


class ConsumerProcess(ChildProcess):
    """One consumer process, as the arbiter sees it, and the code the child runs."""

    boot_error_default = "cannot load the handlers"

    @property
    def name(self) -> str:
        return f"{self.spec.name}.events.{self.slot}"

    # Child side.

    def init_process(self, parent: int, notify_fd: int) -> int:
        notify = self.start_child(parent, notify_fd)  # cooperative drivers too: a query must not stop the beat
        import gevent
        import gevent.event

        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
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
