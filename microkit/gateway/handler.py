"""The gateway's one proxy path: every proxied request, whatever its HTTP version or policy.

The engine hands every request to `ProxyHandler` first (its raw-handler extension point,
microkit/http/request.py). The handler normalises the target (origin- or absolute-form), matches
it in the one route table, runs the route's checks (microkit/gateway/checks.py), sends the request
upstream through `Proxy` and relays the answer, all from the parsed head as bytes: no environ, no
WSGI. Only the gateway's own endpoints (under /__microkit/, and POST /auth/token) return None and go
to the Bottle app. Every answer the gateway makes itself (400, 404, 401, 413, 502 ...) has the same
JSON body, and every request gets one access line carrying the request id the client got; the
engine's own refusals (400, 408, 431 ...) come back here through `refused` for the same treatment.
A WebSocket handshake that passed its route's checks becomes a tunnel (microkit/gateway/tunnel.py).
Every request gets W3C trace context (microkit/tracing.py), and every routed one is counted for the
metrics when its access line is written (`meter`, microkit/metrics/gateway.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from urllib.parse import unquote_to_bytes

from microkit import tracing
from microkit.gateway.checks import Answered, Call, Check, header_line
from microkit.gateway.migration import SHADOW_HEADER, Migration
from microkit.gateway.proxy import Proxy, ProxyError, new_request_id, request_id_of
from microkit.gateway.render import AccessLog, access_line, empty_response, error_response
from microkit.gateway.route import Route
from microkit.gateway.routing import BadPath, RouteTable, normalize, split_target
from microkit.gateway.security import Denied
from microkit.gateway.tunnel import UPGRADE_LINES, Pipe, TunnelCount, switching_head, wants_websocket
from microkit.http import Request
from microkit.http.errors import ClientDisconnected, HTTPError

DISCARD_LIMIT = 65536  # what the engine reads and drops after an answer to keep the connection (connection.py)
STALE_CHECK_INTERVAL = 0.5  # how often the plain path calls `before_proxy` (a stale registry warning)
_OWN = object()  # a target for the gateway's own endpoints (the Bottle app)
_UNROUTED = object()  # a target no route matches


def origin_form(target: bytes) -> bytes:
    """The origin-form of a request target: an absolute-form one (RFC 9112 3.2.2) loses its scheme and
    authority; a fragment (which clients should never send) is dropped."""
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not (sep and scheme.lower() in (b"http", b"https")):
            raise BadPath("the request target must be a path or an absolute http(s) URL")
        target = b"/" + rest.partition(b"/")[2]
    if b"#" in target:
        target = target.partition(b"#")[0]
    return target


def below_prefix(path: bytes, prefix: str) -> bytes:
    """The normalised raw `path` without the route's `prefix` segments (a mount point), at least "/"."""
    segments = path.split(b"/")[prefix.count("/") + 1:]
    return b"/" + b"/".join(segments)


