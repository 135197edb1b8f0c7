"""Test helpers for the HTTP engine: a server in its own gevent hub thread, and a raw-socket client."""

import queue
import socket
import threading

import gevent

from microkit.http import HTTPServer


class ServerThread:
    """Runs an HTTPServer on 127.0.0.1:<free port> in a daemon thread with its own gevent hub."""

    def __init__(self, app, **kwargs) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self._kwargs = kwargs
        self._app = app
        self._calls: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """Thread body: start the server, then serve calls posted from the test thread."""
        self.server = HTTPServer(self.listener, self._app, **self._kwargs)
        self.server.start()
        self._wakeup = gevent.get_hub().loop.async_()
        self._wakeup.start(lambda: gevent.spawn(self._run_calls))
        self._ready.set()
        self.server.serve_forever()
        self._wakeup.close()

    def _run_calls(self) -> None:
        """Run every queued call in the hub thread and post its result back."""
        while not self._calls.empty():
            fn, results = self._calls.get()
            try:
                results.put((True, fn(self.server)))
            except Exception as exc:
                results.put((False, exc))

    def call(self, fn, timeout: float = 10.0):
        """Run fn(server) inside the server's hub and return its result."""
        results: queue.Queue = queue.Queue()
        self._calls.put((fn, results))
        self._wakeup.send()
        ok, value = results.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.call(lambda s: (s.stop_accepting(), s.drain(1.0)))
        self._thread.join(5)
        assert not self._thread.is_alive()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    """A client socket to the test server."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Reads whole HTTP responses, one after another, from a client socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._more():
                raise EOFError("connection closed inside a response head")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise EOFError("connection closed inside a response body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        """Read one response: (status, headers with lower-case names, body)."""
        status = int(self._line().split()[1])
        headers = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only or status in (100, 204, 304):
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self._exact(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._exact(size)
                assert self._exact(2) == b"\r\n"
            while self._line():
                pass
            return status, headers, body
        while self._more():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self) -> bool:
        """True when the server closed the connection with nothing left unread."""
        return not self.buf and not self._more()
