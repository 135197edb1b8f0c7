"""Events backends, chosen by URL scheme (see `connect`)."""

from __future__ import annotations

from collections.abc import Callable

from microkit.events.backends.base import Backend, DeadLetter, Delivery, EventsUnavailable, Runner, Subscription
from microkit.storage import backend_for

__all__ = ["Backend", "DeadLetter", "Delivery", "EventsUnavailable", "Runner", "Subscription", "connect", "schemes"]


def _amqp(url: str, **options) -> Backend:
    from microkit.events.backends.amqp import AmqpBackend

    return AmqpBackend(url, **options)


def _redis(url: str, **options) -> Backend:
    from microkit.events.backends.streams import RedisStreamsBackend

    return RedisStreamsBackend(url, **options)


def _sqlite(url: str, **options) -> Backend:
    from microkit.events.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(url, **options)


schemes: dict[str, Callable[..., Backend]] = {"amqp": _amqp, "amqps": _amqp, "redis": _redis, "rediss": _redis,
                                              "redis+sentinel": _redis,
                                              "sqlite": _sqlite}


def connect(url: str, namespace: str, **options) -> Backend:
    """The backend for `url` under `namespace`; nothing connects yet."""
    return backend_for(url, schemes, what="events", default="no [events] url for the embedded store")(
        url, namespace=namespace, **options)
