"""Socket reads for request/response traffic on gevent."""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial

from gevent._socketcommon import SocketMixin

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


def timeout_setter(sock) -> Callable[[float], None]:
    """`sock.settimeout` for the engine's own timeouts, which are always valid floats: on a gevent socket
    it sets the `timeout` slot its waits read, skipping settimeout's checks (twice a request, about 3% of
    a small request's instructions). Any other socket (a TLS stream) keeps its own settimeout."""
    if isinstance(sock, SocketMixin):
        return partial(_SET_TIMEOUT, sock)
    return sock.settimeout
