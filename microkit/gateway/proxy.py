"""Forwarding one request to an instance of a service, and relaying its response as it arrives.

The method, path, query, headers and body go through unchanged, except: hop-by-hop headers are
removed both ways; X-Forwarded-For/-Proto/-Host are set from the socket peer (a trusted proxy's values
are extended instead of replaced); X-Request-ID is kept or generated, and returned; X-Auth-* headers a
client sent are dropped on every route, since only the gateway's auth may tell services who is calling;
a Host is always sent (an HTTP/1.0 client may have sent none). A request body is read whole before an
instance is picked (microkit/gateway/spool.py, as nginx's proxy_request_buffering) and sent with
Content-Length, unless its service streams uploads (`request_buffering = false`).

Resends follow what is safe. A failed connect (nothing was sent) is tried on another instance, for
any method. Once a request's bytes went out, it is sent again at most once, and only when the failure
looks like a stale pooled connection: the connection had been idle in the pool and nothing was read
from it; the method is idempotent and the body was buffered (every body is, unless its service streams
uploads); and the retry budget allows it (`RetryBudget`, about 20% of requests, as Envoy and Linkerd
bound retries). A request that an
instance accepted on a fresh connection and never answered is not resent: it may have crashed that
worker, and would crash the next one too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections import Counter
from itertools import count
from typing import Callable, Iterable, Iterator

import gevent

from microkit.gateway.balancer import Balancer, Upstream
from microkit.gateway.checks import merged_vary
from microkit.gateway.render import phrase
from microkit.gateway.spool import Buffering, Spool
from microkit.gateway.upstream import BrokenResponse, ConnectFailed, NoResponse, Pool, Reset, Response, TimedOut
from microkit.http import Request
from microkit.http.wsgi import _date_bytes, environ_key

HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
SET_BY_GATEWAY = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix",
                            "x-request-id", "forwarded", "x-real-ip",  # these two: other spellings of the client's address
                            "x-microkit-shadow",  # marks the gateway's shadow copies (migration.py): never a client's
                            "traceparent", "tracestate"})  # the handler sends its own (microkit/tracing.py)
# The same two sets as environ keys, which the engine computed (cached) for every request header.
_DROP_KEYS = frozenset("HTTP_" + name.upper().replace("-", "_") for name in HOP_BY_HOP | SET_BY_GATEWAY)
_DROP_PREFIXES = ("HTTP_PROXY_", "HTTP_X_AUTH_")  # Proxy-*, and the identity headers only the gateway sets
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
READ_SIZE = 64 * 1024
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,200}$")
_LOWER: dict[bytes, bytes] = {}
_CHUNKED_LINE = b"\r\nTransfer-Encoding: chunked\r\n"  # what request_head adds for a chunked request


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


class _ResendRefused(ConnectFailed):
    """The request's one resend could not connect: it may go to another instance, on a fresh connection."""


class _StaleResend(Exception):
    """A pooled connection gave no response and the request's one resend is granted: it goes to another
    instance when there is one (the instance may be going away: killed, crashed, restarting), else to
    the same one, on a fresh connection."""


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


class RetryBudget:
    """Resends allowed as a share of requests: each request earns `ratio` of a resend, up to `cap`
    saved; a resend spends one. So a burst of failures can resend at most `cap` plus `ratio` of the
    traffic, never every request."""

    def __init__(self, ratio: float = 0.2, cap: float = 10.0) -> None:
        self.ratio = ratio
        self.cap = cap
        self.tokens = cap

    def earn(self) -> None:
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.cap else self.cap

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


