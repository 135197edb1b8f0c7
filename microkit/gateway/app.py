"""The gateway: a Bottle app that routes each request by path prefix to an instance from the registry.

Every configured route becomes Bottle routes (the prefix itself, and everything below it), added
longest prefix first so the longest one wins; each Bottle route carries its `Policy` (auth, scopes, rate
limit, CORS) in its config, where the plugins read it (microkit/gateway/plugins.py, installed in
`_build_app` and nowhere else). The gateway's own endpoints: `/__microkit/health` (open),
`/__microkit/routes` and `/__microkit/instances` (admin API key), `POST /auth/token` (when JWTs are
configured). A WSGI wrapper in front normalises the path first, so Bottle matches what the gateway forwards.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import bottle

from microkit.config import Config
from microkit.gateway import admin
from microkit.gateway.balancer import Balancer
from microkit.gateway.fastpath import FastPath
from microkit.gateway.plugins import POLICY_KEY, UPSTREAM_KEY, AuthPlugin, CorsPlugin, RateLimitPlugin
from microkit.gateway.policy import TOKEN_PATH, Policy, Security, admin_policy, service_policy, token_policy
from microkit.gateway.proxy import Proxy, ProxyError, TrustedProxies
from microkit.gateway.routing import BadPath, normalize_environ
from microkit.gateway.security import Denied, redact_target
from microkit.gateway.upstream import Pool
from microkit.registry import Instance, Snapshot

log = logging.getLogger("microkit.gateway")

ADMIN_PREFIX = "/__microkit"
STALE_WARNING = 5.0


@dataclass(frozen=True)
class Route:
    """One gateway route: where it points and how it is governed."""

    prefix: str
    service: str
    timeout: float
    balancer: Balancer
    policy: Policy = field(default_factory=Policy)


def routes_from_config(config: Config) -> list[Route]:
    """The routing table of a project, longest prefix first."""
    gateway = config.gateway
    routes = [Route(s.route, s.name, s.route_timeout or gateway.timeout, Balancer(s.balance or gateway.balance),
                    service_policy(config, s))
              for s in config.services.values() if s.route is not None]
    return sorted(routes, key=lambda r: (-len(r.prefix), r.prefix))


class Gateway:
    """Routes, balancers and the proxy, kept current from a registry snapshot."""

    def __init__(self, config: Config, *, pool: Pool | None = None,
                 access_log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.routes = routes_from_config(config)
        self.by_service = {route.service: route for route in self.routes}
        self.pool = pool or Pool()
        self.proxy = Proxy(self.pool, trusted=TrustedProxies(config.gateway.trusted_proxies),
                           max_body=config.gateway.max_body)
        self.access_log = access_log if config.gateway.access_log else None
        self.snapshot_age: Callable[[], float] = lambda: 0.0
        self._last_stale_log = 0.0
        self.security = Security(config)
        self.security.prepare([route.policy for route in self.routes])
        self.app = self._build_app()
        own = (TOKEN_PATH,) if self.security.issues_tokens else ()
        self.microkit_raw_handler = FastPath(self, ADMIN_PREFIX, own)

    def update(self, snapshot: Snapshot) -> None:
        """Point each route's balancer at the service's current instances (a registry watcher callback)."""
        for service, route in self.by_service.items():
            instances: list[Instance] = snapshot.get(service, [])
            before = {u.address for u in route.balancer.upstreams}
            route.balancer.update((i.instance_id, i.host, i.port) for i in instances)
            for address in before - {u.address for u in route.balancer.upstreams}:
                self.pool.forget(address)

    def _build_app(self) -> bottle.Bottle:
        app = bottle.Bottle(catchall=True)
        app.config["json.enable"] = False
        app.route(f"{ADMIN_PREFIX}/health", "GET", self._health)
        admin_only = {POLICY_KEY: admin_policy(self.config)}
        app.route(f"{ADMIN_PREFIX}/routes", "GET", admin.routes_view(self), **admin_only)
        app.route(f"{ADMIN_PREFIX}/instances", "GET", admin.instances_view(self), **admin_only)
        if self.security.issues_tokens:
            app.route(TOKEN_PATH, "ANY", admin.token_view(self), **{POLICY_KEY: token_policy(self.config)})
        for route in self.routes:
            handler = self._handler(route)
            paths = ["/", "/<path:path>"] if route.prefix == "/" else \
                [route.prefix, route.prefix + "/", route.prefix + "/<path:path>"]
            for path in paths:
                app.route(path, "ANY", handler, name=None, **{"microkit.route": route, POLICY_KEY: route.policy})
        for code in (400, 404, 405, 500):
            app.error(code)(self._bottle_error)
        # The one place governance is installed; the first installed runs first (and on the fast path too).
        app.install(CorsPlugin())
        app.install(AuthPlugin(self.security, self._denied))
        app.install(RateLimitPlugin(self.security, self._denied))
        return app

    def _handler(self, route: Route) -> Callable[..., Iterable[bytes]]:
        def proxy(path: str = "") -> Iterable[bytes]:
            return self.forward(route)
        return proxy

    def forward(self, route: Route) -> Iterable[bytes]:
        """Proxy the current Bottle request along `route`."""
        environ = bottle.request.environ
        self._warn_if_stale()
        try:
            outcome = self.proxy.forward(environ, route.service, route.balancer, route.timeout,
                                         environ.get(UPSTREAM_KEY, ()))
        except ProxyError as exc:
            return self._error(exc.status, str(exc), exc.headers)
        response = bottle.response
        response.status = outcome.status
        has_type = False
        for name, value in outcome.headers:
            response.add_header(name, value)
            has_type = has_type or name.lower() == "content-type"
        environ["microkit.upstream"] = outcome.upstream
        environ["microkit.keep_content_type"] = has_type
        return outcome.body

    def _warn_if_stale(self) -> None:
        age = self.snapshot_age()
        now = time.monotonic()
        if age > STALE_WARNING and now - self._last_stale_log > STALE_WARNING:
            self._last_stale_log = now
            log.warning("registry unreachable: routing to the instances known %.0f s ago", age)

    def _error(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        response = bottle.response
        response.status = status
        response.content_type = "application/json"
        for name, value in headers:
            response.set_header(name, value)
        rid = self.proxy.request_id(bottle.request.environ)
        response.set_header("X-Request-Id", rid)
        return json.dumps({"error": message, "status": status, "request_id": rid}).encode()

    def _denied(self, denied: Denied) -> bytes:
        return self._error(denied.status, denied.message, denied.headers)

    def _bottle_error(self, err: bottle.HTTPError) -> bytes:
        message = "no route for this path" if err.status_code == 404 else (
            "internal error" if err.status_code >= 500 else str(err.body))
        if err.status_code >= 500 and err.exception is not None:
            log.error("gateway error: %s", err.traceback or err.exception)
        return self._error(err.status_code, message)

    def _health(self) -> bytes:
        bottle.response.content_type = "application/json"
        return json.dumps({"status": "ok", "registry_age": round(min(self.snapshot_age(), 1e9), 3),
                           "instances": {r.service: len(r.balancer.healthy()) for r in self.routes}}).encode()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Normalise the path (refusing unsafe encodings), then let Bottle route; keep upstream headers as sent."""
        try:
            normalize_environ(environ)
        except BadPath as exc:
            rid = self.proxy.request_id(environ)
            body = json.dumps({"error": str(exc), "status": 400, "request_id": rid}).encode()
            start_response("400 Bad Request", [("Content-Type", "application/json"), ("X-Request-Id", rid),
                                               ("Content-Length", str(len(body)))])
            return [body]

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            if environ.get("microkit.keep_content_type") is False:
                headers = [h for h in headers if h[0].lower() != "content-type"]
            if self.access_log is not None:
                environ["microkit.status"] = status
            return start_response(status, headers, exc_info)

        started = time.monotonic()
        result = self.app(environ, start)
        if self.access_log is not None:
            self._log_access(environ, started)
        return result

    def _log_access(self, environ: dict, started: float) -> None:
        self.access_log(
            f'{environ["REQUEST_METHOD"]} {redact_target(environ.get("RAW_URI") or environ.get("PATH_INFO", ""))} '
            f'{environ.get("microkit.status", "-")[:3]} {(time.monotonic() - started) * 1000:.1f}ms '
            f'-> {environ.get("microkit.upstream", "-")} id={environ.get("microkit.request_id", "-")}')
