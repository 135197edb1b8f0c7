"""The gateway's HTTP/1.1 client: pooled keep-alive connections to instances.

Failures are typed by how far the exchange got, because that decides whether a retry is safe:
`ConnectFailed` (nothing was sent), `NoResponse` (the request went out, no response byte came back;
`Reset` when the instance reset the connection),
`BrokenResponse` (the response had started) and `TimedOut` (no response head within the time given).

Each connection keeps the system calls per request at one send and one recv, and the common answer
costs little to parse:
- each connection has one read watcher, armed for its whole life instead of once per wait (gevent's
  socket waits start and stop theirs: a failing `epoll_ctl` a request). While the connection idles in
  the pool, the watcher firing means the instance closed it (or sent bytes unasked), and the
  connection is marked stale: this replaces a `MSG_PEEK` before each reuse. A close the loop has not
  seen yet is caught as before, by the proxy's one resend of a stale pooled connection.
- the common response, a complete head with a Content-Length in the first read, is parsed in one pass
  by `quick_head` (microkit/gateway/_quickhead.c when built, else its Python twin `_quick_head`), which
  also gives the relay the header lines it passes on as one block; anything else (chunked, 1xx, 101,
  close-delimited, HTTP/1.0, a head split over reads, any byte the quick parse does not take) goes
  through httptools, which refuses what is malformed.
"""

from __future__ import annotations

import re
import socket
import time
from collections import defaultdict
from typing import Iterable, Iterator

import gevent
import httptools
from gevent import socket as gsocket

from microkit.http.io import Reader

