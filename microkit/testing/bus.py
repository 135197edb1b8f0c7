"""One test's events bus: where its services publish and consume, what was published on it, and handlers
called directly with the context a consumer gives them.

Chosen by URL, as the registry is: none (the embedded store in the test's folder, or the registry's Redis
when the test's registry is on Redis, as `microkit up` would choose), redis:// (the test's namespace as
key prefix, deleted afterwards), or amqp:// (a vhost made for the test with rabbitmqctl and deleted
afterwards, with every exchange and queue in it). The test process publishes there too, so in-process
services and `publish` reach the same consumers as worker processes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote, unquote, urlsplit

from microkit import events
from microkit.errors import UsageError
from microkit.events.consumer import handling, record_once
from microkit.events.envelope import Event, check_type, make
from microkit.events.settings import resolve

if TYPE_CHECKING:
    from microkit.testing.project import TestProject

ENV_RABBITMQCTL = "MICROKIT_TEST_RABBITMQCTL"
AMQP_SCHEMES = ("amqp", "amqps")
SOURCE = "tests"
POLL = 0.05
SHOWN = 10
SHOWN_PAYLOAD = 80


class BusError(RuntimeError):
    """The test's bus could not be made or removed (no rabbitmqctl, a broker that refuses)."""


def rabbitmqctl(*args: str) -> None:
    command = shlex.split(os.environ.get(ENV_RABBITMQCTL) or "rabbitmqctl")
    try:
        result = subprocess.run([*command, "-q", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BusError(f"per-test RabbitMQ vhosts are made with rabbitmqctl, and {command[0]!r} is not on PATH "
                       f"(set {ENV_RABBITMQCTL} to the command, e.g. \"docker exec rabbitmq rabbitmqctl\")") from None
    except subprocess.TimeoutExpired:
        raise BusError(f"`{' '.join(command)} {args[0]}` did not finish within 60s") from None
    if result.returncode != 0:
        error = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()[-1]
        raise BusError(f"`{' '.join(command)} {' '.join(args[:2])}` failed: {error}")


class Vhost:
    """A RabbitMQ vhost of one test on the server `server_url` names, for the URL's user."""

    def __init__(self, server_url: str) -> None:
        parts = urlsplit(server_url)
        self.name = f"mkt_{uuid.uuid4().hex[:16]}"
        rabbitmqctl("add_vhost", self.name)
        try:
            rabbitmqctl("set_permissions", "-p", self.name, unquote(parts.username or "guest"), ".*", ".*", ".*")
        except BusError:
            self.delete()
            raise
        self.url = parts._replace(path="/" + quote(self.name, safe="")).geturl()

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


class _LogRecorder:
    """Redis Streams and the embedded store: what was added to the type streams since the bus started."""

    def __init__(self, url: str, namespace: str) -> None:
        from microkit.events.backends import connect

        self.backend = connect(url, namespace)
        self.after: dict[str, str] = {}
        self.backend.store().tail(None, self.after, 0)  # positions at the current ends

    def poll(self) -> list[Event]:
        entries = self.backend.store().tail(None, self.after, 0.001)
        entries.sort(key=lambda e: tuple(int(part) for part in e.entry_id.split("-")))  # across streams: by id
        return [Event.from_json(e.body) for e in entries if e.body is not None]

    def close(self) -> None:
        self.backend.close()


class _AmqpRecorder:
    """RabbitMQ: a queue of the test's own bound to every type on the events exchange."""

    def __init__(self, url: str, namespace: str) -> None:
        from microkit.events.backends.amqp import AmqpBackend

        backend = AmqpBackend(url, namespace)
        self.conn = backend.connect()
        self.channel = self.conn.channel()
        self.channel.exchange_declare(backend.exchange, "topic", durable=True, auto_delete=False)
        self.queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).queue
        self.channel.queue_bind(self.queue, backend.exchange, "#")

    def poll(self) -> list[Event]:
        found = []
        while (message := self.channel.basic_get(self.queue, no_ack=True)) is not None:
            found.append(Event.from_json(message.body))
        return found

    def close(self) -> None:
        self.conn.collect()


def describe(event: Event) -> str:
    payload = repr(event.payload)
    if len(payload) > SHOWN_PAYLOAD:
        payload = payload[:SHOWN_PAYLOAD] + "..."
    return f"{event.type} from {event.source or '?'} {payload}"


class TestBus:
    """The `events` fixture: `publish`, `published`, `wait_for` and `deliver` on this test's bus.
    `url` is where the events go (`settings.url`); what is published is recorded from the start when
    `record` is true."""

    __test__ = False

    def __init__(self, project: TestProject, server_url: str | None,
                 handlers_of: Callable[[str], list[events.Handler]], record: bool = True) -> None:
        from microkit import storage

        self.project = project
        self.handlers_of = handlers_of
        self.vhost: Vhost | None = None
        self.own_redis: str | None = None
        if server_url is not None:
            if "://" not in server_url or storage.scheme(server_url) not in (*storage.REDIS_SCHEMES, *AMQP_SCHEMES):
                known = ", ".join(f"{s}://" for s in (*storage.REDIS_SCHEMES, *AMQP_SCHEMES))
                raise UsageError(f"microkit test events: expected a server URL ({known}), or none for an embedded "
                                 f"store per test, got {storage.redacted(server_url)!r}")
            if storage.scheme(server_url) in storage.REDIS_SCHEMES:
                self.own_redis = server_url if server_url != project.registry_url else None
            else:
                self.vhost = Vhost(server_url)
        self.seen: list[Event] = []
        self.recorder = None
        self._previous = events.reset()
        try:
            project.set_events_url(self.vhost.url if self.vhost else server_url)
            self.settings = resolve(project.conf, SOURCE)
            if record:
                self.record()
            events.configure(self.settings)
        except BaseException:
            self.close()
            raise

    def record(self) -> None:
        """Record what is published from now on (only tests that read it pay for it: a test that merely
        starts services imports nothing more and opens no connection)."""
        if self.recorder is None:
            recorder = _AmqpRecorder if self.settings.scheme in AMQP_SCHEMES else _LogRecorder
            self.recorder = recorder(self.settings.url, self.settings.namespace)

    def __repr__(self) -> str:
        return f"<TestBus {self.url}>"

    @property
    def url(self) -> str:
        return self.settings.url

    def publish(self, event_type: str, payload: Any = None, *, source: str = SOURCE,
                request_id: str | None = None) -> Event:
        """Publish an event on the test's bus (from `source`), as a service would; returns it."""
        with events.publishing_as(source):
            return events.publish(event_type, payload, request_id=request_id)

    def published(self, event_type: str | None = None) -> list[Event]:
        """The events published on the bus during this test (of `event_type`, or all), in order."""
        if self.recorder is None:
            raise UsageError("this bus records nothing: use the `events` fixture to read what was published")
        self.seen.extend(self.recorder.poll())
        return [e for e in self.seen if event_type is None or e.type == event_type]

    def wait_for(self, event_type: str, timeout: float = 10.0, where: Callable[[Event], Any] | None = None) -> Event:
        """The first event of `event_type` (for which `where(event)` is true) published during this test,
        waiting up to `timeout` seconds for it; fails the test with what was published otherwise."""
        import pytest

        check_type(event_type)
        deadline = time.monotonic() + timeout
        while True:
            for event in self.published(event_type):
                if where is None or where(event):
                    return event
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        seen = self.published()
        shown = "; ".join(describe(e) for e in seen[-SHOWN:]) or "nothing"
        if len(seen) > SHOWN:
            shown = f"(the last {SHOWN}) {shown}"
        wanted = f"{event_type} event{' matching the condition' if where else ''}"
        pytest.fail(f"no {wanted} within {timeout:g}s; published during the test ({len(seen)}): {shown}",
                    pytrace=False)

    def deliver(self, handler: Callable | str, event: Event | Any = None) -> Event:
        """Call a handler in this process as a consumer does: with `events.current()`, the event's trace,
        `events.once` for the service's group, and its publishes coming from the service. `handler` is a
        function decorated with @events.handler, or "SERVICE.FUNCTION" (imported from the service's events
        module with the environment `service(SERVICE)` gives it). `event` is an Event, or the payload of a new
        one of the handler's type. What the handler raises reaches the test (no retries); returns the event."""
        found, service = self._handler(handler)
        if not isinstance(event, Event):
            event = make(found.type, event, source=SOURCE)
        elif event.type != found.type:
            raise UsageError(f"{found.name} handles {found.type!r} events, not {event.type!r}")
        from microkit.events.backends.base import Subscription

        group = Subscription(service=service, type=found.type, mode=found.mode, group=found.group or "",
                             consumer="testing.1").group_name
        with events.publishing_as(service), handling(event, group) as marks:
            found.function(event)
            record_once(marks)
        return event

    def _handler(self, target: Callable | str) -> tuple[events.Handler, str]:
        services = self.project.conf.services
        if isinstance(target, str):
            service, _, function = target.partition(".")
            if service not in services or not function:
                raise UsageError(f"deliver({target!r}): expected a handler function or \"SERVICE.FUNCTION\" with "
                                 f"SERVICE one of {', '.join(services) or 'none'}")
            found = self.handlers_of(service)
            for h in found:
                if h.function.__name__ == function:
                    return h, service
            raise UsageError(f"service {service} has no handler named {function!r} in {services[service].events} "
                             f"(known: {', '.join(h.function.__name__ for h in found)})")
        registered = [h for h in events.handlers() if h.function is target]
        if not registered:
            raise UsageError(f"{target!r} is not decorated with @events.handler(\"TYPE\")")
        module = getattr(target, "__module__", None)
        service = next((name for name, conf in services.items() if conf.events == module), SOURCE)
        return registered[-1], service

    def close(self) -> None:
        """Stop recording, give this process back its own events settings, and remove what the test left on
        a server: its keys on a Redis other than the registry's, or its vhost."""
        try:
            if self.recorder is not None:
                self.recorder.close()
            if self._previous is not None:
                events.configure(self._previous)
            else:
                events.reset()
            if self.own_redis is not None:
                from microkit.testing.project import delete_keys

                delete_keys(self.own_redis, self.project.namespace)
        finally:
            if self.vhost is not None:
                self.vhost.delete()