_FORWARDED = frozenset({"HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST"})
_DROPPED: dict[str, bool] = {}  # environ key -> whether request_head drops it (whatever Connection names)
_METHODS = {method: method.encode() for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
_SCHEMES = {"http": b"http", "https": b"https"}


def _scheme(name: str) -> bytes:
    return _SCHEMES.get(name) or name.encode("latin-1")


def _dropped(key: str) -> bool:
    dropped = key in _DROP_KEYS or key.startswith(_DROP_PREFIXES)
    if len(_DROPPED) < 1024:
        _DROPPED[key] = dropped
    return dropped


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


class Proxy:
    """Sends requests to instances picked by a Balancer, over pooled connections, and relays the answers."""

    def __init__(self, pool: Pool, *, trusted: TrustedProxies | None = None, budget: RetryBudget | None = None,
                 buffering: Buffering | None = None) -> None:
        self.pool = pool
        self.buffering = buffering or Buffering()
        self.trusted = trusted or TrustedProxies()
        self.budget = budget or RetryBudget()
        self.retries: Counter[str] = Counter()  # per service: resends and tries on another instance (metrics)

    def open(self, request: Request, head: bytes, service: str, balancer: Balancer, timeout: float,
             max_body: int) -> tuple[Response, Upstream]:
        """Send the request to an instance and read the response head; the caller relays the body and
        must `upstream.outstanding -= 1` and `response.release()`. Raises ProxyError (413/502/503/504).
        The body is read first (`_request_body`); a spooled one is dropped once the exchange ends."""
        head, body, chunked, replayable = self._request_body(request, head, service, max_body)
        try:
            return self._open(request, head, body, chunked, replayable, service, balancer, timeout, max_body)
        finally:
            if isinstance(body, Spool):
                body.close()

    def _open(self, request: Request, head: bytes, body, chunked: bool, replayable: bool, service: str,
              balancer: Balancer, timeout: float, max_body: int) -> tuple[Response, Upstream]:
        method = request.method
        resend = replayable and method in IDEMPOTENT
        self.budget.earn()
        deadline = time.monotonic() + timeout
        tried: list[Upstream] = []
        resent = False  # the one resend is granted: from now on only fresh connections, whose failure is final
        stale: Upstream | None = None  # the instance whose pooled connection went stale, while nothing else is tried
        while True:
            upstream = balancer.pick(exclude=tried)
            if upstream is None and stale is not None:
                upstream = stale  # the only instance there is: the resend goes to it again
            stale = None
            if upstream is None:
                raise ProxyError(503, f"no healthy instance of {service}", (("Retry-After", "1"),))
            tried.append(upstream)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProxyError(504, f"{service} did not answer within {timeout:g} s")
            upstream.outstanding += 1
            try:
                response = self._exchange(upstream, head, body, chunked, method, remaining, resend, resent, service)
            except BaseException as exc:  # whatever ends the attempt (client gone too): not in flight any more
                upstream.outstanding -= 1
                if isinstance(exc, _StaleResend):
                    resent, stale = True, upstream
                    continue
                if isinstance(exc, (TimedOut, gevent.Timeout)):
                    raise ProxyError(504, f"{service} did not answer within {timeout:g} s") from None
                if isinstance(exc, _BodyTooLarge):
                    raise ProxyError(413, f"request body larger than {max_body} bytes") from None
                if not isinstance(exc, (ConnectFailed, NoResponse, BrokenResponse)):
                    raise
                balancer.failed(upstream)
                if isinstance(exc, ConnectFailed):
                    self.retries[service] += 1
                    resent = resent or isinstance(exc, _ResendRefused)
                    continue
                raise ProxyError(502, f"{service}: {exc}") from None
            if response.status >= 500:
                balancer.failed(upstream)
            else:
                balancer.succeeded(upstream)
            return response, upstream

    def _exchange(self, upstream: Upstream, head: bytes, body, chunked: bool, method: str,
                  remaining: float, resend: bool, resent: bool, service: str = "") -> Response:
        """Send and read the response head within `remaining` seconds (TimedOut after it, or gevent.Timeout
        for a slow send). A pooled connection that gives no response is taken for stale, and a fresh one
        reset before any response byte for a listener that closed with it in its backlog: if `resend`
        and the budget allow, _StaleResend tells the caller to send it once more, on a fresh connection to
        an instance it picks; any other failure of a fresh connection is final. Once `resent`, only a fresh connection
        is tried. Raises _ResendRefused when the resend could not connect."""
        deadline = time.monotonic() + remaining
        head_only = method == "HEAD"
        if not resent:
            conn, reused = self.pool.acquire(upstream.address, remaining)
            try:
                conn.send(head, body, chunked, remaining)
                return Response(conn, self.pool, head_only, deadline - time.monotonic())
            except NoResponse as exc:
                conn.close()
                if not ((reused or isinstance(exc, Reset)) and resend and self.budget.spend()):
                    raise
                self.retries[service] += 1
                raise _StaleResend() from None
            except BaseException:
                conn.close()
                raise
        try:
            conn = self.pool.connect(upstream.address, deadline - time.monotonic())
        except ConnectFailed as exc:
            raise _ResendRefused(str(exc)) from None
        try:
            conn.send(head, body, chunked, deadline - time.monotonic())
            return Response(conn, self.pool, head_only, deadline - time.monotonic())
        except BaseException:
            conn.close()
            raise

    def request_head(self, request: Request, target: bytes, rid: bytes | None = None,
                     extra: Iterable[bytes] = ()) -> tuple[bytes, bytes]:
        """(the upstream request head, the request id): the client's header lines as received, minus
        hop-by-hop ones, plus Host when the client sent none, X-Forwarded-* and X-Request-Id, and any
        `extra` lines (each ending in CRLF). `rid` None keeps a sane client X-Request-ID or makes one."""
        named = _connection_keys(request.connection) if request.connection is not None else None
        method = request.method
        parts = [_METHODS.get(method) or method.encode("latin-1"), b" ", target, b" HTTP/1.1\r\n"]
        given: list[bytes] = []
        forwarded: dict[str, bytes] = {}
        for key, (name, value) in zip(request.keys, request.headers):
            dropped = _DROPPED.get(key)
            if dropped is None:
                dropped = _dropped(key)
            if dropped:
                if key in _FORWARDED:
                    forwarded[key] = value if key not in forwarded else forwarded[key] + b", " + value
                elif key == "HTTP_X_REQUEST_ID":
                    given.append(value)
                continue
            if named and key in named:
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
        own_host = request.host
        if own_host is None:
            own_host = ("%s:%s" % (base["SERVER_NAME"], base["SERVER_PORT"])).encode("latin-1")
            parts += (b"Host: ", own_host, b"\r\n")
        parts += (
            b"X-Forwarded-For: ", for_,
            b"\r\nX-Forwarded-Proto: ", proto or _scheme(base["wsgi.url_scheme"]),
            b"\r\nX-Forwarded-Host: ", host or own_host,
            b"\r\nX-Request-Id: ", rid, b"\r\n",
        )
        parts += extra
        if request.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), rid

    def _request_body(self, request: Request, head: bytes, service: str,
                       max_body: int) -> tuple[bytes, bytes | Spool | Iterator[bytes] | None, bool, bool]:
        """(head, body, chunked, replayable): the whole body is read before any instance is picked, so that
        a slow client holds no upstream connection and a resend can repeat it; in memory up to the
        buffering threshold, in a spool file beyond it. A chunked body is de-chunked and its head says
        Content-Length instead. A service that streams its uploads gets the body as it arrives."""
        stream = request.input
        size = request.content_length
        buffering = self.buffering
        if size:
            if size > max_body:
                raise ProxyError(413, f"request body larger than {max_body} bytes")
            if size <= buffering.memory:
                return head, stream.read(size), False, True
        elif not request.chunked:
            return head, None, False, True
        if service in buffering.streamed:
            return head, self._stream(stream, size, max_body), request.chunked, False
        spool = buffering.spool()
        try:
            for chunk in self._stream(stream, size, max_body):
                spool.write(chunk)
        except _BodyTooLarge:
            spool.close()
            raise ProxyError(413, f"request body larger than {max_body} bytes") from None
        except OSError as exc:
            spool.close()
            raise ProxyError(500, f"cannot buffer the request body: {exc}") from None
        except BaseException:
            spool.close()
            raise
        if request.chunked:
            cut = head.rindex(_CHUNKED_LINE)
            head = b"%s\r\nContent-Length: %d\r\n%s" % (head[:cut], spool.size, head[cut + len(_CHUNKED_LINE):])
        if spool.in_memory:
            return head, spool.getvalue(), False, True
        return head, spool, False, True

    def _stream(self, stream, size: int | None, max_body: int) -> Iterator[bytes]:
        """The request body in pieces, refusing more than max_body bytes."""
        total = 0
        while size is None or total < size:
            chunk = stream.read(READ_SIZE if size is None else min(READ_SIZE, size - total))
            if not chunk:
                break
            total += len(chunk)
            if total > max_body:
                raise _BodyTooLarge()
            yield chunk

    def relay(self, request: Request, response: Response, rid: bytes, extra: list[bytes], timeout: float,
              vary: bytes | None = None, tap: Callable[[bytes], None] | None = None) -> int:
        """Send the upstream response to the client: the head filtered as bytes (with X-Request-Id, the
        checks' `extra` lines and their `vary` token merged in), then the body as it arrives; reframed
        for the client (chunked for HTTP/1.1 when the upstream gave no length, close-delimited for 1.0).
        `tap` (a shadow comparison's capture) is handed every body piece as it goes out."""
        status = request.status = response.status
        block = response.block
        if block is not None and (vary is None or not response.has_vary):  # the quick parse kept what passes
            parts = [b"HTTP/1.1 %d %s\r\n" % (status, response.reason), block, b"X-Request-Id: ", rid, b"\r\n"]
            parts += extra
            if vary is not None:
                parts += (b"Vary: ", vary, b"\r\n")
            length = response.length
            has_date = response.has_date
        else:
            parts, length, has_date = self._filtered_head(response, rid, extra, vary)
        if not has_date:
            parts.append(_date_bytes())
        bodyless = request.method == "HEAD" or status < 200 or status == 204 or status == 304
        http10 = request.version == "HTTP/1.0"
        chunked = not bodyless and length is None and not http10
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if not bodyless and length is None and http10:
            request.keep_alive = False
        if request.must_close():
            request.keep_alive = False
            parts.append(b"Connection: close\r\n")
        elif http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if response.complete:
            body = response.take()
            if tap is not None:
                tap(body)
            if bodyless:
                body = b""
            elif chunked:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            parts.append(body)
            request.send(b"".join(parts))
            return status
        request.send(b"".join(parts))
        response.timeout = timeout
        sent = 0
        try:
            for chunk in response.body():
                if tap is not None:
                    tap(chunk)
                if chunked:
                    request.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    sent += len(chunk)
                    request.send(chunk)
        except BrokenResponse:
            request.keep_alive = False
            return status
        if chunked:
            request.send(b"0\r\n\r\n")
        elif not bodyless and length is not None and sent != int(length):
            request.keep_alive = False
        return status

    def _filtered_head(self, response: Response, rid: bytes, extra: list[bytes],
                       vary: bytes | None) -> tuple[list[bytes], bytes | None, bool]:
        """The client's response head up to the framing lines, header by header: (parts, the
        Content-Length value, whether a Date was given)."""
        status = response.status
        headers = response.headers
        named = response_named(headers)
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, response.reason.strip() or phrase(status).encode())]
        has_date = False
        length = None
        for name, value in headers:
            lower = lower_name(name)
            if lower in RESPONSE_DROP or lower.startswith(b"proxy-") or lower in named:
                continue
            if lower == b"content-length":
                length = value
            elif lower == b"date":
                has_date = True
            elif vary is not None and lower == b"vary":
                value = merged_vary(value, vary)
                vary = None
            parts += (name, b": ", value, b"\r\n")
        parts += (b"X-Request-Id: ", rid, b"\r\n")
        parts += extra
        if vary is not None:
            parts += (b"Vary: ", vary, b"\r\n")
        return parts, length, has_date
