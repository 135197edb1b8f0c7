"""Backends over an append-only log with consumer groups: Redis Streams and the embedded SQLite store.

Both keep the same model (Redis Streams'): a stream per event type, a consumer group per subscription
group, entries pending with the consumer that read them until acked. A consumer process reads its own
pending entries first (a restart after kill -9 takes them back at once), then new ones, never more than
`prefetch` unacked at a time; a claimer greenlet refreshes the idle time of what is in flight (so a slow
handler is never taken over) and claims entries of dead consumers that have been idle for `claim_after`
(XAUTOCLAIM). Each group also reads `replay:{group}`, where `replay` puts dead letters back for that group
alone. The delivery count decides when an entry that keeps killing its consumer goes to the dead letters.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from microkit.events.backends.base import (
    Backend, DeadLetter, Delivery, EventsUnavailable, Runner, Subscription,
)
from microkit.events.envelope import Event
from microkit.storage import PerProcess, StoreUnavailable, redacted

log = logging.getLogger("microkit.events")

READ_BLOCK = 1.0
RETRY_MIN, RETRY_MAX = 0.2, 5.0
LEASE_TTL = 5.0


@dataclass
class Entry:
    stream: str
    entry_id: str
    body: bytes | None
    deliveries: int = 1


def type_stream(event_type: str) -> str:
    return f"events:{event_type}"


def replay_stream(group: str) -> str:
    return f"replay:{group}"


class LogStore(ABC):
    """The operations a log backend needs; every method raises StoreUnavailable when the store cannot serve."""

    @abstractmethod
    def add(self, stream: str, body: bytes) -> None: ...

    @abstractmethod
    def ensure_group(self, group: str, streams: list[str]) -> None:
        """Create the group on each stream if missing, starting at the stream's end (replay streams: start)."""

    @abstractmethod
    def read(self, group: str, consumer: str, streams: list[str], count: int, block: float, *,
             own: bool = False) -> list[Entry]:
        """New entries for this consumer (own=True: its own pending ones, with their delivery counts)."""

    @abstractmethod
    def claim(self, group: str, consumer: str, streams: list[str], min_idle: float, count: int) -> list[Entry]:
        """Take over entries of other consumers idle for `min_idle` seconds, with their delivery counts."""

    @abstractmethod
    def touch(self, group: str, consumer: str, entries: list[Entry]) -> None:
        """Reset the idle time of entries this consumer still works on."""

    @abstractmethod
    def ack(self, group: str, entries: list[Entry]) -> None:
        """Ack entries (of any of the group's streams) in one round trip."""

    @abstractmethod
    def add_dead(self, letter: DeadLetter, stream: str) -> None: ...

    @abstractmethod
    def dead(self) -> list[tuple[str, DeadLetter]]:
        """(dead letter id, letter), oldest first."""

    @abstractmethod
    def remove_dead(self, dead_id: str) -> None: ...

    def lag(self) -> list[tuple[str, str, int | None, int]]:
        """(group, stream, waiting, pending) of each group, as cheaply as the store can tell."""
        return []

    @abstractmethod
    def lease(self, name: str, holder: str, ttl: float) -> bool:
        """Hold (or extend) the lease `name` for `ttl` seconds; False while someone else holds it."""

    @abstractmethod
    def tail(self, streams: list[str] | None, after: dict[str, str], block: float) -> list[Entry]:
        """Entries added after `after` (stream -> last id seen, updated), of `streams` or all streams."""

    @abstractmethod
    def seen(self, key: str) -> bool:
        """Whether `events.once` marked `key` (and the mark has not expired)."""

    @abstractmethod
    def mark(self, key: str, ttl: float) -> None:
        """Mark `key` for `ttl` seconds."""

    def close(self) -> None: ...


