"""What travels: an event is its envelope (id, type, source service, time, request id, trace context)
around a JSON payload. The same JSON bytes go over AMQP, into Redis Streams and into SQLite."""

from __future__ import annotations

import json
import re
import time
import os
from dataclasses import dataclass, field
from typing import Any

from microkit.errors import UsageError

TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class Event:
    """One event. `delivery` is how many times it has been handed to this group (1 the first time);
    it is not part of the envelope."""

    type: str
    payload: Any
    source: str = ""
    id: str = field(default_factory=lambda: os.urandom(16).hex())
    time: float = field(default_factory=time.time)
    request_id: str | None = None
    traceparent: str | None = None
    delivery: int = 1

    def to_json(self) -> bytes:
        """The envelope as JSON bytes, made once per event (publish checks it, the backend sends it)."""
        body = self.__dict__.get("_body")
        if body is None:
            body = json.dumps({"type": self.type, "payload": self.payload, "source": self.source, "id": self.id,
                               "time": self.time, "request_id": self.request_id, "traceparent": self.traceparent},
                              separators=(",", ":")).encode()
            object.__setattr__(self, "_body", body)
        return body

    @classmethod
    def from_json(cls, data: bytes | str, delivery: int = 1) -> Event:
        fields = json.loads(data)
        return cls(**{k: fields.get(k) for k in ("type", "payload", "source", "id", "time", "request_id",
                                                 "traceparent")}, delivery=delivery)



def check_type(event_type: Any) -> str:
    """An event type is a dotted name such as "payments.completed" (letters, digits, _ . -)."""
    if not isinstance(event_type, str) or not TYPE_PATTERN.match(event_type):
        raise UsageError(f"bad event type {event_type!r}: expected a dotted name such as \"payments.completed\" "
                         f"(letters, digits, _ . -)")
    return event_type


def make(event_type: str, payload: Any, *, source: str, request_id: str | None = None,
         traceparent: str | None = None) -> Event:
    """A new event, with its payload checked to be JSON now rather than at a consumer."""
    check_type(event_type)
    event = Event(type=event_type, payload=payload, source=source, request_id=request_id, traceparent=traceparent)
    try:
        event.to_json()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"event {event_type}: the payload is not JSON-serializable: {exc}") from None
    return event
