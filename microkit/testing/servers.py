"""What every thing a test starts has in common: a socket bound before it serves (port 0, picked by the
kernel as it is bound, never a port chosen beforehand and bound later), a client pointed at it, and
a way to stop. In-process services and fakes (`inprocess`, `fakes`) are served by `ThreadedApp`;
`microkit run` and `microkit gateway` (`processes`) bind their own sockets.
"""

from __future__ import annotations

import socketserver
import threading
import time
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from microkit.testing.client import Client

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL = 0.05


class StartError(RuntimeError):
    """A service or the gateway did not come up; the message carries the end of its log."""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, check: Callable[[], None] = lambda: None,
             detail: Callable[[], str] = lambda: "") -> Any:
    """Poll `condition` until it returns something true; `check` raises early when waiting is pointless,
    and `detail` adds to the message on a timeout (the end of a log, say)."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StartError(f"{what}: not ready within {timeout:g}s{detail()}")
        time.sleep(POLL)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request on stderr: pytest shows what the test printed, not the server's chatter."""


class _ThreadedServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class ThreadedApp:
    """Serves a WSGI app on 127.0.0.1 (a port the kernel picks as the socket is bound) in a daemon thread."""

    def __init__(self, app: Callable) -> None:
        self.server = _ThreadedServer(("127.0.0.1", 0), _QuietHandler)
        self.server.set_app(app)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"microkit-testing-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)


class Running(Client):
    """A started service (or fake, or gateway): a Client pointed at it, with its `name` and `url`."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(url)
        self.name = name
        self.url = url
        self.consumer_pids: list[int] = []  # its consumer processes, for a service with events handlers

    def terminate(self) -> None:
        """Begin stopping without waiting (processes stop side by side at the end of a test)."""

    def stop(self) -> None:
        raise NotImplementedError
