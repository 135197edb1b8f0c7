"""OpenAPI 3.1 documents: one built from any Bottle app's routes, and the gateway's merged document.

`document_for(app)` reads a Bottle app's route table: each rule becomes a path (`<id:int>` becomes
`{id}`, typed by its filter: int an integer, float a number, re a string with that pattern, path and
default a string), each method an operation named after its callback and described by its docstring's
first line. A worker serves it at GET /openapi.json for any Bottle app that does not route that path
itself (`with_openapi`).

`merge(...)` is what the gateway serves at /__microkit/openapi.json: every routed service's document,
its paths as the gateway exposes them (prefixed by the route for `strip_prefix` routes; otherwise the
paths below the route's prefix, since the service sees whole paths), components deduplicated (an equal
schema once; a different one of the same name namespaced `service.Name`, its $refs rewritten), `servers`
set to the gateway, and the answers the gateway itself may give on each route (401/403 where auth is
required, 429 where a rate limit applies, 413, 502, 503, 504 everywhere) as one shared error schema.
"""

from __future__ import annotations

import copy
import http.client
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import bottle

OPENAPI_PATH = "/openapi.json"
VERSION = "3.1.0"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_EVERY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")
GATEWAY_ERROR = {
    "type": "object",
    "required": ["error", "status", "request_id"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "request_id": {"type": "string"}},
}
GATEWAY_ANSWERS = {
    "401": "No valid credentials (the route requires auth).",
    "403": "The credentials lack a scope the route requires.",
    "413": "The request body is larger than the route allows.",
    "429": "The route's rate limit is reached; see Retry-After and RateLimit-*.",
    "502": "The instance failed or sent a broken response.",
    "503": "No healthy instance of the service.",
    "504": "The instance did not answer within the route's timeout.",
}


def _schema_of(mode: str, conf: str | None) -> dict:
    if mode == "int":
        return {"type": "integer"}
    if mode == "float":
        return {"type": "number"}
    if mode == "re" and conf:
        return {"type": "string", "pattern": f"^{conf}$"}
    return {"type": "string"}


def path_of(router: bottle.Router, rule: str) -> tuple[str, list[dict]]:
    """An OpenAPI path template and its path parameters for a Bottle rule."""
    parts: list[str] = []
    params: list[dict] = []
    for key, mode, conf in router._itertokens(rule):
        if mode is None:
            parts.append(key)
            continue
        parts.append("{%s}" % key)
        params.append({"name": key, "in": "path", "required": True, "schema": _schema_of(mode, conf)})
    return "".join(parts), params


def _operation_id(callback: Callable, method: str, path: str, taken: set[str]) -> str:
    base = f"{getattr(callback, '__name__', 'call')}_{method.lower()}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def document_for(app: bottle.Bottle, title: str = "service", version: str = "1.0.0") -> dict:
    """The OpenAPI document of a Bottle app's routes (see the module docstring)."""
    paths: dict[str, dict] = {}
    taken: set[str] = set()
    for route in app.routes:
        if route.rule == OPENAPI_PATH:
            continue
        path, params = path_of(app.router, route.rule)
        methods = _EVERY_METHOD if route.method == "ANY" else (route.method,)
        callback = route.get_undecorated_callback()
        doc = (callback.__doc__ or "").strip().splitlines()
        for method in methods:
            if method in ("HEAD", "OPTIONS"):
                continue
            operation: dict[str, Any] = {
                "operationId": _operation_id(callback, method, path, taken),
                "responses": {"default": {"description": "The service's answer."}},
            }
            if doc:
                operation["summary"] = doc[0]
            if params:
                operation["parameters"] = copy.deepcopy(params)
            if method in _BODY_METHODS:
                operation["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(path, {})[method.lower()] = operation
    return {"openapi": VERSION, "info": {"title": title, "version": version}, "paths": paths}


def with_openapi(app: Callable, title: str) -> Callable:
    """A Bottle `app` that also answers GET /openapi.json with its document, unless it routes that path
    itself; any other WSGI app is returned as it is. The document is built on first request."""
    if not isinstance(app, bottle.Bottle):
        return app
    built: list[bytes] = []

    def application(environ: dict, start_response: Callable):
        if environ.get("PATH_INFO") != OPENAPI_PATH or environ.get("REQUEST_METHOD") != "GET" or any(
                route.rule == OPENAPI_PATH for route in app.routes):
            return app(environ, start_response)
        if not built:
            built.append(json.dumps(document_for(app, title)).encode())
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(built[0])))])
        return [built[0]]

    for name in ("microkit_raw_handler", "microkit_limits"):
        if hasattr(app, name):
            setattr(application, name, getattr(app, name))
    return application


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value in renames:
                out[key] = renames[value]
            else:
                out[key] = _rewrite_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, renames) for item in node]
    return node


