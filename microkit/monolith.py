"""Monolith mode (`microkit up --monolith`): every service's WSGI app mounted in one process.

A dispatcher routes by the same longest-prefix rules as the gateway, at the same URLs, so clients
and the services' calls to each other (through MICROKIT_GATEWAY_URL) work unchanged. Each app is
imported with its service's `env` applied and then restored, so settings read at import time (a
DATABASE_URL, say) stay per service. Command services cannot be mounted: they are left out. The
gateway's policies (auth, scopes, rate limits, CORS) are not enforced here, so a project whose routes
set any is refused (`check`), and client-sent X-Auth-* headers are always removed. A `strip_prefix`
route's app is mounted like werkzeug's DispatcherMiddleware mounts one: SCRIPT_NAME is the route,
PATH_INFO the rest (empty for the route itself).
Loaded by a worker as `microkit.monolith:application` (after gevent patching).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Callable, Iterable

from microkit import config as cfg
from microkit.errors import UsageError
from microkit.gateway.routing import BadPath, RouteTable, normalize_environ

HEALTH = "/__microkit/health"


def load_app(spec: str) -> Callable:
    """Import `module:attr` (attr may be dotted)."""
    module_name, attr = spec.split(":")
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def with_env(env: dict[str, str], load: Callable[[], Callable]) -> Callable:
    """Run `load` with `env` set in os.environ, restoring every variable afterwards."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return load()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check(conf: cfg.Config) -> None:
    """Refuse monolith mode for routes that rely on the gateway's policies, which it does not enforce."""
    governed = [s.name for s in conf.services.values() if s.app and s.route and (
        (s.auth or conf.gateway.auth.default) != "none" or s.scopes or s.rate_limit or s.cors)]
    if governed:
        raise UsageError(f"--monolith does not enforce auth, scopes, rate limits or CORS, which "
                         f"services {', '.join(governed)} set: run them behind the gateway (`microkit up`)")
    if conf.gateway.legacy is not None:
        raise UsageError("--monolith mounts the services' apps only: gateway.legacy (and its splits, shadows and "
                         "failover) needs the gateway (`microkit up`)")


def _json(start_response: Callable, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class Monolith:
    """The WSGI dispatcher: one app per route prefix."""

    def __init__(self, conf: cfg.Config) -> None:
        root = str(conf.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        self.mounted = [s for s in conf.services.values() if s.app and s.route]
        self.skipped = [s.name for s in conf.services.values() if not (s.app and s.route)]
        self.table: RouteTable[tuple[Callable, bool]] = RouteTable(
            (s.route, (with_env({"MICROKIT_ROUTE": s.app_route, "MICROKIT_PROJECT_ROOT": root, **s.env},
                                lambda s=s: load_app(s.app)), s.strip_prefix and s.route != "/"))
            for s in self.mounted)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        for key in [k for k in environ if k.startswith("HTTP_X_AUTH_")]:
            del environ[key]  # only a gateway that checked a credential may say who is calling
        if environ.pop("HTTP_X_FORWARDED_PREFIX", None) is not None:
            environ["SCRIPT_NAME"] = ""  # the engine took a client's X-Forwarded-Prefix for a mount point
        try:
            normalize_environ(environ)
        except BadPath as exc:
            return _json(start_response, "400 Bad Request", {"error": str(exc), "status": 400})
        path = environ.get("PATH_INFO", "/")
        if path == HEALTH:
            return _json(start_response, "200 OK", {"status": "ok", "monolith": [s.name for s in self.mounted]})
        match = self.table.match(path)
        if match is None:
            return _json(start_response, "404 Not Found", {"error": "no route for this path", "status": 404})
        app, mounted = match.target
        if mounted:  # strip_prefix: the app sits at its route as a mount point, as under DispatcherMiddleware
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + match.prefix
            environ["PATH_INFO"] = path[len(match.prefix):]
        return app(environ, start_response)


def create(conf: cfg.Config | None = None) -> Monolith:
    conf = conf or cfg.discover()
    check(conf)
    monolith = Monolith(conf)
    if monolith.skipped:
        print(f"monolith: not mounted (command services or no route): {', '.join(monolith.skipped)}", flush=True)
    return monolith


def __getattr__(name: str):
    """`application` is built on first access, in the worker that loads it."""
    if name == "application":
        globals()["application"] = app = create()
        return app
    raise AttributeError(name)
