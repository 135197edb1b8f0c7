"""Socket reads for request/response traffic on gevent."""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial

from gevent import get_hub
from gevent._socketcommon import SocketMixin
from greenlet import getcurrent

_EV_READ = 1

_SET_TIMEOUT = SocketMixin.timeout.__set__


def recv_when_readable(sock: socket.socket, raw: socket.socket, size: int) -> bytes:
    """Wait until `sock` (a gevent socket) is readable, then read from `raw` (its underlying socket).

    Between keep-alive requests, and just after a request went upstream, the buffer is almost always
    empty: gevent's recv() would first pay a failing system call and an exception to learn that
    (about 10% of a small request's CPU). The socket's timeout still applies to the wait. This uses
    gevent's socket internals (`_wait`, `_read_event`), which have been stable since gevent 1.0.
    """
    while True:
        sock._wait(sock._read_event)
        try:
            return raw.recv(size)
        except BlockingIOError:
            continue


class Reader:
    """Reads of one connection's socket, waiting on one libev read watcher started once for the
    connection's life, instead of gevent's wait, which starts its watcher for each wait and stops it
    after: libev keeps a stopped socket in epoll, so each start re-adds it, a failing `epoll_ctl` (EEXIST)
    per request. Between waits the watcher holds no reference on the loop and, should bytes arrive
    (a pipelined request, the client's FIN), stops itself, since a level-triggered watcher would fire
    on every loop turn; the next wait starts it again. Only for gevent sockets (`socket._sock` is the
    plain one read from); `close()` before the socket closes."""

    __slots__ = ("raw", "watcher", "hub", "_unasked_callback")

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self.hub = get_hub()
        self.watcher = self.hub.loop.io(raw.fileno(), _EV_READ, ref=False)
        self._unasked_callback = self._unasked
        self.watcher.start(self._unasked_callback)

    def _unasked(self) -> None:
        self.watcher.stop()

    def recv(self, size: int, timeout: float | None = None) -> bytes:
        """Wait until readable, then read up to `size` bytes; TimeoutError after `timeout` seconds (None:
        no limit here; the caller's timer may throw into the greenlet instead)."""
        watcher = self.watcher
        current = getcurrent()
        if not watcher.active:
            watcher.start(self._unasked_callback)
        watcher.callback = current.switch
        watcher.ref = True
        timer = None
        if timeout is not None:
            timer = self.hub.loop.timer(max(timeout, 0.0))
            timer.start(current.throw, TimeoutError)
        try:
            while True:
                self.hub.switch()
                try:
                    return self.raw.recv(size)
                except BlockingIOError:
                    continue
        finally:
            if timer is not None:
                timer.close()
            watcher.callback = self._unasked_callback
            watcher.ref = False

    def close(self) -> None:
        self.watcher.close()


def timeout_setter(sock) -> Callable[[float], None]:
    """`sock.settimeout` for the engine's own timeouts, which are always valid floats: on a gevent socket
    it sets the `timeout` slot its waits read, skipping settimeout's checks (twice a request, about 3% of
    a small request's instructions). Any other socket (a TLS stream) keeps its own settimeout."""
    if isinstance(sock, SocketMixin):
        return partial(_SET_TIMEOUT, sock)
    return sock.settimeout
