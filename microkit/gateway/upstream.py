"""The gateway's HTTP/1.1 client: pooled keep-alive connections to instances, parsed with httptools.

Failures are typed by how far the exchange got, because that decides whether a retry is safe:
`ConnectFailed` (nothing was sent), `NoResponse` (the request went out, no response byte came back),
and `BrokenResponse` (the response had started).
"""

from __future__ import annotations

import socket
from collections import defaultdict
from typing import Iterable, Iterator

import httptools
from gevent import socket as gsocket

from microkit.http.io import recv_when_readable

RECV_SIZE = 65536


class UpstreamError(Exception):
    """An exchange with an instance failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made: no byte of the request was sent."""


class NoResponse(UpstreamError):
    """The connection failed after the request started going out, before any response byte."""


class BrokenResponse(UpstreamError):
    """The connection failed or the response was malformed after the response had started."""


class Connection:
    """One TCP connection to an instance, reused while both ends keep it alive."""

    __slots__ = ("sock", "raw", "address")

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock
        self.raw = getattr(sock, "_sock", sock)
        self.address = address

    def idle_ok(self) -> bool:
        """An idle HTTP connection has nothing to read: readable means the peer closed it (or misbehaved)."""
        try:
            self.raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False

    def send(self, head: bytes, body: bytes | Iterable[bytes] | None, chunked: bool) -> None:
        """Send the request head and body; a failure here is NoResponse, since bytes may have gone out."""
        try:
            if body is None or isinstance(body, bytes):
                data = head + body if body else head
                try:
                    sent = self.raw.send(data)  # one plain send first: gevent's sendall costs a getsockopt
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    self.sock.sendall(memoryview(data)[sent:])
                return
            self.sock.sendall(head)
            for chunk in body:
                if chunk:
                    self.sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            raise NoResponse(f"sending to {self.address[0]}:{self.address[1]} failed: {exc}") from exc

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """An upstream response: status and headers read, body streamed by `body()`."""

    def __init__(self, conn: Connection, pool: Pool, head_only: bool) -> None:
        self.conn = conn
        self.pool = pool
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._headers_done = False
        self._done = False
        self._released = False
        self.keep_alive = False
        self.upgraded = False
        self.rest = b""
        self._parser = httptools.HttpResponseParser(self)
        self._read_head(head_only)

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.reason, self.headers = b"", []  # an interim response (100 Continue): the real one follows
            return
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message completes
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._headers_done:
            self._done = True

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if not (self._headers_done and self._parser.get_status_code() == 101):
                raise BrokenResponse("the instance switched protocols unasked") from None
            self.upgraded = True  # a tunnel (WebSocket): what followed the head belongs to it
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.rest = data[offset:]
            self.keep_alive = False  # never back to the pool
            self._done = True
        except httptools.HttpParserError as exc:
            raise BrokenResponse(f"malformed response from {self._where()}: {exc}") from None

    def _where(self) -> str:
        return "%s:%d" % self.conn.address

    def _recv(self) -> bytes:
        try:
            return recv_when_readable(self.conn.sock, self.conn.raw, RECV_SIZE)
        except TimeoutError:
            raise BrokenResponse(f"{self._where()} sent nothing within the route's timeout") from None
        except OSError:
            return b""  # a reset reads as a close: what it means depends on how far the response got

    def _read_head(self, head_only: bool) -> None:
        started = False
        while not self._headers_done:
            data = self._recv()
            if not data:
                if started:
                    raise BrokenResponse(f"{self._where()} closed the connection inside the response head")
                raise NoResponse(f"{self._where()} closed the connection before responding")
            started = True
            self._feed(data)
        self.status = self._parser.get_status_code()
        if head_only or self.status in (204, 304):
            self._done = True
            self._chunks.clear()

    @property
    def complete(self) -> bool:
        """Whether the whole response (head and body) has been read already."""
        return self._done

    def take(self) -> bytes:
        """The body of a complete response, at once; the connection goes back to the pool."""
        body = b"".join(self._chunks)
        self._chunks = []
        self.release()
        return body

    def body(self) -> Iterator[bytes]:
        """The body's bytes as they arrive; the connection returns to the pool once the body is complete."""
        try:
            while True:
                if self._chunks:
                    chunks, self._chunks = self._chunks, []
                    yield from chunks
                if self._done:
                    break
                data = self._recv()
                if not data:
                    if not self._has_length():
                        self.keep_alive = False
                        break
                    raise BrokenResponse(f"{self._where()} closed the connection inside the response body")
                self._feed(data)
        except BaseException:
            self._done = False
            self.release()
            raise
        self.release()

    def _has_length(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" in names or b"transfer-encoding" in names

    def release(self) -> None:
        """Give the connection back if the exchange ended cleanly and both sides allow reuse; else close it."""
        if self._released:
            return
        self._released = True
        if self._done and self.keep_alive:
            self.pool.release(self.conn)
        else:
            self.conn.close()


class Pool:
    """Idle keep-alive connections per instance address, most recently used first."""

    def __init__(self, max_idle_per_address: int = 64, connect_timeout: float = 2.0) -> None:
        self.max_idle = max_idle_per_address
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[Connection]] = defaultdict(list)

    def acquire(self, address: tuple[str, int]) -> tuple[Connection, bool]:
        """A live idle connection (reused=True) or a new one; ConnectFailed if none can be made."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.idle_ok():
                return conn, True
            conn.close()
        return self.connect(address), False

    def connect(self, address: tuple[str, int]) -> Connection:
        try:
            sock = gsocket.create_connection(address, timeout=self.connect_timeout)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Connection(sock, address)

    def release(self, conn: Connection) -> None:
        conn.sock.settimeout(None)
        idle = self._idle[conn.address]
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def forget(self, address: tuple[str, int]) -> None:
        """Close the idle connections of an instance that left the registry."""
        for conn in self._idle.pop(address, []):
            conn.close()

    def close(self) -> None:
        for address in list(self._idle):
            self.forget(address)
