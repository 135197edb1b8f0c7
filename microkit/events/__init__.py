"""Events between services: publish from any code, handle in supervised consumer processes.

    from microkit import events

    events.publish("payments.completed", {"order_id": 1})

    @events.handler("payments.completed", mode="pool", retries=3, retry_delay=1.0)
    def mark_paid(event):
        ...  # event.payload, event.id, event.source, event.time, event.request_id

Where events go is `[events] url` (amqp://, redis://) or, without it, the registry's Redis, else the
embedded SQLite store (see `settings`). Modes: "pool" (each event to one consumer of the service),
"broadcast" (to every running consumer of the service), "singleton" (to one consumer in all, across every
service naming the same `group`). Delivery is at least once; `once(event)` skips events handled already.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from microkit import tracing
from microkit.errors import UsageError
from microkit.events.backends.base import MODES, Backend, EventsUnavailable
from microkit.events.envelope import Event, check_type, make
from microkit.events.settings import Settings, from_environ
from microkit.metrics import events as meter
from microkit.storage import PerProcess

__all__ = ["Event", "EventsUnavailable", "Handler", "MODES", "backend", "configure", "current", "handler",
           "handlers", "once", "publish", "publishing_as", "reset"]

ONCE_TTL = 7 * 86400


@dataclass(frozen=True)
class Handler:
    type: str
    function: Callable[[Event], Any]
    mode: str = "pool"
    retries: int = 3
    retry_delay: float = 1.0
    group: str | None = None

    @property
    def name(self) -> str:
        return f"{self.function.__module__}.{self.function.__qualname__}"


_handlers: list[Handler] = []
_settings: Settings | None = None
_backend: PerProcess[Backend] = PerProcess(lambda: _connect(settings()))
_once_backend: PerProcess[Backend] = PerProcess(lambda: _connect(settings(), settings().once_url))
_current: contextvars.ContextVar[tuple[Event, list[tuple[str, float]], str] | None] = contextvars.ContextVar(
    "microkit_event", default=None)
_source: contextvars.ContextVar[str | None] = contextvars.ContextVar("microkit_event_source", default=None)


def _connect(found: Settings, url: str | None = None) -> Backend:
    from microkit.events.backends import connect

    return connect(url or found.url, found.namespace, publish_timeout=found.publish_timeout,
                   prefetch=found.prefetch, claim_after=found.claim_after)


def configure(found: Settings | None = None) -> Settings:
    """Use `found` (default: from the environment `microkit up` set, else microkit.toml) from now on."""
    global _settings
    reset()
    _settings = found or from_environ()
    return _settings


def reset() -> Settings | None:
    """Close this process's connections and forget the settings (returned, None if there were none): the
    next use reads them again."""
    global _settings
    for holder in (_backend, _once_backend):
        old = holder.drop()
        if old is not None:
            old.close()
    forgotten, _settings = _settings, None
    return forgotten


@contextmanager
def publishing_as(service: str) -> Iterator[None]:
    """Events published in this context come from `service` rather than this process's own: microkit.testing
    serves several services in one test process."""
    token = _source.set(service)
    try:
        yield
    finally:
        _source.reset(token)


def settings() -> Settings:
    return _settings if _settings is not None else configure()


def backend() -> Backend:
    """This process's connection to the events store."""
    return _backend.get()


def publish(event_type: str, payload: Any = None, *, request_id: str | None = None) -> Event:
    """Publish an event; returns once the store has it (AMQP: confirmed; Redis: XADD returned; embedded:
    committed). While the store is down it retries for `[events] publish_timeout` seconds, then raises
    EventsUnavailable. The request id is taken from the request being served (X-Request-ID) or the event
    being handled, unless given. The envelope's traceparent carries on the trace of that request or event
    (microkit.tracing) with a new parent id, else starts a trace."""
    handling = _current.get()
    current = tracing.current()
    if handling is not None:
        request_id = handling[0].request_id if request_id is None else request_id
        current = current or handling[0].traceparent
    else:
        found_id, found_trace = _from_request()
        request_id = found_id if request_id is None else request_id
        current = current or found_trace
    event = make(event_type, payload, source=_source.get() or settings().source, request_id=request_id,
                 traceparent=tracing.outgoing(current))
    backend().publish(event)
    meter.published(event.source, event_type)
    return event


def _from_request() -> tuple[str | None, str | None]:
    """X-Request-ID and traceparent of the Bottle request this greenlet serves, if any."""
    bottle = sys.modules.get("bottle")
    if bottle is None:
        return None, None
    try:
        headers = bottle.request.headers
        return headers.get("X-Request-ID"), headers.get("traceparent")
    except Exception:  # no request bound to this greenlet
        return None, None


def handler(event_type: str, *, mode: str = "pool", retries: int = 3, retry_delay: float = 1.0,
            group: str | None = None) -> Callable[[Callable], Callable]:
    """Register the decorated function for `event_type` in this process's consumers. An exception retries it
    `retries` more times, waiting `retry_delay` seconds doubling each time; then the event goes to the
    dead letters with the error. The ack comes after the function returns."""
    check_type(event_type)
    if mode not in MODES:
        raise UsageError(f"events.handler({event_type!r}): mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UsageError(f"events.handler({event_type!r}): retries must be an integer >= 0, got {retries!r}")
    if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or retry_delay < 0:
        raise UsageError(f"events.handler({event_type!r}): retry_delay must be seconds >= 0, got {retry_delay!r}")
    if group is not None and mode != "singleton":
        raise UsageError(f"events.handler({event_type!r}): group is for mode=\"singleton\" only")

    def register(function: Callable) -> Callable:
        _handlers.append(Handler(event_type, function, mode, retries, float(retry_delay), group))
        return function
    return register


def handlers() -> list[Handler]:
    """The handlers registered in this process so far."""
    return list(_handlers)


def current() -> Event | None:
    """The event this greenlet is handling, if any."""
    handling = _current.get()
    return handling[0] if handling else None


def once(event: Event, ttl: float = ONCE_TTL) -> bool:
    """True the first time an event id is handled in this subscription group (the service, for pool mode;
    this consumer, for broadcast), False for a redelivery of one handled already. Inside a handler the id is recorded when the handler returns, so an attempt that fails or dies
    does not count; outside one it is recorded now. Remembered for `ttl` seconds, in Redis or SQLite."""
    handling = _current.get()
    service = handling[2] if handling else settings().source
    key = f"{service}:{event.id}"
    store = _once_store()
    if store.once_seen(key):
        return False
    if handling is not None and handling[0].id == event.id:
        handling[1].append((key, ttl))
    else:
        store.once_mark(key, ttl)
    return True


def _once_store() -> Any:
    found = backend()
    if hasattr(found, "once_seen"):
        return found
    if not settings().once_url.startswith(("redis", "sqlite")):
        raise UsageError("events.once needs a Redis or SQLite store for handled ids: set Settings.once_url "
                         "(microkit up sets it from the registry, else the embedded store)")
    return _once_backend.get()
