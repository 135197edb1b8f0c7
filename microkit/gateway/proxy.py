"""Forwarding one request to an instance of a service, and its response back, streaming both ways.

The method, path, query, headers and body go through unchanged, except: hop-by-hop headers are
removed both ways; X-Forwarded-For/-Proto/-Host are set from the socket peer (a trusted proxy's values
are extended instead of replaced); X-Request-ID is kept or generated, and returned; X-Auth-* headers a
client sent are dropped on every route, since only the gateway's auth may tell services who is calling.

Retries follow what is safe: a failed connect (nothing sent) is retried on another instance for any
method; GET, HEAD, OPTIONS, PUT and DELETE are retried once more after a reset that came before the
response started; a POST is never replayed once its bytes went out.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from itertools import count
from typing import Iterable, Iterator

import gevent

from microkit.gateway.balancer import Balancer, Upstream
from microkit.gateway.routing import BadPath, normalize, split_target
from microkit.gateway.upstream import BrokenResponse, ConnectFailed, NoResponse, Pool, Response
from microkit.http import Request
from microkit.http.wsgi import environ_key

HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
SET_BY_GATEWAY = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id",
                            "forwarded", "x-real-ip"})  # the last two: other spellings of the client's address
# The same two sets as environ keys, which the engine computed (cached) for every request header.
_DROP_KEYS = frozenset("HTTP_" + name.upper().replace("-", "_") for name in HOP_BY_HOP | SET_BY_GATEWAY)
_DROP_PREFIXES = ("HTTP_PROXY_", "HTTP_X_AUTH_")  # Proxy-*, and the identity headers only the gateway sets
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
REPLAY_BUFFER = 64 * 1024
READ_SIZE = 64 * 1024
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,200}$")
_LOWER: dict[bytes, bytes] = {}


class _RequestIds:
    """Unique request ids, 32 hex digits: a random per-process prefix and a counter (uuid4 costs a
    syscall per id); a forked child draws a new prefix."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = count(int.from_bytes(os.urandom(4), "big"))

    def new(self) -> str:
        return "%s%016x" % (self.prefix, next(self.counter))


new_request_id = _RequestIds().new


def _sane_id(given: list[bytes]) -> bytes:
    """The client's one X-Request-ID if it is sane, else a new id."""
    return given[0] if len(given) == 1 and _REQUEST_ID.match(given[0]) else new_request_id().encode()


def request_id_of(request: Request) -> bytes:
    """The request id of a raw request: its sane X-Request-ID, else a new one."""
    return _sane_id([value for key, (_, value) in zip(request.keys, request.headers) if key == "HTTP_X_REQUEST_ID"])


class ProxyError(Exception):
    """A request the gateway answers itself: status, message, and extra headers."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class _BodyTooLarge(Exception):
    pass


class TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed: addresses or networks from config."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]

    def __contains__(self, peer: str) -> bool:
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


_FORWARDED = frozenset({"HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST"})


def _connection_keys(value: bytes | None) -> frozenset[str]:
    """Environ keys of the headers a Connection header names (they are hop-by-hop too); never the
    body framing, which a client could otherwise strip from the request the instance receives."""
    if not value:
        return frozenset()
    keys = {environ_key(token.strip()) for token in value.split(b",") if token.strip()}
    return frozenset(keys - {None, "CONTENT_LENGTH", "CONTENT_TYPE"})


def lower_name(name: bytes) -> bytes:
    """A header name in lower case, cached (response header names repeat)."""
    lower = _LOWER.get(name)
    if lower is None:
        lower = name.lower()
        if len(_LOWER) < 1024:
            _LOWER[name] = lower
    return lower


def response_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Lower-case names listed by a response's Connection headers."""
    return {token.strip().lower() for name, value in headers if lower_name(name) == b"connection"
            for token in value.split(b",")}


# Response header names the gateway never passes on (lower case): hop-by-hop ones, and X-Request-Id (it sets its own).
RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP) | {b"x-request-id"}


@dataclass(frozen=True)
class Outcome:
    """What the gateway sends the client for a proxied request."""

    status: str
    headers: list[tuple[str, str]]
    body: Iterable[bytes]
    upstream: str