class LogBackend(Backend):
    """Publish, consume, dead letters and replay over a LogStore."""

    def __init__(self, url: str, namespace: str, **options) -> None:
        super().__init__(url, namespace, **options)
        self._store: PerProcess[LogStore] = PerProcess(self.make_store)

    @abstractmethod
    def make_store(self) -> LogStore:
        """A store for this process (made on first use, and again after a fork)."""

    def store(self) -> LogStore:
        return self._store.get()

    def once_seen(self, key: str) -> bool:
        return self.store().seen(key)

    def once_mark(self, key: str, ttl: float) -> None:
        self.store().mark(key, ttl)

    def close(self) -> None:
        store = self._store.drop()
        if store is not None:
            store.close()

    def publish(self, event: Event) -> None:
        """Add to the type's stream; while the store is down, retry until `publish_timeout`, then raise."""
        body = event.to_json()
        deadline = time.monotonic() + self.publish_timeout
        delay = 0.05
        while True:
            try:
                self.store().add(type_stream(event.type), body)
                return
            except StoreUnavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EventsUnavailable(f"cannot publish {event.type}: events store {redacted(self.url)} "
                                            f"unavailable for {self.publish_timeout:g}s: {_cause(exc)}") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.5)

    def run(self, subscriptions: list[Subscription], deliver: Callable[[Subscription, Delivery], None]) -> Runner:
        runner = _LogRunner(self, subscriptions, deliver)
        runner.start()
        return runner

    def lag(self, pools: list[tuple[str, str]] = ()) -> dict[tuple[str, str], tuple[int | None, int | None]]:
        """(group, type) -> (events not delivered to the group yet, delivered and not acked)."""
        found: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        for group, stream, waiting, pending in self.store().lag():
            if stream.startswith("events:"):
                found[(group, stream[len("events:"):])] = (waiting, pending)
        return found

    def dead_letter(self, subscription: Subscription, delivery: Delivery, error: str) -> None:
        entry: Entry = delivery.raw
        letter = DeadLetter(delivery.event, subscription.service, subscription.group_name, error, time.time())
        self.store().add_dead(letter, entry.stream)
        delivery.ack()

    def dead(self, service: str | None = None) -> list[DeadLetter]:
        return [letter for _, letter in self.store().dead() if service is None or letter.service == service]

    def replay(self, event_id: str | None) -> int:
        count = 0
        store = self.store()
        for dead_id, letter in store.dead():
            if event_id is None or letter.event.id == event_id:
                store.add(replay_stream(letter.group), letter.event.to_json())
                store.remove_dead(dead_id)
                count += 1
        return count

    def tail(self, types: list[str], on_event: Callable[[Event], None], stop: Callable[[], bool],
             ready: Callable[[], None] = lambda: None) -> None:
        streams = [type_stream(t) for t in types] or None
        after: dict[str, str] = {}
        self.store().tail(streams, after, 0)  # positions at the current ends
        ready()
        while not stop():
            for entry in self.store().tail(streams, after, READ_BLOCK):
                if entry.body is not None:
                    on_event(Event.from_json(entry.body))


def _cause(exc: BaseException) -> str:
    text = str(exc)
    return text.split(" unavailable: ", 1)[-1]


