"""A consumer process's work: load a service's handlers, subscribe them, run each delivery with retries,
send what keeps failing to the dead letters, and stop gracefully (finish in-flight handlers, then close).

Runs under gevent (the supervisor's consumer processes monkey-patch first): each delivery runs in a
greenlet of its own, at most `prefetch` of them per subscription.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from microkit import events, tracing
from microkit.errors import UsageError
from microkit.events.backends.base import Backend, Delivery, Runner, Subscription
from microkit.events.envelope import Event
from microkit.events.settings import Settings
from microkit.metrics import events as meter

log = logging.getLogger("microkit.events")


def load_handlers(module: str) -> list[events.Handler]:
    """Import `module` and return the handlers it registered (an error if none)."""
    before = len(events.handlers())
    importlib.import_module(module)
    found = events.handlers()[before:]
    if not found:
        raise UsageError(f"{module} registers no handler (decorate functions with @events.handler(\"TYPE\"))")
    return found


def subscriptions(handlers: list[events.Handler], service: str, consumer: str) -> dict[Subscription, events.Handler]:
    """One subscription per handler; two handlers of one service in the same group for one type are an error."""
    found: dict[Subscription, events.Handler] = {}
    seen: dict[tuple[str, str], events.Handler] = {}
    for h in handlers:
        sub = Subscription(service=service, type=h.type, mode=h.mode, group=h.group or "", consumer=consumer,
                           retries=h.retries, retry_delay=h.retry_delay)
        key = (sub.group_name, h.type)
        if key in seen:
            raise UsageError(f"{h.name} and {seen[key].name} both handle {h.type!r} in mode {h.mode!r}: "
                             f"merge them into one handler")
        seen[key] = h
        found[sub] = h
    return found


@contextmanager
def handling(event: Event, group: str) -> Iterator[list[tuple[str, float]]]:
    """What a handler runs in: `events.current()` is the event, its trace carries on into publishes and client
    calls, and `events.once` collects its marks (the list yielded) for `record_once` after the handler returned.
    Consumers run every attempt in it, and microkit.testing's `events.deliver` too."""
    marks: list[tuple[str, float]] = []
    token = events._current.set((event, marks, group))
    trace = tracing.handling(event.traceparent)
    try:
        yield marks
    finally:
        tracing.restore(trace)
        events._current.reset(token)


def record_once(marks: list[tuple[str, float]]) -> None:
    """Record the ids `events.once` saw during an attempt that succeeded."""
    store = events._once_store() if marks else None
    for key, ttl in marks:
        store.once_mark(key, ttl)


class Consumer:
    """The handlers of one service in one process."""

    def __init__(self, found: Settings, service: str, handlers: list[events.Handler], consumer: str) -> None:
        import gevent.event

        self.settings = found
        self.service = service
        self.subs = subscriptions(handlers, service, consumer)
        self.backend: Backend = events.backend()
        self.runner: Runner | None = None
        self.active = 0
        self.idle = gevent.event.Event()
        self.idle.set()

    def start(self) -> None:
        for sub in self.subs:
            meter.handled(self.service, sub.type)  # its series show (at 0) from the start
        self.runner = self.backend.run(list(self.subs), self.deliver)

    def stop(self, timeout: float) -> int:
        """Take nothing new, let in-flight handlers finish for up to `timeout`; how many were cut off."""
        if self.runner is not None:
            self.runner.stop_reading()
        self.idle.wait(timeout)
        cut = self.active
        if self.runner is not None:
            self.runner.close()
        return cut

    def deliver(self, sub: Subscription, delivery: Delivery) -> None:
        import gevent

        self.active += 1
        self.idle.clear()
        cells = meter.handled(self.service, sub.type)
        try:
            event = delivery.event
            if event.delivery > sub.max_deliveries:
                error = (f"delivered {event.delivery} times without an ack (its consumer died each time); "
                         f"not run again")
                log.warning("%s %s: %s -> dead letters", event.type, event.id, error)
                self.backend.dead_letter(sub, delivery, error)
                if cells is not None:
                    cells.count(cells.dead)
                return
            handler = self.subs[sub]
            error = ""
            for attempt in range(sub.retries + 1):
                with handling(event, sub.group_name) as marks:
                    started = time.monotonic()
                    try:
                        handler.function(event)
                    except Exception as exc:
                        if cells is not None:
                            cells.attempt(False, time.monotonic() - started)
                            if attempt < sub.retries:
                                cells.count(cells.retried)
                        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                        last = attempt == sub.retries
                        log.warning("%s %s: %s raised %s (attempt %d of %d)%s", event.type, event.id, handler.name,
                                    error, attempt + 1, sub.retries + 1, " -> dead letters" if last else "")
                    else:
                        if cells is not None:
                            cells.attempt(True, time.monotonic() - started)
                        record_once(marks)
                        delivery.ack()
                        return
                if attempt < sub.retries:
                    gevent.sleep(sub.retry_delay * 2 ** attempt)
            self.backend.dead_letter(sub, delivery, error)
            if cells is not None:
                cells.count(cells.dead)
        except Exception as exc:  # the store failed under us: no ack, so the event comes back
            log.warning("%s %s: not acked (%s); it will be delivered again", delivery.event.type,
                        delivery.event.id, exc)
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()
