"""The gateway's fast path: proxied requests answered from the engine's raw request, without WSGI.

The engine hands every request to `FastPath` first (its raw-handler extension point,
microkit/http/request.py). A request on a proxied route goes straight from the parsed head to the
upstream and back: no environ, no Bottle, no re-serialised WSGI response; the upstream head is
filtered as bytes and sent with the body in one send when the body is small. Everything else
returns None and goes through the Bottle app as before: admin endpoints under /__microkit/, paths
with no route (404), paths normalisation refuses (400), HTTP/1.0, and routes whose Bottle plugins
cannot run here. Both paths share Proxy (microkit/gateway/proxy.py), so forwarding semantics
(hop-by-hop removal, X-Forwarded-*, request ids, retries, 413/502/503/504) are the same.

Why per-route policies still fit: a Bottle plugin applied to a route keeps that route on the fast
path only if it offers `fast_check(route) -> check | None` (None: nothing to do for this route).
`check(call: FastCall)` runs before anything is read or forwarded: it may raise ProxyError to answer
(401, 403, 429: JSON like every gateway error), add or strip upstream headers (identity, after
stripping spoofed copies), add response headers (RateLimit-*, CORS), or return False to send this
request through Bottle after all (e.g. a CORS preflight). A plugin without `fast_check` sends its
routes through Bottle, which is always correct, only slower. Bottle's own JSON and template plugins
do nothing to a proxied response and are ignored. So auth and rate limits cost what their checks
cost, not a WSGI round trip; the plugin is still one class holding both forms.

Checks run in the order the Bottle wrappers would (the plugin installed first runs first), and share the
request's `info()` (what the security checks read) and the `identity` an auth check found. A check that
sets `vary` has that token merged into the upstream's Vary header (or sent as one when there is none).
The gateway's own endpoints (`own` paths: admin, token exchange) always go through Bottle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import bottle

from microkit.gateway.proxy import RESPONSE_DROP, ProxyError, lower_name, phrase, request_id_of, response_named
from microkit.gateway.routing import BadPath, RouteTable, normalize, split_target
from microkit.gateway.security import Denied, Identity, RequestInfo, redact_target
from microkit.gateway.upstream import BrokenResponse
from microkit.http import Request
from microkit.http.wsgi import _date_line

if TYPE_CHECKING:
    from microkit.gateway.app import Gateway, Route

NEUTRAL_PLUGINS = (bottle.JSONPlugin, bottle.TemplatePlugin)
_ERROR_HEAD = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               b"X-Request-Id: %s\r\n%s%s\r\n")


class FastCall:
    """One request on the fast path, as a fast check sees it; checks may add to the three lists."""

    __slots__ = ("request", "route", "path", "query", "strip", "upstream_headers", "response_headers", "identity",
                 "vary", "_info")

    def __init__(self, request: Request, route: Route, path: bytes = b"/", query: bytes = b"") -> None:
        self.request = request
        self.route = route
        self.path = path
        self.query = query
        self.strip: set[str] = set()
        self.upstream_headers: list[bytes] = []
        self.response_headers: list[bytes] = []
        self.identity: Identity | None = None
        self.vary: bytes | None = None
        self._info: RequestInfo | None = None

    def info(self) -> RequestInfo:
        """The request as the security checks read it (built once, on first use)."""
        if self._info is None:
            request = self.request
            self._info = RequestInfo.from_head(request.method, self.path.decode("latin-1"), request.headers,
                                               request.peer, self.query[1:].decode("latin-1"))
        return self._info

    def add_upstream(self, name: str, value: str) -> None:
        """Send this header upstream (after `strip`ping the environ key of any client copy)."""
        self.upstream_headers.append(_line(name, value))

    def add_response(self, name: str, value: str) -> None:
        """Send this header to the client with the response."""
        self.response_headers.append(_line(name, value))


Check = Callable[[FastCall], "bool | None"]


def _merged_vary(value: bytes, token: bytes) -> bytes:
    """An upstream Vary value with `token` added (unless already listed, or the value is "*")."""
    listed = {item.strip().lower() for item in value.split(b",")}
    if b"*" in listed or token.lower() in listed:
        return value
    return value + b", " + token if value.strip() else token


def _line(name: str, value: str) -> bytes:
    line = f"{name}: {value}\r\n"
    if line.count("\n") != 1 or line.count("\r") != 1:
        raise ValueError("CR or LF inside a header")
    return line.encode("latin-1")


class FastPath:
    """The gateway's raw handler (see the module docstring)."""

    def __init__(self, gateway: Gateway, admin_prefix: str, own: tuple[str, ...] = ()) -> None:
        self.gateway = gateway
        self.proxy = gateway.proxy
        self.table: RouteTable[Route] = RouteTable((route.prefix, route) for route in gateway.routes)
        self.admin = admin_prefix.encode()
        self.own = frozenset(path.encode() for path in own)
        self._checks: dict[str, tuple[Check, ...] | None] = {}
        self._plugins_seen = -1

    def checks(self, route: Route) -> tuple[Check, ...] | None:
        """The fast checks of a route's Bottle plugins, or None if one of them has no fast form."""
        app = self.gateway.app
        if self._plugins_seen != len(app.plugins):
            self._checks.clear()
            self._plugins_seen = len(app.plugins)
        if route.prefix not in self._checks:
            found: dict[int, Check | None] = {}  # one check per plugin, though it applies to several Bottle routes
            usable = True
            for broute in app.routes:
                if broute.config.get("microkit.route") is not route:
                    continue
                for plugin in broute.all_plugins():
                    if isinstance(plugin, NEUTRAL_PLUGINS) or id(plugin) in found:
                        continue
                    fast = getattr(plugin, "fast_check", None)
                    if fast is None:
                        usable = False
                        break
                    found[id(plugin)] = fast(broute)
            checks = tuple(check for check in reversed(found.values()) if check is not None)
            self._checks[route.prefix] = checks if usable else None
        return self._checks[route.prefix]

    def __call__(self, request: Request) -> int | None:
        """Proxy `request` if it is on a fast route; None hands it to the Bottle app."""
        if request.version != "HTTP/1.1":
            return None
        if b"#" in request.target:
            return None  # the engine strips a fragment from PATH_INFO: let the Bottle path see the same thing
        path, query = split_target(request.target)
        try:
            normal = normalize(path)
        except BadPath:
            return None
        decoded = unquote_to_bytes(normal) if b"%" in normal else normal
        if not normal.isascii() or decoded.startswith(self.admin) or decoded in self.own:
            return None
        match = self.table.match(decoded.decode("latin-1"))
        if match is None:
            return None
        route = match.target
        checks = self.checks(route)
        if checks is None:
            return None
        started = time.monotonic()
        self.gateway._warn_if_stale()
        call = FastCall(request, route, normal, query)
        rid = None
        try:
            for check in checks:
                if check(call) is False:
                    return None
            head, rid = self.proxy.request_head(request, normal + query, None, frozenset(call.strip),
                                                call.upstream_headers)
            response, upstream = self.proxy.open(request, head, route.service, route.balancer, route.timeout)
        except (ProxyError, Denied) as exc:
            extra = call.response_headers
            if call.vary is not None:
                extra = [*extra, b"Vary: " + call.vary + b"\r\n"]
            status = self._error(request, exc, rid, extra)
            self._log(request, status, started, "-", rid)
            return status
        try:
            status = self._relay(request, response, rid, call.response_headers, route.timeout, call.vary)
        finally:
            upstream.outstanding -= 1
            response.release()
        self._log(request, status, started, "%s:%d" % upstream.address, rid)
        return status

    def _relay(self, request: Request, response, rid: bytes, extra: list[bytes], timeout: float,
               vary: bytes | None = None) -> int:
        """Send the upstream response to the client: filtered head, then the body as it arrives."""
        status = request.status = response.status
        headers = response.headers
        named = response_named(headers)
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, response.reason.strip() or phrase(status).encode())]
        has_date = False
        length = None
        for name, value in headers:
            lower = lower_name(name)
            if lower in RESPONSE_DROP or lower.startswith(b"proxy-") or lower in named:
                continue
            if lower == b"content-length":
                length = value
            elif lower == b"date":
                has_date = True
            elif vary is not None and lower == b"vary":
                value = _merged_vary(value, vary)
                vary = None
            parts += (name, b": ", value, b"\r\n")
        parts += (b"X-Request-Id: ", rid, b"\r\n")
        parts += extra
        if vary is not None:
            parts += (b"Vary: ", vary, b"\r\n")
        if not has_date:
            parts.append(_date_line().encode())
        bodyless = request.method == "HEAD" or status < 200 or status == 204 or status == 304
        chunked = not bodyless and length is None
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if request.must_close():
            request.keep_alive = False
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if response.complete:
            body = response.take()
            if bodyless:
                body = b""
            elif chunked:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            parts.append(body)
            request.send(b"".join(parts))
            return status
        request.send(b"".join(parts))
        response.conn.sock.settimeout(timeout)
        sent = 0
        try:
            for chunk in response.body():
                if chunked:
                    request.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    sent += len(chunk)
                    request.send(chunk)
        except BrokenResponse:
            request.keep_alive = False
            return status
        if chunked:
            request.send(b"0\r\n\r\n")
        elif not bodyless and sent != int(length):
            request.keep_alive = False
        return status

    def _error(self, request: Request, exc: ProxyError | Denied, rid: bytes | None, extra: list[bytes]) -> int:
        """Answer a request the gateway refuses itself, with the same JSON body as the Bottle path."""
        if rid is None:
            rid = request_id_of(request)
        body = json.dumps({"error": str(exc), "status": exc.status, "request_id": rid.decode("latin-1")}).encode()
        more = b"".join(_line(name, value) for name, value in exc.headers) + b"".join(extra)
        if request.must_close():
            request.keep_alive = False
            more += b"Connection: close\r\n"
        request.status = exc.status
        request.send(_ERROR_HEAD % (exc.status, phrase(exc.status).encode(), len(body), rid, more,
                                    _date_line().encode()) + body)
        return exc.status

    def _log(self, request: Request, status: int, started: float, upstream: str, rid: bytes | None) -> None:
        log = self.gateway.access_log
        if log is not None:
            log(f"{request.method} {redact_target(request.target.decode('latin-1'))} {status} "
                f"{(time.monotonic() - started) * 1000:.1f}ms -> {upstream} id={(rid or b'-').decode('latin-1')}")