RECV_SIZE = 65536
# A response head the quick parse takes: an HTTP/1.1 status line with a plain reason, then header
# lines of token names and values of visible characters, spaces and tabs (no obs-fold, no controls).
_QUICK_HEAD = re.compile(rb"HTTP/1\.1 [2-5][0-9][0-9] [\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\r\n"
                         rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# What a response header name means to the quick parse and the relay, by the name as received.
PLAIN, LENGTH, DATE, VARY, CONNECTION, DROP, FRAMING = range(7)
_KINDS: dict[bytes, int] = {}
_SPECIAL = {b"content-length": LENGTH, b"date": DATE, b"vary": VARY, b"connection": CONNECTION,
            b"transfer-encoding": FRAMING, b"keep-alive": DROP, b"te": DROP, b"trailer": DROP, b"upgrade": DROP,
            b"x-request-id": DROP}  # the relay drops hop-by-hop headers and sets its own X-Request-Id


class UpstreamError(Exception):
    """An exchange with an instance failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made: no byte of the request was sent."""


class NoResponse(UpstreamError):
    """The connection failed after the request started going out, before any response byte."""


class Reset(NoResponse):
    """The instance reset the connection before any response byte. On a fresh connection this is what a
    listener that closed with the connection still in its backlog does (a killed process's sockets
    close one by one): no application read the request. An instance that read the request and then
    closed (a crash, a kill after a blocked loop) gives a plain close instead."""


class BrokenResponse(UpstreamError):
    """The connection failed or the response was malformed after the response had started."""


class TimedOut(UpstreamError):
    """No response head came within the time the exchange was given."""


def kind_of(name: bytes) -> int:
    """PLAIN for a response header the relay passes on as received; else what it is (cached by name)."""
    kind = _KINDS.get(name)
    if kind is None:
        lower = name.lower()
        kind = _SPECIAL.get(lower, DROP if lower.startswith(b"proxy-") else PLAIN)
        if len(_KINDS) < 1024:
            _KINDS[name] = kind
    return kind


def _quick_head(data: bytes) -> tuple | None:
    """The quick parse of a response head (the pure-Python twin of microkit/gateway/_quickhead.c):
    (status, reason, the header lines the relay passes on, the Content-Length value, keep-alive, whether
    there is a Date, whether there is a Vary, where the body starts), or None for httptools."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or _QUICK_HEAD.fullmatch(data, 0, end + 2) is None:
        return None
    lines = data[:end].split(b"\r\n")
    kept = []
    length = None
    keep_alive = True
    has_date = has_vary = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        kind = _KINDS.get(name)
        if kind is None:
            kind = kind_of(name)
        if kind == PLAIN:
            kept.append(line)
        elif kind == LENGTH:
            value = value.strip(b" \t")
            if length is not None or not value.isdigit():
                return None
            length = value
            kept.append(line)
        elif kind == DATE:
            kept.append(line)
            has_date = True
        elif kind == VARY:
            kept.append(line)
            has_vary = True
        elif kind == CONNECTION:
            token = value.strip(b" \t").lower()
            if token == b"close":
                keep_alive = False
            elif token != b"keep-alive":
                return None  # it names other headers as hop-by-hop: the relay's filter decides
        elif kind == FRAMING:
            return None
    if length is None:
        return None
    block = b"\r\n".join(kept) + b"\r\n" if kept else b""
    return int(lines[0][9:12]), lines[0][13:], block, length, keep_alive, has_date, has_vary, end + 4


try:
    from microkit.gateway._quickhead import parse as quick_head
except ImportError:  # not compiled (setup.py builds it when a C compiler is there)
    quick_head = _quick_head


class Connection(Reader):
    """One TCP connection to an instance, reused while both ends keep it alive; its read watcher stays
    armed (see the module docstring): reads are the engine's `Reader`'s, and bytes that arrive while
    the connection idles in the pool mark it stale."""

    __slots__ = ("sock", "address", "idle", "stale")

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock
        self.address = address
        self.idle = False  # in the pool
        self.stale = False  # became readable while idle: closed by the instance
        super().__init__(getattr(sock, "_sock", sock))

    def _unasked(self) -> None:
        """Readable while nobody waits: in the pool that is a close; in use, the relay is busy sending
        and re-arms the watcher on its next wait (a level-triggered watcher would fire every loop turn)."""
        self.watcher.stop()
        if self.idle:
            self.stale = True

    def stop_watching(self) -> None:
        """Stop the watcher for good: the socket becomes a tunnel's, read with gevent's own waits."""
        self.watcher.stop()

    def send(self, head: bytes, body: bytes | Iterable[bytes] | None, chunked: bool,
             timeout: float | None = None) -> None:
        """Send the request head and body; a failure here is NoResponse, since bytes may have gone out.
        What does not go out in one plain send is sent within `timeout` (gevent.Timeout after it)."""
        try:
            if body is None or isinstance(body, bytes):
                data = head + body if body else head
                try:
                    sent = self.raw.send(data)  # one plain send first: gevent's sendall costs a getsockopt
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    with gevent.Timeout(timeout):
                        self.sock.sendall(memoryview(data)[sent:])
                return
            with gevent.Timeout(timeout):
                self.sock.sendall(head)
                for chunk in body:
                    if chunk:
                        self.sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if chunked:
                    self.sock.sendall(b"0\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Reset(f"sending to {self.address[0]}:{self.address[1]} failed: {exc}") from exc
        except OSError as exc:
            raise NoResponse(f"sending to {self.address[0]}:{self.address[1]} failed: {exc}") from exc

    def close(self) -> None:
        self.watcher.close()
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """An upstream response: status and headers read, body streamed by `body()`.

    `block` is set when the quick parse took the head: the header lines the relay passes on unchanged
    (all but hop-by-hop ones and X-Request-Id, as received, each ending in CRLF), with `length` the Content-Length
    value, `has_date` and `has_vary`; otherwise None, and the relay filters `headers` itself. After a
    quick parse, `headers` is made from the head when first asked for."""

    __slots__ = ("conn", "pool", "status", "reason", "_headers", "keep_alive", "upgraded", "rest", "timeout",
                 "block", "length", "has_date", "has_vary", "_head", "_chunks", "_headers_done", "_done",
                 "_released", "_parser", "_left")

    def __init__(self, conn: Connection, pool: Pool, head_only: bool, timeout: float | None = None) -> None:
        self.conn = conn
        self.pool = pool
        self.status = 0
        self.reason = b""
        self._headers: list[tuple[bytes, bytes]] | None = []
        self._head = b""  # the whole head, after a quick parse
        self.keep_alive = False
        self.upgraded = False
        self.rest = b""
        self.timeout: float | None = None  # for each read of the body (the relay sets the route's)
        self.block: bytes | None = None
        self.length: bytes | None = None
        self.has_date = self.has_vary = False
        self._chunks: list[bytes] = []
        self._headers_done = self._done = self._released = False
        self._parser = None
        self._left = 0  # body bytes still to come, after a quick parse
        try:
            data = conn.recv(RECV_SIZE, timeout)
        except TimeoutError:
            raise TimedOut(f"{self._where()} sent nothing within the route's timeout") from None
        except ConnectionResetError:
            raise Reset(f"{self._where()} reset the connection before responding") from None
        except OSError:
            data = b""  # as a close
        if not data:
            raise NoResponse(f"{self._where()} closed the connection before responding")
        if not self._quick(data, head_only):
            self._parse_head(data, head_only, timeout)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs as received, values without surrounding spaces and tabs."""
        if self._headers is None:
            self._headers = [(name, value.strip(b" \t")) for name, _, value in
                             (line.partition(b":") for line in self._head.split(b"\r\n")[1:-2])]
        return self._headers

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.reason, self._headers = b"", []  # an interim response (100 Continue): the real one follows
            return
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message completes
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._headers_done:
            self._done = True

    def _quick(self, data: bytes, head_only: bool) -> bool:
        """Take a complete head with one Content-Length and the body bytes after it (`quick_head`);
        False leaves the response untouched for httptools."""
        parsed = quick_head(data)
        if parsed is None:
            return False
        status, reason, block, length, keep_alive, has_date, has_vary, start = parsed
        body = data[start:]
        left = 0 if head_only or status == 204 or status == 304 else int(length)
        if len(body) > left:
            return False
        self.status = status
        self.reason = reason
        self._headers = None
        self._head = data[:start]
        self.block = block
        self.length = length
        self.has_date = has_date
        self.has_vary = has_vary
        self.keep_alive = keep_alive
        self._headers_done = True
        if body:
            self._chunks.append(body)
        self._left = left - len(body)
        self._done = self._left == 0
        return True

    def _feed(self, data: bytes) -> None:
        if self._parser is None:  # after a quick parse: counting the body
            if len(data) > self._left:  # more than the response: the connection cannot be trusted again
                data = data[:self._left]
                self.keep_alive = False
            self._chunks.append(data)
            self._left -= len(data)
            self._done = self._left == 0
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if not (self._headers_done and self._parser.get_status_code() == 101):
                raise BrokenResponse("the instance switched protocols unasked") from None
            self.upgraded = True  # a tunnel (WebSocket): what followed the head belongs to it
            self.conn.stop_watching()
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.rest = data[offset:]
            self.keep_alive = False  # never back to the pool
            self._done = True
        except httptools.HttpParserError as exc:
            raise BrokenResponse(f"malformed response from {self._where()}: {exc}") from None

    def _where(self) -> str:
        return "%s:%d" % self.conn.address

    def _recv(self, timeout: float | None, expired: type[UpstreamError] = BrokenResponse) -> bytes:
        try:
            return self.conn.recv(RECV_SIZE, timeout)
        except TimeoutError:
            raise expired(f"{self._where()} sent nothing within the route's timeout") from None
        except OSError:
            return b""  # a reset reads as a close: what it means depends on how far the response got

    def _parse_head(self, data: bytes, head_only: bool, timeout: float | None) -> None:
        """The head through httptools, from the first read `data` on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._parser = httptools.HttpResponseParser(self)
        while True:
            self._feed(data)
            if self._headers_done:
                break
            data = self._recv(None if deadline is None else deadline - time.monotonic(), TimedOut)
            if not data:
                raise BrokenResponse(f"{self._where()} closed the connection inside the response head")
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
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
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
                data = self._recv(self.timeout)
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

    def acquire(self, address: tuple[str, int], timeout: float | None = None) -> tuple[Connection, bool]:
        """A live idle connection (reused=True) or a new one (made within `timeout` seconds, if given,
        and the pool's connect timeout); ConnectFailed if none can be made."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            conn.idle = False
            if not conn.stale:
                return conn, True
            conn.close()
        return self.connect(address, timeout), False

    def connect(self, address: tuple[str, int], timeout: float | None = None) -> Connection:
        limit = self.connect_timeout if timeout is None else max(min(timeout, self.connect_timeout), 0.001)
        try:
            sock = gsocket.create_connection(address, timeout=limit)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Connection(sock, address)

    def release(self, conn: Connection) -> None:
        idle = self._idle[conn.address]
        if len(idle) < self.max_idle:
            conn.idle = True
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
