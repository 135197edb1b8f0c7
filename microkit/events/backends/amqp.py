"""Events over RabbitMQ (AMQP 0-9-1), with py-amqp.

Topology, for namespace `ns`: one durable topic exchange `ns.events`, routing key = the event type; a
durable queue per subscription group and type, `ns.{group}.{type}` (singleton queues with
`x-single-active-consumer`; with `?queue_type=quorum` in the URL, quorum queues, whose `x-delivery-count`
lets an event that keeps killing its consumer go to the dead letters); one durable queue `ns.dead` for dead letters (headers say service, group,
queue and error). Messages are persistent; `publish` waits for the publisher confirm.

Under gevent, a connection is never used by two greenlets at once:
- publishing: one connection per process, used under a lock by whichever greenlet publishes (publishes of
  a process are serialized; a confirm is a round trip). It has no heartbeat (it is idle between
  publishes), and a publish that finds it broken reconnects within `publish_timeout`.
- consuming: one connection per consumer process, owned by an I/O greenlet that waits for the socket to be
  readable outside the lock, then, under the lock, reads what arrived and serves heartbeats. Handlers run
  in greenlets of their own and take the lock only to send their ack, so a slow handler never delays a
  heartbeat, and RabbitMQ never drops a busy consumer. `basic_qos(prefetch)` bounds unacked deliveries.
When the broker drops the connection (a restart, `rabbitmqctl close_all_connections`), the consumer
reconnects with backoff; acks of deliveries from the old connection are dropped (those events come again).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import amqp

from microkit.events.backends.base import (
    Backend, DeadLetter, Delivery, EventsUnavailable, Runner, Subscription,
)
from microkit.errors import ConfigError
from microkit.events.envelope import Event
from microkit.storage import PerProcess, redacted

log = logging.getLogger("microkit.events")

HEARTBEAT = 10
CONNECT_TIMEOUT = 2.0
RETRY_MIN, RETRY_MAX = 0.2, 5.0


def connection_options(url: str) -> dict:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return {
        "host": f"{parts.hostname or '127.0.0.1'}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}",
        "userid": unquote(parts.username or "guest"), "password": unquote(parts.password or "guest"),
        "virtual_host": unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        "ssl": parts.scheme == "amqps",
        "heartbeat": int(query.get("heartbeat", [HEARTBEAT])[0]),
    }


class AmqpBackend(Backend):
    def __init__(self, url: str, namespace: str, **options) -> None:
        super().__init__(url, namespace, **options)
        self.options = connection_options(url)
        self.queue_type = parse_qs(urlsplit(url).query).get("queue_type", ["classic"])[0]
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"events URL {redacted(url)}: queue_type must be classic or quorum, "
                              f"got {self.queue_type!r}")
        self.exchange = f"{namespace}.events"
        self.dead_queue = f"{namespace}.dead"
        self._publisher = PerProcess(lambda: _Publisher(self))

    def queue(self, sub: Subscription) -> str:
        return f"{self.namespace}.{sub.group_name}.{sub.type}"

    def connect(self, *, heartbeat: int = 0, confirm: bool = False, timeout: float = CONNECT_TIMEOUT) -> amqp.Connection:
        options = dict(self.options, heartbeat=heartbeat)
        conn = amqp.Connection(**options, confirm_publish=confirm, connect_timeout=timeout,
                               client_properties={"connection_name": f"microkit {self.namespace}"})
        conn.connect()
        return conn

    def publish(self, event: Event) -> None:
        self._publisher.get().send(event.to_json(), self.exchange, event.type, event, {})

    def run(self, subscriptions: list[Subscription], deliver: Callable[[Subscription, Delivery], None]) -> Runner:
        runner = _AmqpRunner(self, subscriptions, deliver)
        runner.start()
        return runner

    def dead_letter(self, subscription: Subscription, delivery: Delivery, error: str) -> None:
        headers = {"x-service": subscription.service, "x-group": subscription.group_name,
                   "x-queue": self.queue(subscription), "x-error": error[:4000], "x-dead-at": repr(time.time())}
        self._publisher.get().send(delivery.event.to_json(), "", self.dead_queue, delivery.event, headers)
        delivery.ack()

    def dead(self, service: str | None = None) -> list[DeadLetter]:
        return [letter for _, letter, _ in self._scan(lambda letter: service is None or letter.service == service,
                                                      replay=False)]

    def replay(self, event_id: str | None) -> int:
        return len(self._scan(lambda letter: event_id is None or letter.event.id == event_id, replay=True))

    def _scan(self, match: Callable[[DeadLetter], bool], *, replay: bool) -> list:
        """Read the dead-letter queue without taking it: every message is fetched unacked, the matching ones
        are re-sent to their queue (confirmed) and acked when `replay`; closing the channel puts the rest back."""
        found = []
        try:
            conn = self.connect(confirm=True, timeout=self.publish_timeout)
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise EventsUnavailable(f"events broker {redacted(self.url)} unavailable: {exc}") from None
        try:
            channel = conn.channel()
            channel.queue_declare(self.dead_queue, durable=True, auto_delete=False)
            sender = conn.channel() if replay else None
            while True:
                message = channel.basic_get(self.dead_queue)
                if message is None:
                    break
                headers = message.properties.get("application_headers") or {}
                letter = DeadLetter(Event.from_json(message.body), str(headers.get("x-service", "")),
                                    str(headers.get("x-group", "")), str(headers.get("x-error", "")),
                                    float(headers.get("x-dead-at", 0) or 0))
                if not match(letter):
                    continue
                if replay:
                    sender.basic_publish(_message(message.body, letter.event, {}), exchange="",
                                         routing_key=str(headers.get("x-queue", "")))
                    channel.basic_ack(message.delivery_tag)
                found.append((message.delivery_tag, letter, headers))
            channel.close()
        finally:
            _close(conn)
        return found

    def tail(self, types: list[str], on_event: Callable[[Event], None], stop: Callable[[], bool],
             ready: Callable[[], None] = lambda: None) -> None:
        conn = self.connect(heartbeat=HEARTBEAT)
        try:
            channel = conn.channel()
            channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).queue
            for key in types or ["#"]:
                channel.queue_bind(queue, self.exchange, key)
            channel.basic_consume(queue, no_ack=True, callback=lambda m: on_event(Event.from_json(m.body)))
            ready()
            while not stop():
                try:
                    conn.drain_events(timeout=0.5)
                except socket.timeout:
                    conn.heartbeat_tick()
        finally:
            _close(conn)

    def lag(self, pools: list[tuple[str, str]] = ()) -> dict[tuple[str, str], tuple[int | None, int | None]]:
        """Ready messages of the pool queues of (service, type) (a passive queue_declare each: RabbitMQ
        tells neither unacked counts nor the queues of broadcast and singleton groups this cheaply)."""
        found: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        conn = self.connect(timeout=0.5)
        try:
            channel = conn.channel()
            for service, event_type in pools:
                try:
                    ok = channel.queue_declare(f"{self.namespace}.{service}.{event_type}", passive=True)
                except amqp.exceptions.NotFound:
                    channel = conn.channel()  # the broker closed the channel: the queue does not exist (yet)
                    continue
                found[(service, event_type)] = (ok.message_count, None)
        finally:
            _close(conn)
        return found

    def close(self) -> None:
        publisher = self._publisher.drop()
        if publisher is not None:
            publisher.close()


def _close(conn: amqp.Connection) -> None:
    try:
        conn.close()
    except Exception:
        conn.collect()


def _message(body: bytes, event: Event, headers: dict) -> amqp.Message:
    return amqp.Message(body, content_type="application/json", delivery_mode=2, message_id=event.id,
                        type=event.type, timestamp=int(event.time), application_headers=headers or None)


class _Publisher:
    """This process's publishing connection, one greenlet (or thread) at a time."""

    def __init__(self, backend: AmqpBackend) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.conn: amqp.Connection | None = None
        self.channel = None

    def send(self, body: bytes, exchange: str, routing_key: str, event: Event, headers: dict) -> None:
        backend = self.backend
        deadline = time.monotonic() + backend.publish_timeout
        delay = 0.05
        with self.lock:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if self.conn is None:
                        self.conn = backend.connect(confirm=True, timeout=max(0.1, min(remaining, CONNECT_TIMEOUT)))
                        self.channel = self.conn.channel()
                        self.channel.exchange_declare(backend.exchange, "topic", durable=True, auto_delete=False)
                    self.channel.basic_publish(_message(body, event, headers), exchange=exchange,
                                               routing_key=routing_key, confirm_timeout=max(0.1, remaining))
                    return
                except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked) as exc:
                    self.close()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise EventsUnavailable(
                            f"cannot publish {event.type}: events broker {redacted(backend.url)} unavailable for "
                            f"{backend.publish_timeout:g}s: {exc or type(exc).__name__}") from None
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 0.5)

    def close(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:
                pass


class _AmqpRunner(Runner):
    """The consumer side: one connection, one channel per subscription, an I/O greenlet that owns them."""

    def __init__(self, backend: AmqpBackend, subscriptions: list[Subscription],
                 deliver: Callable[[Subscription, Delivery], None]) -> None:
        from gevent.lock import RLock

        self.backend = backend
        self.subscriptions = subscriptions
        self.deliver = deliver
        self.lock = RLock()
        self.reading = True
        self.closed = False
        self.generation = 0
        self.conn: amqp.Connection | None = None
        self.channels: list = []
        self.acks: list[_Acks] = []
        self.flushing = False
        self.greenlet = None

    def start(self) -> None:
        import gevent

        try:
            self._connect()  # subscribed before `ready`, so what is published from then on reaches the queues
        except (OSError, amqp.exceptions.AMQPError) as exc:
            log.warning("events broker %s unavailable (%s); subscribing once it is back",
                        redacted(self.backend.url), exc)
        self.greenlet = gevent.spawn(self._main)

    def stop_reading(self) -> None:
        self.reading = False
        with self.lock:
            for channel, tag in self.channels:
                try:
                    channel.basic_cancel(tag)
                except Exception:
                    pass

    def close(self) -> None:
        self.reading = False
        self.closed = True
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=2)
        with self.lock:
            self._drop()

    def _connect(self) -> None:
        backend = self.backend
        conn = backend.connect(heartbeat=backend.options["heartbeat"])
        channels, all_acks = [], []
        try:
            setup = conn.channel()
            setup.exchange_declare(backend.exchange, "topic", durable=True, auto_delete=False)
            setup.queue_declare(backend.dead_queue, durable=True, auto_delete=False)
            for sub in self.subscriptions:
                channel = conn.channel()
                arguments = {"x-single-active-consumer": True} if sub.mode == "singleton" else {}
                if backend.queue_type == "quorum":
                    arguments["x-queue-type"] = "quorum"
                queue = backend.queue(sub)
                channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments or None)
                channel.queue_bind(queue, backend.exchange, sub.type)
                channel.basic_qos(0, backend.prefetch, False)
                acks = _Acks(channel, self.generation + 1)
                tag = channel.basic_consume(queue, callback=lambda m, s=sub, a=acks: self._on_message(s, a, m))
                channels.append((channel, tag))
                all_acks.append(acks)
        except BaseException:
            conn.collect()
            raise
        self.conn, self.channels, self.acks = conn, channels, all_acks
        self.generation += 1

    def _drop(self) -> None:
        conn, self.conn, self.channels = self.conn, None, []
        if conn is not None:
            try:
                conn.collect()
            except Exception:
                pass

    def _main(self) -> None:
        import gevent
        from gevent.socket import wait_read

        delay = RETRY_MIN
        while not self.closed:
            if self.conn is None:
                if not self.reading:
                    return
                try:
                    with self.lock:
                        self._connect()
                    log.warning("events broker %s: reconnected", redacted(self.backend.url))
                    delay = RETRY_MIN
                except (OSError, amqp.exceptions.AMQPError) as exc:
                    log.warning("events broker %s unavailable (%s); retrying in %gs", redacted(self.backend.url),
                                exc, delay)
                    gevent.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
            conn = self.conn
            tick = max(0.05, min(1.0, (conn.heartbeat or HEARTBEAT) / 4))
            try:
                if not conn.transport._read_buffer:
                    try:
                        wait_read(conn.sock.fileno(), timeout=tick)
                    except socket.timeout:
                        pass
                with self.lock:
                    while True:
                        try:
                            conn.drain_events(timeout=0)
                        except socket.timeout:
                            break
                    conn.heartbeat_tick()
            except Exception as exc:
                if self.closed:
                    return
                log.warning("events broker %s: connection lost (%s); unacked events will be delivered again",
                            redacted(self.backend.url), exc or type(exc).__name__)
                with self.lock:
                    self._drop()

    def _on_message(self, sub: Subscription, acks: _Acks, message: amqp.Message) -> None:
        import gevent

        headers = message.properties.get("application_headers") or {}
        count = int(headers.get("x-delivery-count", 0)) + 1 if "x-delivery-count" in headers else (
            2 if message.delivery_info.get("redelivered") else 1)
        tag = message.delivery_tag
        try:
            event = Event.from_json(message.body, count)
        except (ValueError, TypeError) as exc:
            log.warning("dropping a message that is not an event on %s: %s", self.backend.queue(sub), exc)
            acks.channel.basic_ack(tag)
            return
        acks.delivered.append(tag)

        def ack() -> None:
            acks.done.add(tag)
            if not self.flushing:
                self.flushing = True
                gevent.spawn(self._flush_acks)

        gevent.spawn(self.deliver, sub, Delivery(event, ack=ack, raw=message))

    def _flush_acks(self) -> None:
        """Send the acks of every handler that finished in this turn of the loop: one `multiple` ack for the
        oldest deliveries done in a row, single acks for the others. Acks of an old connection are dropped."""
        with self.lock:
            self.flushing = False
            for acks in self.acks:
                if acks.done and acks.generation == self.generation and self.conn is not None:
                    try:
                        acks.flush()
                    except Exception:
                        pass  # the connection is gone: those events come again


class _Acks:
    """Deliveries of one channel (of one connection) in order, and those whose handler finished."""

    def __init__(self, channel, generation: int) -> None:
        from collections import deque

        self.channel = channel
        self.generation = generation
        self.delivered: deque[int] = deque()
        self.done: set[int] = set()

    def flush(self) -> None:
        last = None
        while self.delivered and self.delivered[0] in self.done:
            last = self.delivered.popleft()
            self.done.discard(last)
        if last is not None:
            self.channel.basic_ack(last, multiple=True)
        for tag in sorted(self.done):
            self.channel.basic_ack(tag)
            self.delivered.remove(tag)
        self.done.clear()
