"""HTTPServer: accepts on a shared listening socket and serves a WSGI app, one greenlet per connection,
over plain TCP or TLS."""

from collections.abc import Callable
from socket import AF_INET, AF_INET6, IPPROTO_TCP, TCP_NODELAY

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from microkit.http.connection import Connection
from microkit.http.limits import Limits
from microkit.http.request import RawHandler
from microkit.http.wsgi import server_environ
from microkit.tls import TLSStream

AccessLog = Callable[[str, str, int, float], None]


class HTTPServer:
    """The HTTP/1.1 engine: strict parsing, keep-alive, pipelining, limits and graceful drain.

    `raw_handler` (default: the app's `microkit_raw_handler` attribute, if any) sees every request
    first and may answer it without WSGI; see microkit/http/request.py. With `ssl_context` (a
    gevent.ssl.SSLContext, see microkit.tls.server_context) every connection is TLS: the handshake
    runs in the connection's greenlet within `limits.header_timeout`, and requests carry
    `wsgi.url_scheme` "https" (which the gateway forwards as X-Forwarded-Proto).
    """

    def __init__(
        self,
        listener,
        app: Callable,
        limits: Limits | None = None,
        access_log: AccessLog | None = None,
        base_environ: dict | None = None,
        raw_handler: RawHandler | None = None,
        ssl_context=None,
    ) -> None:
        listener.setblocking(False)
        name = listener.getsockname()
        host, port = (name[0], name[1]) if isinstance(name, tuple) else (str(name), 0)
        self.app = app
        self.raw_handler = raw_handler or getattr(app, "microkit_raw_handler", None)
        self.limits = limits or Limits()
        self.access_log = access_log
        if ssl_context is not None:
            base_environ = {"wsgi.url_scheme": "https", "HTTPS": "on", **(base_environ or {})}
        self.environ = server_environ(host, port, base_environ)
        self.ssl_context = ssl_context
        self.active_requests = 0
        self.draining = False
        self._tcp = listener.family in (AF_INET, AF_INET6)
        self._connections: set[Connection] = set()
        self._stopping = False
        self._stopped = Event()
        self._server = StreamServer(listener, self._handle)

    def start(self) -> None:
        """Start accepting in the gevent hub and return at once."""
        if not self._server.started:
            self._server.start()

    def serve_forever(self) -> None:
        """Serve until stop_accepting() was called and every connection has ended (or drain() returned)."""
        self.start()
        self._stopped.wait()

    def stop_accepting(self) -> None:
        """Take no new connections; closes only this process's copy of the listener."""
        if not self._stopping:
            self._stopping = True
            self._server.close()
            if not self._connections:
                self._stopped.set()

    def drain(self, timeout: float) -> int:
        """Close idle connections, give in-flight requests `timeout` seconds, kill the rest; return how many were killed."""
        self.draining = True
        for conn in list(self._connections):
            if not conn.busy:
                conn.greenlet.kill(block=False)
        gevent.joinall([conn.greenlet for conn in self._connections], timeout=timeout)
        left = list(self._connections)
        killed = sum(1 for conn in left if conn.busy)
        gevent.killall([conn.greenlet for conn in left], block=True, timeout=1.0)
        if self._stopping:
            self._stopped.set()
        return killed

    def _handle(self, sock, address) -> None:
        """Serve one accepted connection (StreamServer closes the socket afterwards)."""
        if self._tcp:
            try:
                sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
            except OSError:
                return
        if self.ssl_context is not None:
            sock = self._handshake(sock)
            if sock is None:
                return
        conn = Connection(self, sock, address)
        self._connections.add(conn)
        try:
            conn.run()
        finally:
            self._connections.discard(conn)
            if self._stopping and not self.draining and not self._connections:
                self._stopped.set()
            if self.ssl_context is not None:
                sock.close()

    def _handshake(self, sock) -> TLSStream | None:
        """The TLS side of an accepted socket once its handshake is done; None (closed) when it fails or
        takes longer than the header timeout."""
        sock.settimeout(self.limits.header_timeout)
        try:
            tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            return None
        try:
            tls.do_handshake()
        except (OSError, ValueError):
            tls.close()
            return None
        return TLSStream(tls)
