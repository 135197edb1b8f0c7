"""What the gateway itself writes: its error answers (one JSON shape for every refusal, whoever made
it: the engine, a check, the relay) and its access lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus

from microkit.gateway.security import redact_target
from microkit.http.wsgi import _date_bytes

AccessLog = Callable[[str], None]
_ERROR_HEAD = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               b"X-Request-Id: %s\r\n%s%s\r\n")


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_body(status: int, message: str, rid: str) -> bytes:
    """The gateway's JSON error body."""
    return json.dumps({"error": message, "status": status, "request_id": rid}).encode()


def error_response(status: int, message: str, rid: bytes, extra: Iterable[bytes] = (), close: bool = False) -> bytes:
    """A whole error response: the JSON body, X-Request-Id, the `extra` header lines (CRLF-ended)."""
    body = error_body(status, message, rid.decode("latin-1"))
    more = b"".join(extra) + (b"Connection: close\r\n" if close else b"")
    return _ERROR_HEAD % (status, phrase(status).encode(), len(body), rid, more, _date_bytes()) + body


def empty_response(status: int, rid: bytes, extra: Iterable[bytes] = (), close: bool = False) -> bytes:
    """A bodyless answer the gateway makes itself (a CORS preflight)."""
    return b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nX-Request-Id: %s\r\n%s%s%s\r\n" % (
        status, phrase(status).encode(), rid, b"".join(extra), b"Connection: close\r\n" if close else b"",
        _date_bytes())


def access_line(method: str, target: str, status: int, started: float, upstream: str, rid: str,
                trace: str = "") -> str:
    """One access line: the target redacted, the time since `started` (time.monotonic()), and the
    W3C trace id when there is one."""
    return (f"{method} {redact_target(target)} {status} {(time.monotonic() - started) * 1000:.1f}ms "
            f"-> {upstream} id={rid}" + (f" trace={trace}" if trace else ""))