class _LogRunner(Runner):
    """Reader and claimer greenlets for each subscription of one consumer process."""

    def __init__(self, backend: LogBackend, subscriptions: list[Subscription],
                 deliver: Callable[[Subscription, Delivery], None]) -> None:
        self.backend = backend
        self.subscriptions = subscriptions
        self.deliver = deliver
        self.reading = True
        self.greenlets: list = []

    def start(self) -> None:
        """Create every group before reading, so what is published once the consumer is ready reaches it (a
        store that is down now does not fail the boot: the read loops keep trying)."""
        import gevent

        try:
            store = self.backend.store()
            for sub in self.subscriptions:
                store.ensure_group(sub.group_name, _SubState.streams_of(sub))
            down = False
        except StoreUnavailable as exc:  # the read loops create the groups once the store is back
            log.warning("events store unavailable (%s); subscribing once it is back", _cause(exc))
            down = True
        for sub in self.subscriptions:
            state = _SubState(sub)
            state.failing = down
            self.greenlets.append(gevent.spawn(self._read_loop, state))
            self.greenlets.append(gevent.spawn(self._claim_loop, state))

    def stop_reading(self) -> None:
        self.reading = False

    def close(self) -> None:
        import gevent

        self.reading = False
        gevent.killall(self.greenlets, block=True, timeout=2)

    def _read_loop(self, state: _SubState) -> None:
        import gevent

        sub, backend = state.sub, self.backend
        delay = RETRY_MIN
        ready = False
        while self.reading:
            try:
                store = backend.store()
                if not ready:
                    store.ensure_group(sub.group_name, state.streams)
                    self._dispatch_all(state, store.read(sub.group_name, sub.member, state.streams, 10_000, 0,
                                                         own=True))
                    ready = True
                    if state.failing:
                        log.warning("events store %s is back", redacted(backend.url))
                        state.failing = False
                if sub.mode == "singleton" and not self._hold_lease(state, store):
                    gevent.sleep(LEASE_TTL / 5)
                    continue
                free = backend.prefetch - len(state.inflight)
                if free < max(1, backend.prefetch // 2):  # read in batches: half the window free, at least one
                    state.room.clear()
                    state.room.wait(READ_BLOCK)
                    continue
                self._dispatch_all(state, store.read(sub.group_name, sub.member, state.streams, free, READ_BLOCK))
                delay = RETRY_MIN
            except StoreUnavailable as exc:
                if not state.failing:
                    log.warning("events store unavailable (%s); retrying", _cause(exc))
                    state.failing = True
                ready = False
                gevent.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _hold_lease(self, state: _SubState, store: LogStore) -> bool:
        now = time.monotonic()
        if now >= state.lease_check:
            state.leader = store.lease(f"{state.sub.group_name}:{state.sub.type}", state.sub.member, LEASE_TTL)
            state.lease_check = now + LEASE_TTL / 3
        return state.leader

    def _claim_loop(self, state: _SubState) -> None:
        import gevent

        sub, backend = state.sub, self.backend
        interval = max(0.05, min(backend.claim_after / 3, 5.0))
        while self.reading:
            gevent.sleep(interval)
            try:
                store = backend.store()
                if state.inflight:
                    store.touch(sub.group_name, sub.member, list(state.inflight.values()))
                if sub.mode == "singleton" and not state.leader:
                    continue
                free = backend.prefetch - len(state.inflight)
                if free > 0:
                    self._dispatch_all(state, store.claim(sub.group_name, sub.member, state.streams,
                                                          backend.claim_after, free))
            except StoreUnavailable:
                continue

    def _dispatch_all(self, state: _SubState, entries: list[Entry]) -> None:
        import gevent

        for entry in entries:
            key = (entry.stream, entry.entry_id)
            if key in state.inflight:
                continue
            if entry.body is None:
                self._ack(state, entry)
                continue
            state.inflight[key] = entry
            event = Event.from_json(entry.body, entry.deliveries)
            delivery = Delivery(event, ack=lambda entry=entry: self._ack(state, entry), raw=entry)
            gevent.spawn(self._run_one, state, delivery)

    def _run_one(self, state: _SubState, delivery: Delivery) -> None:
        try:
            self.deliver(state.sub, delivery)
        finally:
            state.inflight.pop((delivery.raw.stream, delivery.raw.entry_id), None)
            if len(state.inflight) <= self.backend.prefetch - max(1, self.backend.prefetch // 2):
                state.room.set()

    def _ack(self, state: _SubState, entry: Entry) -> None:
        """Queue the ack; the acks of every handler that finished in this turn of the loop go in one round trip."""
        import gevent

        state.acks.append(entry)
        if not state.acking:
            state.acking = True
            gevent.spawn(self._flush_acks, state)

    def _flush_acks(self, state: _SubState) -> None:
        """Send queued acks, retrying through a short outage; an ack that never lands means a redelivery."""
        import gevent

        try:
            while state.acks:
                batch, state.acks = state.acks, []
                for attempt in range(20):
                    try:
                        self.backend.store().ack(state.sub.group_name, batch)
                        break
                    except StoreUnavailable:
                        gevent.sleep(min(0.1 * 2 ** attempt, 2.0))
        finally:
            state.acking = False


class _SubState:
    def __init__(self, sub: Subscription) -> None:
        from gevent.event import Event as Flag

        self.sub = sub
        self.streams = self.streams_of(sub)
        self.inflight: dict[tuple[str, str], Entry] = {}
        self.acks: list[Entry] = []
        self.acking = False
        self.room = Flag()
        self.failing = False
        self.leader = False
        self.lease_check = 0.0

    @staticmethod
    def streams_of(sub: Subscription) -> list[str]:
        return [type_stream(sub.type), replay_stream(sub.group_name)]
