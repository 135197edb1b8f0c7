"""The contract every events backend keeps, and what a consumer hands a handler.

A backend publishes (returning only once the store has the event: a publisher confirm on AMQP, XADD on
Redis, a commit in SQLite), runs subscriptions (a delivery is acked only after its handler returned),
moves failed events to dead letters and back (replay), and remembers handled ids for `events.once`.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from microkit.events.envelope import Event
from microkit.storage import StoreUnavailable

MODES = ("pool", "broadcast", "singleton")


class EventsUnavailable(StoreUnavailable):
    """The events store or broker could not take or give events within the bounded wait."""


@dataclass(frozen=True)
class Subscription:
    """One handler's place in the store: the group it reads in (a queue on AMQP, a consumer group on Redis).

    pool: one group per service, so each event reaches one consumer of the service; broadcast: one group
    per consumer (stable across restarts: host and slot), so each running consumer gets every event;
    singleton: one group per `group` name with a single active reader, across every service naming it.
    """

    service: str
    type: str
    mode: str = "pool"
    group: str = ""
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}.1")
    retries: int = 3
    retry_delay: float = 1.0

    @property
    def group_name(self) -> str:
        if self.mode == "singleton":
            return f"singleton.{self.group or self.service}"
        if self.mode == "broadcast":
            return f"{self.service}.{self.consumer}"
        return self.service

    @property
    def member(self) -> str:
        """This consumer's name within its group (and as a singleton lease holder): unique per process slot."""
        return f"{self.service}.{self.consumer}"

    @property
    def max_deliveries(self) -> int:
        """Deliveries after which an event that was never acked goes to the dead letters unrun (its handler
        crashed the process that often); at least 2, so one crash is always followed by a redelivery."""
        return max(self.retries + 1, 2)


@dataclass
class Delivery:
    """An event handed to a consumer; `ack()` once its handler returned (or it went to the dead letters)."""

    event: Event
    ack: Callable[[], None]
    raw: Any = None


@dataclass(frozen=True)
class DeadLetter:
    event: Event
    service: str
    group: str
    error: str
    dead_at: float

    def to_dict(self) -> dict:
        return {"id": self.event.id, "type": self.event.type, "service": self.service, "group": self.group,
                "error": self.error, "dead_at": self.dead_at, "source": self.event.source,
                "payload": self.event.payload}


class Runner(ABC):
    """The running side of subscriptions in one consumer process."""

    @abstractmethod
    def stop_reading(self) -> None:
        """Take no new deliveries (in-flight ones may still be acked)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class Backend(ABC):
    """One process's connection to the events store (made lazily, again after a fork)."""

    def __init__(self, url: str, namespace: str, *, publish_timeout: float = 5.0, prefetch: int = 10,
                 claim_after: float = 30.0) -> None:
        self.url = url
        self.namespace = namespace
        self.publish_timeout = publish_timeout
        self.prefetch = prefetch
        self.claim_after = claim_after

    @abstractmethod
    def publish(self, event: Event) -> None:
        """Store the event for every subscribed group; returns once the store has it."""

    @abstractmethod
    def run(self, subscriptions: list[Subscription], deliver: Callable[[Subscription, Delivery], None]) -> Runner:
        """Start reading (greenlets); `deliver` is called in a greenlet of its own for each delivery."""

    @abstractmethod
    def dead_letter(self, subscription: Subscription, delivery: Delivery, error: str) -> None:
        """Store the event in the dead letters with its error, then ack it."""

    @abstractmethod
    def dead(self, service: str | None = None) -> list[DeadLetter]:
        """The dead letters (of one service), oldest first."""

    @abstractmethod
    def replay(self, event_id: str | None) -> int:
        """Send dead letters (one by event id, or all for None) back to the group they died in; how many."""

    @abstractmethod
    def tail(self, types: list[str], on_event: Callable[[Event], None], stop: Callable[[], bool],
             ready: Callable[[], None] = lambda: None) -> None:
        """Call `on_event` for each event published from now on (of `types`, or all), until `stop()`;
        `ready()` once "from now on" is fixed (the stream ends read, the queue bound): an event published
        after it is shown, however soon."""

    def lag(self, pools: list[tuple[str, str]] = ()) -> dict[tuple[str, str], tuple[int | None, int | None]]:
        """(group, type) -> (events waiting for the group, delivered and not acked), where cheap to tell
        (None: cannot tell); `pools` are the (service, type) of the pool handlers known to run."""
        return {}

    def close(self) -> None:
        """Release this process's connections."""