class Proxy:
    """Sends requests to instances picked by a Balancer, over pooled connections."""

    def __init__(self, pool: Pool, *, trusted: TrustedProxies | None = None, max_body: int = 10 * 1024 * 1024) -> None:
        self.pool = pool
        self.trusted = trusted or TrustedProxies()
        self.max_body = max_body

    def request_id(self, environ: dict) -> str:
        """The client's X-Request-ID if it is sane, else a new one; stored in the environ for logs."""
        rid = environ.get("microkit.request_id")
        if rid is None:
            given = environ.get("HTTP_X_REQUEST_ID", "")
            rid = given if _REQUEST_ID.match(given.encode("latin-1")) else new_request_id()
            environ["microkit.request_id"] = rid
        return rid

    def forward(self, environ: dict, service: str, balancer: Balancer, timeout: float,
                extra: Iterable[bytes] = ()) -> Outcome:
        """Proxy one request (with `extra` header lines); raises ProxyError for answers the gateway makes
        itself (400/413/502/503/504)."""
        request: Request = environ["microkit.request"]
        raw = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        path, query = split_target(raw.encode("latin-1"))
        try:
            target = normalize(path) + query
        except BadPath as exc:
            raise ProxyError(400, str(exc)) from None
        head, rid = self.request_head(request, target, self.request_id(environ).encode("latin-1"), extra=extra)
        response, upstream = self.open(request, head, service, balancer, timeout)
        return self._outcome(response, upstream, rid.decode("latin-1"), timeout)

    def open(self, request: Request, head: bytes, service: str, balancer: Balancer,
             timeout: float) -> tuple[Response, Upstream]:
        """Send the request to an instance (retrying where safe) and read the response head; the caller
        streams the body and must `finish(response, upstream)`. Raises ProxyError (413/502/503/504)."""
        method = request.method
        body, chunked, replayable = self._request_body(request)
        deadline = time.monotonic() + timeout
        tried: list[Upstream] = []
        last_error: Exception | None = None
        retried_after_send = False
        while True:
            upstream = balancer.pick(exclude=tried)
            if upstream is None:
                if isinstance(last_error, (NoResponse, BrokenResponse)):
                    raise ProxyError(502, f"{service}: {last_error}")
                raise ProxyError(503, f"no healthy instance of {service}", (("Retry-After", "1"),))
            tried.append(upstream)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProxyError(504, f"{service} did not answer within {timeout:g} s")
            upstream.outstanding += 1
            try:
                response = self._exchange(upstream, head, body, chunked, method, remaining, replayable)
            except BaseException as exc:  # whatever ends the attempt (client gone too): not in flight any more
                upstream.outstanding -= 1
                if isinstance(exc, gevent.Timeout):
                    raise ProxyError(504, f"{service} did not answer within {timeout:g} s") from None
                if isinstance(exc, _BodyTooLarge):
                    raise ProxyError(413, f"request body larger than {self.max_body} bytes") from None
                if not isinstance(exc, (ConnectFailed, NoResponse, BrokenResponse)):
                    raise
                balancer.failed(upstream)
                last_error = exc
                if isinstance(exc, ConnectFailed):
                    continue
                if isinstance(exc, NoResponse) and method in IDEMPOTENT and replayable and not retried_after_send:
                    retried_after_send = True
                    continue
                raise ProxyError(502, f"{service}: {exc}") from None
            if response.status >= 500:
                balancer.failed(upstream)
            else:
                balancer.succeeded(upstream)
            return response, upstream

    def _exchange(self, upstream: Upstream, head: bytes, body, chunked: bool, method: str,
                  remaining: float, replayable: bool) -> Response:
        """Send and read the response head within `remaining` seconds; a stale pooled connection is
        replaced by a fresh one when nothing can have been processed (or the request may be replayed)."""
        with gevent.Timeout(remaining):
            conn, reused = self.pool.acquire(upstream.address)
            try:
                conn.send(head, body, chunked)
                return Response(conn, self.pool, head_only=method == "HEAD")
            except NoResponse:
                conn.close()
                if not (reused and replayable and method in IDEMPOTENT):
                    raise
            except BaseException:
                conn.close()
                raise
            conn = self.pool.connect(upstream.address)
            try:
                conn.send(head, body, chunked)
                return Response(conn, self.pool, head_only=method == "HEAD")
            except BaseException:
                conn.close()
                raise

    def request_head(self, request: Request, target: bytes, rid: bytes | None = None,
                     drop: frozenset[str] = frozenset(), extra: Iterable[bytes] = ()) -> tuple[bytes, bytes]:
        """(the upstream request head, the request id): the client's header lines as received, minus
        hop-by-hop ones (and the environ keys in `drop`), plus X-Forwarded-* and X-Request-Id, and any
        `extra` lines (each ending in CRLF). `rid` None keeps a sane client X-Request-ID or makes one."""
        named = _connection_keys(request.connection)
        drop = _DROP_KEYS | named | drop if named or drop else _DROP_KEYS
        parts = [request.method.encode("latin-1"), b" ", target, b" HTTP/1.1\r\n"]
        given: list[bytes] = []
        forwarded: dict[str, bytes] = {}
        for key, (name, value) in zip(request.keys, request.headers):
            if key in drop or key.startswith(_DROP_PREFIXES):
                if key in _FORWARDED:
                    forwarded[key] = value if key not in forwarded else forwarded[key] + b", " + value
                elif key == "HTTP_X_REQUEST_ID":
                    given.append(value)
                continue
            parts += (name, b": ", value, b"\r\n")
        if rid is None:
            rid = _sane_id(given)
        peer = request.peer.encode("latin-1")
        if forwarded and request.peer in self.trusted:
            chain = forwarded.get("HTTP_X_FORWARDED_FOR")
            for_ = chain + b", " + peer if chain else peer
            proto = forwarded.get("HTTP_X_FORWARDED_PROTO")
            host = forwarded.get("HTTP_X_FORWARDED_HOST")
        else:
            for_, proto, host = peer, None, None
        base = request.base
        parts += (
            b"X-Forwarded-For: ", for_,
            b"\r\nX-Forwarded-Proto: ", proto or base["wsgi.url_scheme"].encode("latin-1"),
            b"\r\nX-Forwarded-Host: ", host or request.host or base["SERVER_NAME"].encode("latin-1"),
            b"\r\nX-Request-Id: ", rid, b"\r\n",
        )
        parts += extra
        if request.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), rid

    def _request_body(self, request: Request) -> tuple[bytes | Iterator[bytes] | None, bool, bool]:
        """(body, chunked, replayable): small bodies are read whole so that a retry can resend them."""
        stream = request.input
        size = request.content_length
        if size:
            if size > self.max_body:
                raise ProxyError(413, f"request body larger than {self.max_body} bytes")
            if size <= REPLAY_BUFFER:
                return stream.read(size), False, True
            return self._stream(stream, size), False, False
        if request.chunked:
            return self._stream(stream, None), True, False
        return None, False, True

    def _stream(self, stream, size: int | None) -> Iterator[bytes]:
        """The request body in pieces, refusing more than max_body bytes."""
        total = 0
        while size is None or total < size:
            chunk = stream.read(READ_SIZE if size is None else min(READ_SIZE, size - total))
            if not chunk:
                break
            total += len(chunk)
            if total > self.max_body:
                raise _BodyTooLarge()
            yield chunk

    def _outcome(self, response: Response, upstream: Upstream, rid: str, timeout: float) -> Outcome:
        named = response_named(response.headers)
        headers = []
        for name, value in response.headers:
            lower = lower_name(name)
            if lower in RESPONSE_DROP or lower.startswith(b"proxy-") or lower in named:
                continue
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        headers.append(("X-Request-Id", rid))
        reason = response.reason.decode("latin-1").strip() or phrase(response.status)
        return Outcome(f"{response.status} {reason}", headers, _Body(response, upstream, timeout),
                       "%s:%d" % upstream.address)


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Body:
    """The response body as a WSGI iterable: counts the request as outstanding until it is done."""

    __slots__ = ("response", "upstream", "timeout", "finished")

    def __init__(self, response: Response, upstream: Upstream, timeout: float) -> None:
        self.response = response
        self.upstream = upstream
        self.timeout = timeout
        self.finished = False

    def __iter__(self) -> Iterator[bytes]:
        chunks = self.response.body()
        try:
            while True:
                with gevent.Timeout(self.timeout, BrokenResponse("no body bytes within the route's timeout")):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Done or abandoned (the client went away): the connection is pooled only if the body was complete."""
        if not self.finished:
            self.finished = True
            self.upstream.outstanding -= 1
            self.response.release()
