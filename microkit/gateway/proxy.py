"""Forwarding one request to an instance of a service, and its response back, streaming both ways.

The method, path, query, headers and body go through unchanged, except: hop-by-hop headers are
removed both ways; X-Forwarded-For/-Proto/-Host are set from the socket peer (a trusted proxy's values
are extended instead of replaced); X-Request-ID is kept or generated, and returned.

Retries follow what is safe: a failed connect (nothing sent) is retried on another instance for any
method; GET, HEAD, OPTIONS, PUT and DELETE are retried once more after a reset that came before the
response started; a POST is never replayed once its bytes went out.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Iterable, Iterator

import gevent

from microkit.gateway.balancer import Balancer, Upstream
from microkit.gateway.routing import BadPath, normalize, split_target
from microkit.gateway.upstream import BrokenResponse, ConnectFailed, NoResponse, Pool, Response

HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
SET_BY_GATEWAY = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
REPLAY_BUFFER = 64 * 1024
READ_SIZE = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")
_NAMES: dict[str, str] = {}


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


def header_name(cgi_key: str) -> str:
    """`X_REQUEST_ID` -> `X-Request-Id`, cached."""
    name = _NAMES.get(cgi_key)
    if name is None:
        name = "-".join(part.capitalize() for part in cgi_key.split("_"))
        if len(_NAMES) < 1024:
            _NAMES[cgi_key] = name
    return name


def _connection_tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in value.split(",")} if value else set()


def _hop_by_hop(lower: str, named: set[str]) -> bool:
    return lower in HOP_BY_HOP or lower.startswith("proxy-") or lower in named


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
            rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
            environ["microkit.request_id"] = rid
        return rid

    def forward(self, environ: dict, service: str, balancer: Balancer, timeout: float) -> Outcome:
        """Proxy one request; raises ProxyError for answers the gateway makes itself (400/413/502/503/504)."""
        method = environ["REQUEST_METHOD"]
        rid = self.request_id(environ)
        head = self._request_head(environ, method, rid)
        body, chunked, replayable = self._request_body(environ)
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
            except gevent.Timeout:
                upstream.outstanding -= 1
                raise ProxyError(504, f"{service} did not answer within {timeout:g} s") from None
            except _BodyTooLarge:
                upstream.outstanding -= 1
                raise ProxyError(413, f"request body larger than {self.max_body} bytes") from None
            except ConnectFailed as exc:
                upstream.outstanding -= 1
                balancer.failed(upstream)
                last_error = exc
                continue
            except NoResponse as exc:
                upstream.outstanding -= 1
                balancer.failed(upstream)
                last_error = exc
                if method in IDEMPOTENT and replayable and not retried_after_send:
                    retried_after_send = True
                    continue
                raise ProxyError(502, f"{service}: {exc}") from None
            except BrokenResponse as exc:
                upstream.outstanding -= 1
                balancer.failed(upstream)
                raise ProxyError(502, f"{service}: {exc}") from None
            if response.status >= 500:
                balancer.failed(upstream)
            else:
                balancer.succeeded(upstream)
            return self._outcome(response, upstream, rid, timeout)

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

    def _request_head(self, environ: dict, method: str, rid: str) -> bytes:
        raw = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        path, query = split_target(raw.encode("latin-1"))
        try:
            target = normalize(path) + query
        except BadPath as exc:
            raise ProxyError(400, str(exc)) from None
        named = _connection_tokens(environ.get("HTTP_CONNECTION"))
        lines = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)]
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = header_name(key[5:])
                lower = name.lower()
                if _hop_by_hop(lower, named) or lower in SET_BY_GATEWAY:
                    continue
            elif key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                if not value:
                    continue
                name = "Content-Type" if key == "CONTENT_TYPE" else "Content-Length"
            else:
                continue
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        peer = environ.get("REMOTE_ADDR", "")
        trusted = peer in self.trusted
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        proto = environ.get("HTTP_X_FORWARDED_PROTO") if trusted else None
        host = environ.get("HTTP_X_FORWARDED_HOST") if trusted else None
        lines.append(b"X-Forwarded-For: %s\r\n" % (
            f"{forwarded_for}, {peer}" if trusted and forwarded_for else peer).encode("latin-1"))
        lines.append(b"X-Forwarded-Proto: %s\r\n" % (proto or environ.get("wsgi.url_scheme", "http")).encode("latin-1"))
        lines.append(b"X-Forwarded-Host: %s\r\n" % (
            host or environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")).encode("latin-1"))
        lines.append(b"X-Request-Id: %s\r\n" % rid.encode("latin-1"))
        if environ.get("CONTENT_LENGTH") in (None, "") and self._chunked_input(environ):
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    @staticmethod
    def _chunked_input(environ: dict) -> bool:
        return environ.get("microkit.chunked", False)

    def _request_body(self, environ: dict) -> tuple[bytes | Iterator[bytes] | None, bool, bool]:
        """(body, chunked, replayable): small bodies are read whole so that a retry can resend them."""
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        if length:
            size = int(length)
            if size > self.max_body:
                raise ProxyError(413, f"request body larger than {self.max_body} bytes")
            if size <= REPLAY_BUFFER:
                return stream.read(size), False, True
            return self._stream(stream, size), False, False
        if self._chunked_input(environ):
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
        named = {v.decode("latin-1").strip().lower() for n, value in response.headers
                 if n.lower() == b"connection" for v in value.split(b",")}
        headers = []
        for name, value in response.headers:
            text = name.decode("latin-1")
            lower = text.lower()
            if _hop_by_hop(lower, named) or lower == "x-request-id":
                continue
            headers.append((text, value.decode("latin-1")))
        headers.append(("X-Request-Id", rid))
        reason = response.reason.decode("latin-1").strip() or _phrase(response.status)
        return Outcome(f"{response.status} {reason}", headers, _Body(response, upstream, timeout),
                       "%s:%d" % upstream.address)


def _phrase(status: int) -> str:
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
