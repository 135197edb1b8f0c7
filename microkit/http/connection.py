"""One client connection: llhttp parses requests into a queue, and they are answered strictly in order."""

import traceback
from collections import deque
from socket import SHUT_WR
from time import monotonic, perf_counter

from gevent import getcurrent
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from microkit.http.body import EMPTY, Input
from microkit.http.errors import ERROR_RESPONSES, ClientDisconnected, HTTPError
from microkit.http.wsgi import Response, environ_key, set_target

RECV_SIZE = 65536
DISCARD_LIMIT = 65536
LINGER_SECONDS = 1.0
LINGER_BYTES = 262144
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_UNIQUE = frozenset(("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_HOST"))
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}


class Connection:
    """Parses and answers the requests of one accepted socket; it is also the llhttp callback target."""

    def __init__(self, server, sock, address) -> None:
        self._server = server
        self._app = server.app
        self._access_log = server.access_log
        self._limits = limits = server.limits
        self._max_url = limits.max_request_line - 13
        self._sock = sock
        self._raw = getattr(sock, "_sock", sock)
        peer = address if isinstance(address, tuple) else ("", 0)
        self._base = {**server.environ, "REMOTE_ADDR": peer[0], "REMOTE_PORT": str(peer[1])}
        self._parser = HttpRequestParser(self)
        self._ready: deque = deque()
        self._env: dict | None = None
        self._url = b""
        self._input: Input | None = None
        self._nheaders = 0
        self._hbytes = 0
        self._seen = 0
        self._stall = 0
        self._deadline: float | None = monotonic() + limits.header_timeout
        self._dead = False
        self._eof = False
        self._resp: Response | None = None
        self._reading: Input = EMPTY
        self.busy = False
        self.greenlet = getcurrent()

    # llhttp callbacks: they run inside feed_data and raise HTTPError to reject a request.

    def on_message_begin(self) -> None:
        """Start a new request environ and its header clock."""
        self._env = self._base.copy()
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
        """Add one header to the environ; trailers only count against the limits."""
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
        env = self._env
        text = value.strip(b" \t").decode("latin-1")
        if key in env:
            if key in _UNIQUE:
                raise HTTPError(400, f"duplicate {name.decode('latin-1')}")
            env[key] += ", " + text
        else:
            env[key] = text

    def on_headers_complete(self) -> None:
        """Validate the head (Host, framing, version) and queue the request for the app."""
        self._seen += 1
        self._deadline = None
        env = self._env
        parser = self._parser
        protocol = _PROTOCOLS.get(parser.get_http_version())
        if protocol is None:
            raise HTTPError(505)
        if protocol == "HTTP/1.1" and "HTTP_HOST" not in env:
            raise HTTPError(400, "missing Host")
        env["SERVER_PROTOCOL"] = protocol
        method = parser.get_method()
        env["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
        set_target(env, self._url)
        chunked = "HTTP_TRANSFER_ENCODING" in env
        length = env.get("CONTENT_LENGTH")
        if chunked and (env["HTTP_TRANSFER_ENCODING"].lower() != "chunked" or length is not None):
            raise HTTPError(400, "unsupported Transfer-Encoding")
        max_body = self._limits.max_body
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise HTTPError(400, "invalid Content-Length")
            size = int(length)
            if max_body is not None and size > max_body:
                raise HTTPError(413)
            chunked = size > 0
        if chunked:
            expect = protocol == "HTTP/1.1" and env.get("HTTP_EXPECT", "").lower() == "100-continue"
            inp = self._input = Input(self._fill, max_body, self._continue if expect else None)
        else:
            inp = EMPTY
        env["wsgi.input"] = inp
        self._ready.append((env, parser.should_keep_alive(), inp))

    def on_body(self, body: bytes) -> None:
        """Hand body bytes to the request's wsgi.input."""
        self._seen += 1
        self._input.feed(body)

    def on_message_complete(self) -> None:
        """Mark the body complete; the next bytes start a new request."""
        if self._input is not None:
            self._input.done = True
            self._input = None
        self._env = None

    # reading and answering

    def _reject(self, error: HTTPError) -> None:
        """Stop parsing; the body being read fails with `error`, or `error` is answered in turn."""
        self._dead = True
        if self._input is not None:
            self._input.error = error
        else:
            self._ready.append((None, error, None))

    def _feed(self, data: bytes) -> None:
        """Parse bytes; a whole buffer that completes no header or body piece counts as a stalled line."""
        seen = self._seen
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._dead = True
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

    def _fill(self) -> None:
        """Read more of a request body from the socket (wsgi.input calls this)."""
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError as exc:
            raise HTTPError(408, "request body timed out") from exc
        except OSError as exc:
            self._eof = True
            raise ClientDisconnected() from exc
        if not data:
            self._eof = True
            raise ClientDisconnected()
        self._feed(data)

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
        if not self._resp.headers_sent:
            self._send(_CONTINUE)

    def _closing(self) -> bool:
        """Whether the response being started must end the connection (drain, or a body never asked for)."""
        return self._server.draining or self._reading.awaiting_continue

    def _next(self) -> tuple | None:
        """Wait for the next complete request head; None when the connection should end."""
        ready = self._ready
        limits = self._limits
        sock = self._sock
        while not ready:
            if self._dead:
                return None
            deadline = self._deadline
            timeout = limits.keepalive_timeout if deadline is None else deadline - monotonic()
            try:
                if timeout <= 0:
                    raise TimeoutError
                sock.settimeout(timeout)
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                if self._env is not None or self._stall:
                    self._refuse(408)
                return None
            except OSError:
                self._eof = True
                return None
            if not data:
                self._eof = True
                return None
            self._feed(data)
        return ready.popleft()

    def _send_error(self, status: int) -> None:
        """Send the canned response for `status`; the connection closes afterwards."""
        try:
            self._sock.sendall(ERROR_RESPONSES[status])
        except OSError:
            self._eof = True

    def _refuse(self, status: int) -> None:
        """Answer a request the engine rejected before the app saw it, and log it."""
        self._send_error(status)
        if self._access_log is not None:
            self._access_log("-", self._url.decode("latin-1"), status, 0.0)

    def _dispatch(self, env: dict, keep_alive: bool, inp: Input) -> bool:
        """Run the app for one request and send its response; True to keep the connection open."""
        server = self._server
        resp = self._resp = Response(
            self._send, self._closing, env["REQUEST_METHOD"] == "HEAD", env["SERVER_PROTOCOL"] == "HTTP/1.0",
            keep_alive and not server.draining,
        )
        self._reading = inp
        log = self._access_log
        started = perf_counter() if log is not None else 0.0
        self.busy = True
        server.active_requests += 1
        self._sock.settimeout(self._limits.header_timeout)
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
            keep = resp.keep_alive and not server.draining and (
                inp.done or (not inp.awaiting_continue and inp.discard(DISCARD_LIMIT))
            )
            status = resp.code
        except HTTPError as exc:
            keep = False
            status = resp.code or exc.status
            if not resp.headers_sent and not isinstance(exc, ClientDisconnected):
                self._send_error(exc.status)
        except Exception:
            traceback.print_exc(file=env["wsgi.errors"])
            keep = False
            status = resp.code or 500
            if not resp.headers_sent:
                self._send_error(500)
        finally:
            self.busy = False
            server.active_requests -= 1
        if log is not None:
            log(env["REQUEST_METHOD"], env["RAW_URI"], status, (perf_counter() - started) * 1000.0)
        return keep

    def _linger(self) -> None:
        """Half-close and read what the client still sends, so our last response is not lost to a reset."""
        try:
            self._sock.shutdown(SHUT_WR)
            self._sock.settimeout(LINGER_SECONDS)
            received = 0
            while received < LINGER_BYTES:
                data = self._sock.recv(RECV_SIZE)
                if not data:
                    return
                received += len(data)
        except OSError:
            return

    def run(self) -> None:
        """Answer requests in order until the client, an error, a limit or a drain ends the connection."""
        while True:
            item = self._next()
            if item is None:
                break
            env, keep_alive, inp = item
            if env is None:
                self._refuse(keep_alive.status)
                break
            if inp.error is not None:
                self._refuse(inp.error.status)
                break
            if not self._dispatch(env, keep_alive, inp):
                break
            if self._env is not None:
                self._deadline = monotonic() + self._limits.header_timeout
        if not self._eof:
            self._linger()