class ProxyHandler:
    """The gateway's raw handler (see the module docstring); its collaborators are narrow: the routes
    with their checks, the proxy, the access log and a callable warning of a stale registry snapshot
    (called at most every STALE_CHECK_INTERVAL seconds)."""

    def __init__(self, routes: Iterable[tuple[Route, tuple[Check, ...]]], proxy: Proxy, own_prefix: str,
                 own_paths: Iterable[str] = (), access_log: AccessLog | None = None,
                 before_proxy: Callable[[], None] = lambda: None, migration: Migration | None = None) -> None:
        routes = list(routes)
        if migration is not None:  # the legacy upstream owns every path no route matches
            routes.append((migration.legacy, ()))
        self.table: RouteTable[tuple[Route, tuple[Check, ...], bytes]] = RouteTable(
            (route.prefix, (route, checks, b"X-Forwarded-Prefix: %s\r\n" % route.prefix.encode()))
            for route, checks in routes)
        self.migration = migration
        self.proxy = proxy
        self.own_prefix = own_prefix.encode()
        self.own = frozenset(path.encode() for path in own_paths)
        self.access_log = access_log
        self.before_proxy = before_proxy
        self.tunnels = TunnelCount()
        self._targets: dict[bytes, tuple | object] = {}
        self._next_stale_check = 0.0
        self.meter = None  # a microkit.metrics.gateway.GatewayMeter, set by microkit.metrics.scrape.install

    def __call__(self, request: Request) -> int | None:
        """Proxy `request`; None hands one of the gateway's own endpoints to the Bottle app."""
        started = time.monotonic()
        trace = tracing.from_headers(request.keys, request.headers)
        target = request.target
        known = self._targets.get(target)
        if known is None:
            try:
                known = self._resolve(target)
            except BadPath as exc:
                return self._answer(request, ProxyError(400, str(exc)), started, trace=trace)
        if known is _OWN:
            return None
        if known is _UNROUTED:
            return self._answer(request, ProxyError(404, "no route for this path"), started, trace=trace)
        route, checks, prefix_line, normal, query, upstream_target = known
        if self.migration is not None and route.prefix in self.migration.steered:
            return self.migration_path(request, route, checks, prefix_line, normal, query, started, trace)
        if started >= self._next_stale_check:
            self._next_stale_check = started + STALE_CHECK_INTERVAL
            self.before_proxy()
        call = Call(request, normal, query)
        call.upstream_headers += trace.header_lines()
        rid = None
        sent = 0.0
        try:
            for check in checks:
                check(call)
            if route.strip_prefix and route.prefix != "/":
                call.upstream_headers.append(prefix_line)
            if request.upgrade is not None and wants_websocket(request):
                return self._tunnel(request, route, call, upstream_target, started, trace)
            head, rid = self.proxy.request_head(request, upstream_target, None, call.upstream_headers)
            sent = time.monotonic()
            response, upstream = self.proxy.open(request, head, route.service, route.balancer, route.timeout,
                                                 route.max_body)
        except (ProxyError, Denied, Answered, HTTPError) as exc:
            return self._answer(request, exc, started, call, rid, route, trace)
        try:
            status = self.proxy.relay(request, response, rid, call.response_headers, route.timeout, call.vary)
        except ClientDisconnected:
            self._log(request, 499, started, upstream.address, rid, route, trace, sent)
            raise
        finally:
            upstream.outstanding -= 1
            response.release()
        self._log(request, status, started, upstream.address, rid, route, trace, sent)
        return status

    def _resolve(self, target: bytes) -> tuple | object:
        """What a raw request target leads to: _OWN (the gateway's own endpoints), _UNROUTED, or (route,
        checks, prefix line, normalised path, query, the target sent upstream); remembered for targets
        up to 256 bytes (the route table does not change during a handler's life). BadPath for a target
        that cannot be routed."""
        raw = target
        if target[:1] != b"/" or b"#" in target:
            target = origin_form(target)
        path, query = split_target(target)
        normal = normalize(path)
        decoded = unquote_to_bytes(normal) if b"%" in normal else normal
        if decoded.startswith(self.own_prefix) or decoded in self.own:
            known = _OWN
        else:
            match = self.table.match(decoded.decode("latin-1"))
            if match is None:
                known = _UNROUTED
            else:
                route = match.target[0]
                below = route.strip_prefix and route.prefix != "/"
                upstream_target = (below_prefix(normal, route.prefix) if below else normal) + query
                known = (*match.target, normal, query, upstream_target)
        if len(raw) <= 256:
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[raw] = known
        return known

    def migration_path(self, request: Request, route: Route, checks: tuple[Check, ...], prefix_line: bytes,
                       normal: bytes, query: bytes, started: float, trace: tracing.TraceContext) -> int:
        """The proxy path of a route with a split, a shadow or failover (microkit/gateway/migration.py): the
        split picks the side, a shadow copy may go to the other one, a failed idempotent request may fail
        over to legacy. Other routes, and the legacy route itself, take the plain path above."""
        migration = self.migration
        self.before_proxy()
        call = Call(request, normal, query)
        call.upstream_headers += trace.header_lines()
        rid = None
        sent = 0.0
        shadow = None
        legacy = migration.legacy

        def target_for(side: Route) -> tuple[bytes, list[bytes]]:
            if side is not legacy and side.strip_prefix and side.prefix != "/":
                return below_prefix(normal, side.prefix) + query, [*call.upstream_headers, prefix_line]
            return normal + query, call.upstream_headers

        try:
            for check in checks:
                check(call)
            side = migration.side(route, request)
            upstream_target, extra = target_for(side)
            if request.upgrade is not None and wants_websocket(request):
                call.upstream_headers = extra
                return self._tunnel(request, side, call, upstream_target, started, trace)
            head, rid = self.proxy.request_head(request, upstream_target, None, extra)

            def head_of(other: Route) -> bytes:
                target, lines = target_for(other)
                return self.proxy.request_head(request, target, rid, [*lines, SHADOW_HEADER])[0]
            shadow = migration.shadow(route, side, request, head_of)
            sent = time.monotonic()
            try:
                response, upstream = self.proxy.open(request, head, side.service, side.balancer, side.timeout,
                                                     side.max_body)
            except ProxyError as exc:
                if side is legacy or not migration.failover(route, request, exc):
                    raise
                response = None
            if side is not legacy and (response is None or migration.failover(route, request, None, response.status)):
                if response is not None:
                    upstream.outstanding -= 1
                    response.release()
                if shadow is not None:
                    shadow.primary_failed()
                    shadow = None
                side = legacy
                head = self.proxy.request_head(request, normal + query, rid, call.upstream_headers)[0]
                response, upstream = self.proxy.open(request, head, side.service, side.balancer, side.timeout,
                                                     side.max_body)
        except (ProxyError, Denied, Answered, HTTPError) as exc:
            if shadow is not None:
                shadow.primary_failed()
            return self._answer(request, exc, started, call, rid, route, trace)
        try:
            status = self.proxy.relay(request, response, rid, call.response_headers, side.timeout, call.vary,
                                      tap=shadow.capture if shadow is not None else None)
        except BaseException:
            if shadow is not None:
                shadow.primary_failed()
            if isinstance(sys.exc_info()[1], ClientDisconnected):
                self._log(request, 499, started, upstream.address, rid, route, trace, sent)
            raise
        finally:
            upstream.outstanding -= 1
            response.release()
        if shadow is not None:
            shadow.primary_done(status, response.headers, rid)
        self._log(request, status, started, upstream.address, rid, route, trace, sent)
        return status

    def _tunnel(self, request: Request, route: Route, call: Call, target: bytes, started: float,
                trace: tracing.TraceContext | None = None) -> int:
        """A WebSocket handshake: forwarded with its upgrade lines; a 101 becomes a tunnel (tunnel.py),
        any other answer is relayed and the connection closes."""
        if not self.tunnels.enter(route.prefix, route.websocket_max_tunnels):
            raise ProxyError(503, f"{route.service}: {route.websocket_max_tunnels} WebSocket tunnels are open",
                             (("Retry-After", "1"),))
        try:
            request.keep_alive = False
            head, rid = self.proxy.request_head(request, target, None, [*call.upstream_headers, UPGRADE_LINES])
            response, upstream = self.proxy.open(request, head, route.service, route.balancer, route.timeout,
                                                 route.max_body)
            address = upstream.address
            try:
                if not response.upgraded:
                    status = self.proxy.relay(request, response, rid, call.response_headers, route.timeout, call.vary)
                    self._log(request, status, started, address, rid, route, trace)
                    return status
                request.status = 101
                request.send(switching_head(response, rid, call.answer_headers()))
                client, rest = request.upgrade()
                try:
                    Pipe(client, response.conn.sock, route.websocket_idle_timeout).run(rest, response.rest)
                finally:
                    self._log(request, 101, started, address, rid, route, trace)
                return 101
            finally:
                upstream.outstanding -= 1
                response.release()
        finally:
            self.tunnels.leave(route.prefix)

    def _answer(self, request: Request, exc: Exception, started: float, call: Call | None = None,
                rid: bytes | None = None, route: Route | None = None,
                trace: tracing.TraceContext | None = None) -> int:
        """Answer a request the gateway refuses (or a check answers) itself, and log it; `rid` is the
        request id already sent upstream, if it went that far."""
        if rid is None:
            rid = request_id_of(request)
        if isinstance(exc, ClientDisconnected):
            self._log(request, 499, started, None, rid, route, trace)
            raise exc
        extra = call.answer_headers() if call is not None else []
        inp = request.input
        if not inp.done and (request.content_length is None or request.content_length > DISCARD_LIMIT):
            request.keep_alive = False  # an early answer: the engine lingers, then closes (connection.py)
        if isinstance(exc, HTTPError):
            request.keep_alive = False
        close = request.must_close()
        if close:
            request.keep_alive = False
        status = request.status = exc.status
        if isinstance(exc, Answered):
            data = empty_response(status, rid, [*_lines(exc.headers), *extra], close)
        else:
            message = exc.message if isinstance(exc, Denied) else str(exc)
            data = error_response(status, message, rid, [*_lines(getattr(exc, "headers", ())), *extra], close)
        request.send(data)
        self._log(request, status, started, None, rid, route, trace)
        return status

    def refused(self, status: int, message: str, request: Request | None, method: str, target: bytes) -> bytes:
        """The engine's refusal of a request (malformed, too large, too slow) as the gateway answers
        any: a JSON error with a request id, and an access line."""
        rid = request_id_of(request) if request is not None else new_request_id().encode()
        if self.access_log is not None:
            self.access_log(access_line(method, target.decode("latin-1"), status, time.monotonic(), "-",
                                        rid.decode("latin-1")))
        return error_response(status, message, rid, (), close=True)

    def _log(self, request: Request, status: int, started: float, upstream: tuple[str, int] | None, rid: bytes,
             route: Route | None = None, trace: tracing.TraceContext | None = None, sent: float = 0.0) -> None:
        """The access line, and the route's metrics (`upstream`: the instance's address, None if the gateway
        answered; `sent`: when the request went upstream, 0 if it did not)."""
        if route is not None and self.meter is not None:
            self.meter.record(route, request.method, status, started, sent, rid, trace)
        log = self.access_log
        if log is not None:
            log(access_line(request.method, request.target.decode("latin-1"), status, started,
                            "%s:%d" % upstream if upstream is not None else "-", rid.decode("latin-1"),
                            trace.trace_id.decode() if trace is not None else ""))


def _lines(headers: Iterable[tuple[str, str]]) -> list[bytes]:
    return [header_line(name, value) for name, value in headers]
