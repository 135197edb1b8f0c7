"""The gateway's own endpoints besides health: the admin views and `POST /auth/token`.

`/__microkit/routes` and `/__microkit/instances` are governed by the auth plugin like any route (their
policy asks for an API key holding `gateway.auth.admin_scope`); `/__microkit/health` stays open for
load balancers and the supervisor. `POST /auth/token` trades a valid API key for a short-lived JWT
(`[gateway.auth.token]`); it checks the key itself, after a per-IP rate limit, so guesses are limited too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qsl

import bottle

from microkit.config import TokenConfig
from microkit.gateway.policy import Security
from microkit.gateway.route import Route
from microkit.gateway.security import Denied, RequestInfo, token_response

MAX_TOKEN_BODY = 4096


def routes_view(table: list[Route]) -> Callable[[], bytes]:
    def routes() -> bytes:
        rows = []
        for route in table:
            policy = route.policy
            rows.append({"prefix": route.prefix, "service": route.service, "timeout": route.timeout,
                         "balance": route.balancer.policy, "auth": policy.auth, "scopes": sorted(policy.scopes),
                         "rate_limit": str(policy.rate) if policy.rate else None,
                         "rate_limit_by": policy.rate_by if policy.rate else None, "cors": policy.cors is not None,
                         "max_body": route.max_body, "strip_prefix": route.strip_prefix,
                         "instances": len(route.balancer.upstreams)})
        return _json({"routes": rows})
    return routes


def instances_view(table: list[Route], snapshot_age: Callable[[], float]) -> Callable[[], bytes]:
    def instances() -> bytes:
        healthy_by = {route.service: {id(u) for u in route.balancer.healthy()} for route in table}
        return _json({"registry_age": round(min(snapshot_age(), 1e9), 3), "services": {
            route.service: [{"id": u.key, "address": f"{u.host}:{u.port}", "healthy": id(u) in healthy_by[route.service],
                             "outstanding": u.outstanding, "failures": u.failures}
                            for u in route.balancer.upstreams]
            for route in table}})
    return instances


def token_view(security: Security, settings: TokenConfig,
               error: Callable[[int, str, tuple[tuple[str, str], ...]], bytes]) -> Callable[[], bytes]:
    """`POST /auth/token`: `X-API-Key: mk_...` (or `Authorization: ApiKey mk_...`), optionally a `scope`
    (form or JSON body, space-separated) to narrow the token's scopes; answers RFC 6749 §5.1 JSON."""
    ttl = settings.ttl
    kid = settings.signing_kid

    def token() -> bytes:
        request = bottle.request
        if request.method != "POST":
            return error(405, "use POST", (("Allow", "POST"),))
        try:
            identity = security.apikeys.authenticate(RequestInfo.from_environ(request.environ))
            scopes = _requested_scopes(request.environ)
            if scopes is not None and not scopes <= identity.scopes:
                raise Denied(403, "requested scopes exceed the key's scopes")
        except Denied as denied:
            return error(denied.status, denied.message, denied.headers)
        body = token_response(identity, security.jwt_settings, ttl, scopes=scopes,
                              signing_key=security.signing_key, kid=kid)
        bottle.response.set_header("Cache-Control", "no-store")
        bottle.response.set_header("Pragma", "no-cache")
        return _json(body)
    return token


def _requested_scopes(environ: dict) -> frozenset[str] | None:
    """The `scope` a token request asks for, from a small form or JSON body; None when absent."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Denied(400, "bad Content-Length") from None
    if length > MAX_TOKEN_BODY:
        raise Denied(413, f"token request body larger than {MAX_TOKEN_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw.strip():
        return None
    kind = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            scope = json.loads(raw).get("scope")
        else:
            scope = dict(parse_qsl(raw.decode(), keep_blank_values=True)).get("scope")
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise Denied(400, "the body must be a form or a JSON object with an optional scope") from None
    if scope is None:
        return None
    if not isinstance(scope, str):
        raise Denied(400, "scope must be a space-separated string")
    return frozenset(scope.split())


def _json(data: object) -> bytes:
    bottle.response.content_type = "application/json"
    return json.dumps(data).encode()
