"""Socket reads for request/response traffic on gevent."""

from __future__ import annotations

import socket


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
