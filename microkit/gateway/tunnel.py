"""WebSocket tunnels: a request with `Upgrade: websocket`, once its route's checks passed and the
instance answered 101, becomes a byte pipe between client and instance.

Only `websocket` is tunnelled; any other Upgrade (h2c ...) is stripped like every hop-by-hop header
and answered as plain HTTP. Bytes are pumped both ways until one side closes; that side's close is
passed on as a half-close, and the other direction runs until it ends too. A tunnel with no byte in
either direction for the route's `websocket_idle_timeout` is closed; a route holds at most
`websocket_max_tunnels` open tunnels per gateway worker (503 above). When the gateway stops or
reloads, open tunnels get the graceful time like any request; then the client gets a close frame
1001 (going away) and the instance one too, and both sockets close.
"""

from __future__ import annotations

from socket import SHUT_WR
from time import monotonic

import gevent

from microkit.gateway.proxy import RESPONSE_DROP, lower_name, response_named
from microkit.gateway.render import phrase
from microkit.gateway.upstream import Response
from microkit.http import Request

UPGRADE_LINES = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
# Close frames with status 1001 (going away): unmasked to the client, masked (all-zero key) to the instance.
CLOSE_TO_CLIENT = b"\x88\x02\x03\xe9"
CLOSE_TO_INSTANCE = b"\x88\x82\x00\x00\x00\x00\x03\xe9"
RECV_SIZE = 65536


def wants_websocket(request: Request) -> bool:
    """A GET asking to switch to the WebSocket protocol (RFC 6455 4.1)."""
    if request.upgrade is None or request.method != "GET" or request.version != "HTTP/1.1":
        return False
    for key, (_, value) in zip(request.keys, request.headers):
        if key == "HTTP_UPGRADE":
            return value.strip().lower() == b"websocket"
    return False


def switching_head(response: Response, rid: bytes, extra: list[bytes]) -> bytes:
    """The 101 head for the client: the instance's headers (hop-by-hop ones dropped), the upgrade
    lines, X-Request-Id and what the checks added."""
    named = response_named(response.headers)
    parts = [b"HTTP/1.1 101 %s\r\n" % (response.reason.strip() or phrase(101).encode())]
    for name, value in response.headers:
        lower = lower_name(name)
        if lower in RESPONSE_DROP or lower.startswith(b"proxy-") or lower in named:
            continue
        parts += (name, b": ", value, b"\r\n")
    parts += (UPGRADE_LINES, b"X-Request-Id: ", rid, b"\r\n", *extra, b"\r\n")
    return b"".join(parts)


class Pipe:
    """Both directions of one tunnel, each in its own greenlet."""

    def __init__(self, client, upstream, idle_timeout: float) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.last = monotonic()

    def _copy(self, source, target, first: bytes) -> str:
        """Copy until `source` closes ("eof", passed on as a half-close), idles or fails."""
        try:
            if first:
                target.sendall(first)
            while True:
                try:
                    data = source.recv(RECV_SIZE)
                except TimeoutError:
                    if monotonic() - self.last >= self.idle_timeout:
                        return "idle"
                    continue
                if not data:
                    target.shutdown(SHUT_WR)
                    return "eof"
                self.last = monotonic()
                target.sendall(data)
        except OSError:
            return "error"

    def run(self, client_rest: bytes, upstream_rest: bytes) -> None:
        """Pump until both sides closed, or either idled or failed; a kill (a drain) sends close frames."""
        for sock in (self.client, self.upstream):
            sock.settimeout(min(self.idle_timeout, 1.0))
        up = gevent.spawn(self._copy, self.client, self.upstream, client_rest)
        down = gevent.spawn(self._copy, self.upstream, self.client, upstream_rest)
        try:
            first = gevent.wait([up, down], count=1)[0]
            other = down if first is up else up
            if first.value == "eof":
                other.join()
            else:
                other.kill()
        except gevent.GreenletExit:
            gevent.killall([up, down])
            self._going_away()
            raise
        finally:
            self.upstream.close()

    def _going_away(self) -> None:
        for sock, frame in ((self.client, CLOSE_TO_CLIENT), (self.upstream, CLOSE_TO_INSTANCE)):
            try:
                sock.settimeout(1.0)
                sock.sendall(frame)
                sock.shutdown(SHUT_WR)
            except OSError:
                pass


class TunnelCount:
    """Open tunnels per route prefix (in this gateway worker)."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def enter(self, prefix: str, cap: int) -> bool:
        count = self.open.get(prefix, 0)
        if count >= cap:
            return False
        self.open[prefix] = count + 1
        return True

    def leave(self, prefix: str) -> None:
        self.open[prefix] -= 1
