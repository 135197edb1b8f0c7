"""A parsed request head, and the raw-handler extension point that answers requests without WSGI.

Every request the engine accepts becomes a `Request`: the head as received (method, target, header
lines as bytes) plus what the engine validated (framing, Host, version). A server with a raw handler
(`HTTPServer(..., raw_handler=h)`, or an app object with a `microkit_raw_handler` attribute) calls
`h(request)` first. The handler either returns None before it reads the body or sends anything, and
the request then goes to the WSGI app as usual; or it answers the request itself through
`request.send()` and returns the status it sent (for the access log; `request.status` should carry it
as soon as the head is out, so a failure later still logs it). A handler that answers must:

- frame its response itself (Content-Length, or chunked for HTTP/1.1), and send `Connection: close`
  and set `request.keep_alive = False` when `request.must_close()` says so, when its body is
  close-delimited, or when it stops before the end of a body it announced;
- read the body only through `request.input` (the engine discards what is left afterwards).

Errors behave as for WSGI apps: an HTTPError or exception before anything was sent is answered with
the canned response and the connection closes; after something was sent, the connection just closes.
The gateway's proxy path is such a handler (microkit/gateway/handler.py); it may also offer
`refused(status, message, request, method, target) -> bytes`, the whole response the engine sends
for a request it refuses itself (the gateway answers those with its JSON error and logs them).
"""

from __future__ import annotations

from collections.abc import Callable

from microkit.http.body import Input


class Request:
    """One request head: header names and values are bytes as received (values without surrounding
    whitespace, trailers excluded); names containing `_` are dropped, as they are from the environ."""

    __slots__ = (
        "method", "target", "version", "headers", "keys", "host", "connection", "content_length", "chunked",
        "input", "keep_alive", "peer", "base", "sent", "status", "upgrade", "_send", "_must_close",
    )

    def __init__(
        self, method: str, target: bytes, version: str, headers: list[tuple[bytes, bytes]], keys: list[str],
        special: dict[str, bytes], content_length: int | None, chunked: bool, inp: Input, keep_alive: bool,
        base: dict, send: Callable[[bytes], None], must_close: Callable[[], bool],
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keys = keys
        self.host: bytes | None = special.get("HTTP_HOST")
        self.connection: bytes | None = special.get("HTTP_CONNECTION")
        self.content_length = content_length
        self.chunked = chunked
        self.input = inp
        self.keep_alive = keep_alive
        self.base = base
        self.peer: str = base["REMOTE_ADDR"]
        self.sent = False
        self.status = 0
        self.upgrade: Callable[[], tuple] | None = None
        """Set for a request that asks to switch protocols (Connection: upgrade): calling it gives a raw
        handler (socket, bytes the client sent after the head) to tunnel; the connection then ends."""
        self._send = send
        self._must_close = must_close

    def send(self, data: bytes) -> None:
        """Send response bytes to the client (ClientDisconnected if it went away)."""
        self.sent = True
        self._send(data)

    def must_close(self) -> bool:
        """Whether the response must end the connection: the client asked, the server drains, or a body
        the client holds back (Expect: 100-continue) was never asked for."""
        return not self.keep_alive or self._must_close()


RawHandler = Callable[[Request], "int | None"]
