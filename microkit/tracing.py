"""W3C trace context (https://www.w3.org/TR/trace-context/) at the gateway, in workers and in microkit.client.

The gateway keeps a valid incoming `traceparent` (its trace id and flags) and forwards it with a new
parent id (the gateway's own span), passing `tracestate` on with it; an absent or invalid one starts a
new trace, and any `tracestate` that came with an invalid one is dropped, as the specification says.
Access lines carry the trace id.

In a worker, `traced(app)` keeps the current request's `traceparent` in a context variable (greenlet-
local under gevent), so `microkit.client.ServiceClient` calls made while handling it carry the trace on
with a new parent id of their own.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable
from random import getrandbits

_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
NEW_FLAGS = b"01"
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("microkit_traceparent", default=None)


def new_trace_id() -> bytes:
    return b"%032x" % (getrandbits(128) or 1)


def new_span_id() -> bytes:
    return b"%016x" % (getrandbits(64) or 1)


def parse(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(trace id, parent id, flags) of a valid traceparent, else None. Version ff is invalid; version 00
    has exactly four fields; a later version may carry more, which are ignored."""
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace, parent, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest) or trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, parent, flags


class TraceContext:
    """One request's trace as the gateway forwards it (a plain slotted class: one is made per request)."""

    __slots__ = ("trace_id", "span_id", "flags", "state", "parent")

    def __init__(self, trace_id: bytes, span_id: bytes, flags: bytes, state: bytes | None,
                 parent: bytes | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id  # the gateway's span: the parent id it forwards
        self.flags = flags
        self.state = state
        self.parent = parent  # the caller's span, for a trace that came in

    def header_lines(self) -> list[bytes]:
        """The traceparent (and tracestate) lines for the upstream request, each ending in CRLF."""
        line = b"traceparent: 00-" + self.trace_id + b"-" + self.span_id + b"-" + self.flags + b"\r\n"
        if self.state:
            return [line, b"tracestate: " + self.state + b"\r\n"]
        return [line]


def from_headers(keys: list[str], headers: list[tuple[bytes, bytes]]) -> TraceContext:
    """The trace context of a request head given as environ keys and raw header lines."""
    if "HTTP_TRACEPARENT" not in keys:
        return TraceContext(b"%032x" % (getrandbits(128) or 1), b"%016x" % (getrandbits(64) or 1), NEW_FLAGS,
                            None, None)
    parent: list[bytes] = []
    state: list[bytes] = []
    for key, (_, value) in zip(keys, headers):
        if key == "HTTP_TRACEPARENT":
            parent.append(value)
        elif key == "HTTP_TRACESTATE":
            state.append(value)
    parsed = parse(parent[0]) if len(parent) == 1 else None
    if parsed is None:
        return TraceContext(new_trace_id(), new_span_id(), NEW_FLAGS, None, None)
    joined = b",".join(item.strip() for item in state if item.strip()) or None
    return TraceContext(parsed[0], new_span_id(), parsed[2], joined, parsed[1])


def traced(app: Callable) -> Callable:
    """`app` with each request's traceparent kept for `outgoing()` while the app runs; the engine's
    raw-handler and limits attributes are kept."""

    def application(environ: dict, start_response: Callable):
        token = _current.set(environ.get("HTTP_TRACEPARENT"))
        try:
            return app(environ, start_response)
        finally:
            _current.reset(token)

    for name in ("microkit_raw_handler", "microkit_limits"):
        if hasattr(app, name):
            setattr(application, name, getattr(app, name))
    return application


def current() -> str | None:
    """The traceparent of the request (or event, in a consumer) this greenlet handles, if any."""
    return _current.get()


def handling(traceparent: str | None):
    """Make `traceparent` the current trace (an event's, while its handler runs); returns the token for
    `restore`."""
    return _current.set(traceparent)


def restore(token) -> None:
    _current.reset(token)


def outgoing(current: str | None = None) -> str:
    """The traceparent for a call made now: the current request's trace with a new parent id, or a new trace."""
    value = current if current is not None else _current.get()
    parsed = parse(value.encode("latin-1")) if value else None
    if parsed is None:
        return "00-%s-%s-%s" % (new_trace_id().decode(), new_span_id().decode(), NEW_FLAGS.decode())
    return "00-%s-%s-%s" % (parsed[0].decode(), new_span_id().decode(), parsed[2].decode())
