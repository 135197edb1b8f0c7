"""One client connection: requests are parsed into a queue and answered strictly in order.

With the compiled hot path (microkit/http/native.py) whole heads of requests without a body are parsed
in one call each; the first request with a body or a protocol switch hands the connection's bytes to
llhttp, which parses everything from there on, as it parses everything in the pure-Python path.
"""

import re
import sys
import traceback
from collections import deque
from collections.abc import Callable
from socket import SHUT_WR
from time import monotonic, perf_counter

from gevent import get_hub, getcurrent
from gevent._socketcommon import SocketMixin
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from microkit.http.body import EMPTY, Input
from microkit.http.errors import ERROR_RESPONSES, ClientDisconnected, HTTPError
from microkit.http.io import Reader, recv_when_readable, timeout_setter
from microkit.http.native import speedups
from microkit.http.request import Request
from microkit.http.wsgi import Response, build_environ, environ_key

RECV_SIZE = 65536
DISCARD_LIMIT = 65536
SHORT_LINGER = 1.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_UNIQUE = frozenset(("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_HOST"))
_TRACKED = _UNIQUE | {"HTTP_EXPECT", "HTTP_CONNECTION"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_parse_head = speedups.parse_head if speedups is not None else None
_BARE_CR = re.compile(rb"\r[^\n]")  # a head that can never be valid: parsed (and refused) at once, as llhttp does


class Connection:
    """Parses and answers the requests of one accepted socket; it is also the llhttp callback target."""

    def __init__(self, server, sock, address) -> None:
        self._server = server
        self._app = server.app
        self._raw_handler = server.raw_handler
        self._refused = getattr(server.raw_handler, "refused", None)
        self._access_log = server.access_log
        self._limits = limits = server.limits
        self._max_url = limits.max_request_line - 13
        self._body_timeout = limits.header_timeout if limits.body_timeout is None else limits.body_timeout
        self._sock = sock
        self._raw = getattr(sock, "_sock", sock)
        self._settimeout = timeout_setter(sock)
        self._reader = Reader(self._raw) if isinstance(sock, SocketMixin) else None  # not a TLS stream
        peer = address if isinstance(address, tuple) else ("", 0)
        self._base = {**server.environ, "REMOTE_ADDR": peer[0], "REMOTE_PORT": str(peer[1])}
        self._parser: HttpRequestParser | None = None if _parse_head is not None else HttpRequestParser(self)
        self._buf = b""  # bytes of a head not yet complete, while the compiled parser reads the connection
        self._parsed = 0  # len(self._buf) when it was last parsed
        self._ready: deque = deque()
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._keys: list[str] = []
        self._special: dict[str, bytes] = {}
        self._url = b""
        self._input: Input | None = None
        self._nheaders = 0
        self._hbytes = 0
        self._seen = 0
        self._stall = 0
        self._deadline: float | None = monotonic() + limits.header_timeout
        self._dead = False
        self._eof = False
        self._current: Request | None = None
        self._reading: Input = EMPTY
        self.busy = False
        self.greenlet = getcurrent()
        self._idle_timer = None

    # llhttp callbacks: they run inside feed_data and raise HTTPError to reject a request.

    def on_message_begin(self) -> None:
        """Start a new request head and its header clock."""
        self._headers = []
        self._keys = []
        self._special = {}
        self._url = b""
        self._nheaders = self._hbytes = 0
        if self._deadline is None:
            self._deadline = monotonic() + self._limits.header_timeout

    def on_url(self, url: bytes) -> None:
        """Collect the request target, which may arrive in pieces, and bound the request line."""
        self._seen += 1
        url = self._url = self._url + url
        if len(url) > self._max_url and len(url) + len(self._parser.get_method()) + 10 > self._limits.max_request_line:
            raise HTTPError(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Add one header to the head; trailers only count against the limits."""
        self._seen += 1
        self._nheaders += 1
        self._hbytes += len(name) + len(value) + 4
        limits = self._limits
        if self._hbytes > limits.max_header_bytes or self._nheaders > limits.max_headers:
            raise HTTPError(431)
        if self._input is not None:
            return
        key = environ_key(name)
        if key is None:
            return
        value = value.strip(b" \t")
        if key in _TRACKED:
            special = self._special
            if key in special:
                if key in _UNIQUE:
                    raise HTTPError(400, f"duplicate {name.decode('latin-1')}")
                special[key] += b", " + value
            else:
                special[key] = value
        self._keys.append(key)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Validate the head (Host, framing, version) and queue the request for the app."""
        self._seen += 1
        self._deadline = None
        special = self._special
        parser = self._parser
        protocol = _PROTOCOLS.get(parser.get_http_version())
        if protocol is None:
            raise HTTPError(505)
        if protocol == "HTTP/1.1" and "HTTP_HOST" not in special:
            raise HTTPError(400, "missing Host")
        method = parser.get_method()
        te = special.get("HTTP_TRANSFER_ENCODING")
        length = special.get("CONTENT_LENGTH")
        chunked = te is not None
        if chunked and (te.lower() != b"chunked" or length is not None):
            raise HTTPError(400, "unsupported Transfer-Encoding")
        max_body = self._limits.max_body
        size = None
        has_body = chunked
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise HTTPError(400, "invalid Content-Length")
            size = int(length)
            if max_body is not None and size > max_body:
                raise HTTPError(413)
            has_body = size > 0
        if has_body:
            expect = protocol == "HTTP/1.1" and special.get("HTTP_EXPECT", b"").lower() == b"100-continue"
            inp = self._input = Input(self._fill, max_body, self._continue if expect else None)
        else:
            inp = EMPTY
        request = Request(
            _METHODS.get(method) or method.decode("latin-1"), self._url, protocol, self._headers, self._keys,
            special, size, chunked, inp, parser.should_keep_alive(), self._base, self._send, self._closing,
        )
        self._ready.append((request, None))

    def on_body(self, body: bytes) -> None:
        """Hand body bytes to the request's wsgi.input."""
        self._seen += 1
        self._input.feed(body)

    def on_message_complete(self) -> None:
        """Mark the body complete; the next bytes start a new request."""
        if self._input is not None:
            self._input.done = True
            self._input = None
        self._headers = None

    # reading and answering

    def _reject(self, error: HTTPError) -> None:
        """Stop parsing; the body being read fails with `error`, or `error` is answered in turn."""
        self._dead = True
        if self._input is not None:
            self._input.error = error
        else:
            self._ready.append((None, error))

    def _feed(self, data: bytes) -> None:
        """Parse bytes; a whole buffer that completes no header or body piece counts as a stalled line."""
        seen = self._seen
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._dead = True  # no more requests on this connection: the rest belongs to the new protocol
            if self._ready and self._ready[-1][0] is not None:
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self._ready[-1][0].upgrade = self._take_over(data[offset:])
        except HttpParserError as exc:
            cause = exc.__context__
            self._reject(cause if isinstance(cause, HTTPError) else HTTPError(400, str(exc)))
            return
        if self._seen != seen:
            self._stall = 0
            return
        self._stall += len(data)
        if self._stall > self._limits.max_header_bytes:
            self._reject(HTTPError(431, "header line too long"))

    def _feed_heads(self, data: bytes) -> None:
        """Parse bytes with the compiled parser: every whole head of a request without a body becomes a
        Request; a head announcing a body or a protocol switch hands this and all later bytes to llhttp.

        The parser reads a head from its start each time, so a head arriving in many small pieces is
        parsed again only once it may be complete (a blank line arrived), can no longer be valid (a CR
        not followed by LF) or has doubled in size since the last parse: linear work however it is split. CR/LF before a head are dropped here and, as
        on the llhttp path, count as a stalled line."""
        limits = self._limits
        if self._buf:
            buf = self._buf + data
            window = buf[-len(data) - 3:]
            if len(buf) < 2 * self._parsed and b"\r\n\r\n" not in window and not _BARE_CR.search(window):
                self._buf = buf
                return
        elif data[:1] in b"\r\n":
            buf = data.lstrip(b"\r\n")
            self._stall += len(data) - len(buf)
            if self._stall > limits.max_header_bytes:
                self._reject(HTTPError(431, "header line too long"))
                return
        else:
            buf = data
        completed = False
        while buf:
            try:
                head = _parse_head(buf, limits.max_request_line, limits.max_header_bytes, limits.max_headers)
            except HTTPError as error:
                self._buf = buf  # kept for the refusal's log line; the connection ends after it
                self._url = _request_line(buf)[1]
                self._reject(error)
                return
            if head is None:
                break
            if head is True:
                self._buf = b""
                self._parser = HttpRequestParser(self)
                self._feed(buf)
                return
            consumed, method, target, version, headers, keys, special, keep_alive = head
            self._ready.append((Request(method, target, version, headers, keys, special, None, False, EMPTY, keep_alive,
                                        self._base, self._send, self._closing), None))
            buf = buf[consumed:]
            completed = True
            self._stall = 0
        self._buf = buf
        self._parsed = len(buf)
        if not buf and not self._stall:
            self._deadline = None
        elif completed:
            self._deadline = monotonic() + limits.header_timeout

    def _fill(self) -> None:
        """Read more of a request body from the socket (wsgi.input calls this)."""
        sock = self._sock
        try:
            sock.settimeout(self._body_timeout)
            data = sock.recv(RECV_SIZE)
        except TimeoutError as exc:
            raise HTTPError(408, "request body timed out") from exc
        except OSError as exc:
            self._eof = True
            raise ClientDisconnected() from exc
        finally:
            sock.settimeout(self._limits.header_timeout)
        if not data:
            self._eof = True
            raise ClientDisconnected()
        self._feed(data)

    def _take_over(self, rest: bytes) -> Callable[[], tuple]:
        """For a request asking to switch protocols: what hands a raw handler the socket to tunnel."""
        def take_over() -> tuple:
            self._eof = True  # the handler owns the socket now: no lingering afterwards
            if self._reader is not None:  # nor a watcher of ours on it
                self._reader.close()
                self._reader = None
            return self._sock, rest
        return take_over

    def _send(self, data: bytes) -> None:
        """sendall that tries one plain send() first (gevent's sendall costs a getsockopt per call)."""
        try:
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self._sock.sendall(memoryview(data)[sent:])
        except OSError as exc:
            self._eof = True
            raise ClientDisconnected() from exc

    def _continue(self) -> None:
        """Send `100 Continue` when the app first reads a body the client holds back."""
        if not self._current.sent:
            self._send(_CONTINUE)

    def _closing(self) -> bool:
        """Whether the response being started must end the connection (drain, or a body never asked for)."""
        return self._server.draining or self._reading.awaiting_continue

    def _wait_idle(self) -> bytes:
        """Read the start of the next request, waiting up to keepalive_timeout (TimeoutError after it).
        One timer per connection, re-armed for each wait: a gevent Timeout per wait is a new libev
        watcher and eight Python calls, about 5% of a small request's instructions."""
        timer = self._idle_timer
        if timer is None:
            # priority -1, as gevent's Timeout: bytes that arrived in the same loop turn win over the timer
            seconds = self._limits.keepalive_timeout
            timer = self._idle_timer = get_hub().loop.timer(seconds, seconds, priority=-1)
        # again(), not start(): libev's start() would resume the time left when the timer was last stopped;
        # update: count from now, not from the loop turn's start, which a busy turn leaves far behind
        timer.again(self.greenlet.throw, TimeoutError, update=True)
        try:
            return self._read(None)
        finally:
            timer.stop()

    def _read(self, timeout: float | None) -> bytes:
        """The next bytes from the client, waiting up to `timeout` seconds (None: no limit of its own),
        on the connection's kept watcher, or with gevent's wait for a TLS stream."""
        if self._reader is not None:
            return self._reader.recv(RECV_SIZE, timeout)
        self._settimeout(timeout)
        return recv_when_readable(self._sock, self._raw, RECV_SIZE)

    def _next(self) -> tuple | None:
        """Wait for the next complete request head; None when the connection should end."""
        ready = self._ready
        limits = self._limits
        while not ready:
            if self._dead:
                return None
            deadline = self._deadline
            try:
                if deadline is None:
                    data = self._wait_idle()
                else:
                    timeout = deadline - monotonic()
                    if timeout <= 0:
                        raise TimeoutError
                    data = self._read(timeout)
            except TimeoutError:
                if self._headers is not None or self._stall or self._buf:
                    self._refuse(HTTPError(408))
                return None
            except OSError:
                self._eof = True
                return None
            if not data:
                self._eof = True
                return None
            if self._deadline is None:
                # any byte starts the header clock: blank lines llhttp skips must not renew an idle wait forever
                self._deadline = monotonic() + limits.header_timeout
            if self._parser is None:
                self._feed_heads(data)
            else:
                self._feed(data)
        return ready.popleft()

    def _send_error(self, error: HTTPError, request: Request | None = None) -> None:
        """Send the answer to a refused request (the raw handler's `refused` rendering, else the canned
        one); the connection closes afterwards."""
        if self._refused is not None:
            if request is not None:
                method, target = request.method, request.target
            elif self._parser is None:
                method, target = _request_line(self._buf)[0], self._url
            else:
                method = self._parser.get_method().decode("latin-1") if self._headers is not None else "-"
                target = self._url
            data = self._refused(error.status, str(error), request, method, target)
        else:
            data = ERROR_RESPONSES[error.status]
        try:
            self._sock.sendall(data)
        except OSError:
            self._eof = True

    def _refuse(self, error: HTTPError, request: Request | None = None) -> None:
        """Answer a request the engine rejected before the app saw it, and log it."""
        self._send_error(error, request)
        if self._access_log is not None:
            self._access_log(request.method if request else "-",
                             (request.target if request else self._url).decode("latin-1"), error.status, 0.0)

    def _dispatch(self, request: Request) -> bool:
        """Answer one request (raw handler, else the WSGI app) and send its response; True to keep the connection open."""
        server = self._server
        self._current = request
        inp = self._reading = request.input
        if server.draining:
            request.keep_alive = False
        log = self._access_log
        started = perf_counter() if log is not None else 0.0
        self.busy = True
        server.active_requests += 1
        self._settimeout(self._limits.header_timeout)
        status = None
        try:
            if self._raw_handler is not None:
                status = self._raw_handler(request)
            if status is None:
                status = self._run_app(request)
            keep = request.keep_alive and not server.draining and (
                inp.done or (not inp.awaiting_continue and inp.discard(DISCARD_LIMIT))
            )
        except HTTPError as exc:
            keep = False
            status = request.status or exc.status
            if not request.sent and not isinstance(exc, ClientDisconnected):
                self._send_error(exc, request)
        except Exception:
            traceback.print_exc(file=self._base.get("wsgi.errors", sys.stderr))
            keep = False
            status = request.status or 500
            if not request.sent:
                self._send_error(HTTPError(500), request)
        finally:
            self.busy = False
            server.active_requests -= 1
        if log is not None:
            log(request.method, request.target.decode("latin-1"), status or 0, (perf_counter() - started) * 1000.0)
        return keep

    def _run_app(self, request: Request) -> int:
        """Run the WSGI app for `request`; a chunked body that ends within `chunked_readahead` bytes is read
        first and given a CONTENT_LENGTH, since frameworks such as Bottle read nothing without one."""
        env = build_environ(self._base, request)
        inp = request.input
        readahead = self._limits.chunked_readahead
        if request.chunked and readahead and inp.prefetch(readahead):
            env["CONTENT_LENGTH"] = str(inp.buffered)
        resp = Response(request.send, self._closing, request.method == "HEAD", request.version == "HTTP/1.0",
                        request.keep_alive)
        try:
            result = self._app(env, resp.start_response)
            try:
                if inp.error is not None and not resp.headers_sent:
                    raise inp.error
                resp.finish(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            request.status = resp.code
        request.keep_alive = resp.keep_alive
        return resp.code

    def _linger(self, unread: bool) -> None:
        """Half-close and read and drop what the client still sends (until its FIN, lingering_time in all,
        or lingering_timeout between reads), so our last answer is not lost to a reset. With no request
        bytes known to be unread (an idle close, a complete request), one short wait is enough."""
        limits = self._limits
        sock = self._sock
        try:
            sock.shutdown(SHUT_WR)
            if unread:
                end, gap = monotonic() + limits.lingering_time, limits.lingering_timeout
            else:
                end = monotonic() + min(SHORT_LINGER, limits.lingering_time)
                gap = SHORT_LINGER
            while True:
                left = end - monotonic()
                if left <= 0:
                    return
                sock.settimeout(min(left, gap))
                if not sock.recv(RECV_SIZE):
                    return
        except OSError:
            return

    def run(self) -> None:
        """Answer requests in order until the client, an error, a limit or a drain ends the connection."""
        try:
            self._serve()
        finally:
            if self._idle_timer is not None:
                self._idle_timer.close()
            if self._reader is not None:
                self._reader.close()

    def _serve(self) -> None:
        """The request loop of run(), then the lingering close."""
        unread = False  # whether the client may still be sending a request we did not read
        while True:
            item = self._next()
            if item is None:
                unread = self._headers is not None or self._stall > 0 or bool(self._buf)
                break
            request, error = item
            if request is None:
                self._refuse(error)
                unread = True
                break
            if request.input.error is not None:
                self._refuse(request.input.error, request)
                unread = True
                break
            if not self._dispatch(request):
                unread = not request.input.done
                break
            if self._headers is not None or self._buf:
                self._deadline = monotonic() + self._limits.header_timeout
        if not self._eof:
            self._linger(unread)


def _request_line(buf: bytes) -> tuple[str, bytes]:
    """(method, target) as far as they can be read from the start of a refused head, for its log line."""
    words = buf.lstrip(b"\r\n").partition(b"\r\n")[0].split(b" ", 2)
    if len(words) < 2:
        return "-", b""
    return words[0].decode("latin-1"), words[1]