def _exposed(path: str, prefix: str, strip: bool) -> str | None:
    """Where a service's path is reachable through the gateway, or None."""
    if strip:
        return prefix.rstrip("/") + path if prefix != "/" else path
    if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
        return path
    return None


def merge(services: Iterable[tuple[Any, dict]], server_url: str, title: str = "gateway") -> dict:
    """The gateway's document from (route, service document) pairs; `route` has `prefix`, `service`,
    `strip_prefix` and `policy` (auth, rate)."""
    merged: dict[str, Any] = {"openapi": VERSION, "info": {"title": title, "version": "1.0.0"},
                              "servers": [{"url": server_url}], "paths": {},
                              "components": {"schemas": {"GatewayError": GATEWAY_ERROR}, "responses": {}}}
    components = merged["components"]
    for status, description in GATEWAY_ANSWERS.items():
        components["responses"][f"Gateway{status}"] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GatewayError"}}}}
    for route, doc in services:
        renames: dict[str, str] = {}
        own = doc.get("components") or {}
        for kind, items in own.items():
            target = components.get(kind, {})
            for name, item in items.items():
                if name in target and target[name] != item:
                    renames[f"#/components/{kind}/{name}"] = f"#/components/{kind}/{route.service}.{name}"
        for kind, items in own.items():
            target = components.setdefault(kind, {})
            for name, item in items.items():
                spaced = renames.get(f"#/components/{kind}/{name}", "").rpartition("/")[2] or name
                target[spaced] = _rewrite_refs(item, renames)
        answers = ["413", "502", "503", "504"]
        if route.policy.auth != "none":
            answers += ["401", "403"]
        if route.policy.rate is not None:
            answers.append("429")
        for path, operations in (doc.get("paths") or {}).items():
            exposed = _exposed(path, route.prefix, route.strip_prefix)
            if exposed is None:
                continue
            item = merged["paths"].setdefault(exposed, {})
            for method, operation in _rewrite_refs(operations, renames).items():
                if not isinstance(operation, dict) or method in item:
                    continue
                operation = dict(operation)
                operation["operationId"] = f"{route.service}.{operation.get('operationId', method)}"
                operation.setdefault("tags", [route.service])
                responses = dict(operation.get("responses") or {})
                for status in sorted(answers):
                    responses.setdefault(status, {"$ref": f"#/components/responses/Gateway{status}"})
                operation["responses"] = responses
                item[method] = operation
    return merged


class GatewayDocument:
    """The merged document the gateway serves, from each routed service's GET /openapi.json on one of
    its healthy instances; each service's document is kept for `ttl` seconds."""

    def __init__(self, routes: list, ttl: float = 10.0, timeout: float = 2.0) -> None:
        self.routes = routes
        self.ttl = ttl
        self.timeout = timeout
        self.cache: dict[str, tuple[float, dict]] = {}

    def fetch(self, route) -> dict | None:
        cached = self.cache.get(route.service)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        for upstream in route.balancer.healthy():
            connection = http.client.HTTPConnection(upstream.host, upstream.port, timeout=self.timeout)
            try:
                connection.request("GET", OPENAPI_PATH, headers={"Accept": "application/json"})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    continue
                doc = json.loads(body)
            except (OSError, http.client.HTTPException, ValueError):
                continue
            finally:
                connection.close()
            if isinstance(doc, dict):
                self.cache[route.service] = (now, doc)
                return doc
        return cached[1] if cached is not None else None

    def render(self, server_url: str, title: str) -> dict:
        pairs = [(route, doc) for route in self.routes if (doc := self.fetch(route)) is not None]
        return merge(pairs, server_url, title)
