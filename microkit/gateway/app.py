"""The gateway: one proxy path for every routed request, and a small Bottle app for its own endpoints.

`Gateway` builds the route table from the config (microkit/gateway/route.py), each route with its
checks (microkit/gateway/checks.py), and hands them to the raw handler the engine calls first
(`ProxyHandler`, microkit/gateway/handler.py), which proxies everything routed. Bottle serves only
the gateway's own endpoints: `/__microkit/health` (open), `/__microkit/routes` and
`/__microkit/instances` (admin API key), `POST /auth/token` (when JWTs are configured). The registry
watcher keeps the balancers current through `update`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Iterable

import bottle

from microkit.config import Config
from microkit.gateway import admin
from microkit.gateway.checks import checks_for
from microkit.gateway.handler import ProxyHandler
from microkit.gateway.migration import Migration
from microkit.gateway.plugins import POLICY_KEY, PolicyPlugin
from microkit.gateway.policy import TOKEN_PATH, Security, admin_policy, token_policy
from microkit.gateway.proxy import Proxy, TrustedProxies, new_request_id, request_id_of
from microkit.gateway.render import AccessLog, access_line, error_body
from microkit.gateway.route import Route, routes_from_config
from microkit.gateway.routing import BadPath, normalize_environ
from microkit.gateway.spool import Buffering
from microkit.gateway.upstream import Pool
from microkit.http import Limits
from microkit.observe import install_observability
from microkit.registry import Instance, Snapshot

log = logging.getLogger("microkit.gateway")

ADMIN_PREFIX = "/__microkit"
STALE_WARNING = 5.0

__all__ = ["ADMIN_PREFIX", "Gateway", "Route", "routes_from_config"]


class Gateway:
    """Routes, balancers, the proxy path and the gateway's own endpoints, kept current from a registry snapshot."""

    def __init__(self, config: Config, *, pool: Pool | None = None, access_log: AccessLog | None = None) -> None:
        self.config = config
        gateway = config.gateway
        self.routes = routes_from_config(config)
        self.by_service = {route.service: route for route in self.routes}
        self.pool = pool or Pool()
        self.proxy = Proxy(self.pool, trusted=TrustedProxies(gateway.trusted_proxies), buffering=Buffering.of(config))
        self.access_log = access_log if gateway.access_log else None
        self.snapshot_age: Callable[[], float] = lambda: 0.0
        self.last_snapshot: Snapshot = {}
        self._last_stale_log = 0.0
        self.security = Security(config)
        self.security.prepare([route.policy for route in self.routes])
        self.app = self._build_app()
        own = (TOKEN_PATH,) if self.security.issues_tokens else ()
        self.migration = Migration(config, self.routes, self.pool) if gateway.legacy else None
        self.microkit_raw_handler = ProxyHandler(
            [(route, checks_for(route.policy, self.security)) for route in self.routes], self.proxy,
            ADMIN_PREFIX, own, self.access_log, self._warn_if_stale, self.migration)
        install_observability(self)
        self.microkit_limits = Limits(lingering_time=gateway.lingering_time,
                                      lingering_timeout=gateway.lingering_timeout, body_timeout=gateway.body_timeout)

    def update(self, snapshot: Snapshot) -> None:
        """Point each route's balancer at the service's current instances (a registry watcher callback)."""
        self.last_snapshot = snapshot  # what the dashboard lists (microkit/dashboard)
        for service, route in self.by_service.items():
            instances: list[Instance] = snapshot.get(service, [])
            before = {u.address for u in route.balancer.upstreams}
            route.balancer.update((i.instance_id, i.host, i.port) for i in instances)
            for address in before - {u.address for u in route.balancer.upstreams}:
                self.pool.forget(address)
        if self.migration is not None:
            self.migration.update(snapshot)

    def _build_app(self) -> bottle.Bottle:
        app = bottle.Bottle(catchall=True)
        app.config["json.enable"] = False
        app.route(f"{ADMIN_PREFIX}/health", "GET", self._health)
        admin_only = {POLICY_KEY: admin_policy(self.config)}
        app.route(f"{ADMIN_PREFIX}/routes", "GET", admin.routes_view(self.routes), **admin_only)
        app.route(f"{ADMIN_PREFIX}/instances", "GET", admin.instances_view(self.routes, lambda: self.snapshot_age()),
                  **admin_only)
        if self.security.issues_tokens:
            app.route(TOKEN_PATH, "ANY", admin.token_view(self.security, self.config.gateway.auth.token, self._error),
                      **{POLICY_KEY: token_policy(self.config)})
        for code in (400, 404, 405, 500):
            app.error(code)(self._bottle_error)
        app.install(PolicyPlugin(self.security, self._error))
        return app

    def _warn_if_stale(self) -> None:
        age = self.snapshot_age()
        if age > STALE_WARNING:
            now = time.monotonic()
            if now - self._last_stale_log > STALE_WARNING:
                self._last_stale_log = now
                log.warning("registry unreachable: routing to the instances known %.0f s ago", age)

    def _error(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        response = bottle.response
        response.status = status
        response.content_type = "application/json"
        for name, value in headers:
            response.set_header(name, value)
        rid = self._rid_of(bottle.request.environ)
        response.set_header("X-Request-Id", rid)
        return error_body(status, message, rid)

    def _bottle_error(self, err: bottle.HTTPError) -> bytes:
        message = "no route for this path" if err.status_code == 404 else (
            "internal error" if err.status_code >= 500 else str(err.body))
        if err.status_code >= 500 and err.exception is not None:
            log.error("gateway error: %s", err.traceback or err.exception)
        return self._error(err.status_code, message)

    def _health(self) -> bytes:
        bottle.response.content_type = "application/json"
        return json.dumps({"status": "ok", "registry_age": round(min(self.snapshot_age(), 1e9), 3),
                           "instances": {r.service: len(r.balancer.healthy())
                                         for r in self.routes + ([self.migration.legacy] if self.migration else [])}
                           }).encode()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The gateway's own endpoints: normalise the path (refusing unsafe encodings), then let Bottle route."""
        started = time.monotonic()
        try:
            normalize_environ(environ)
        except BadPath as exc:
            rid = new_request_id()
            environ["microkit.request_id"] = rid
            body = error_body(400, str(exc), rid)
            environ["microkit.status"] = "400"
            start_response("400 Bad Request", [("Content-Type", "application/json"), ("X-Request-Id", rid),
                                               ("Content-Length", str(len(body)))])
            result: Iterable[bytes] = [body]
        else:
            def start(status: str, headers: list[tuple[str, str]], exc_info=None):
                environ["microkit.status"] = status
                if not any(name.lower() == "x-request-id" for name, _ in headers):
                    headers.append(("X-Request-Id", self._rid_of(environ)))
                return start_response(status, headers, exc_info)
            result = self.app(environ, start)
        if self.access_log is not None:
            self.access_log(access_line(environ["REQUEST_METHOD"], environ.get("RAW_URI") or environ.get("PATH_INFO", ""),
                                        int(environ.get("microkit.status", "0")[:3] or 0), started, "-",
                                        self._rid_of(environ)))
        return result

    @staticmethod
    def _rid_of(environ: dict) -> str:
        rid = environ.get("microkit.request_id")
        if rid is None:
            request = environ.get("microkit.request")
            rid = environ["microkit.request_id"] = (
                request_id_of(request).decode("latin-1") if request is not None else new_request_id())
        return rid
