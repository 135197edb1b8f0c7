"""The gateway's governance as Bottle plugins: CORS, authentication and rate limits, one class each.

Each reads the route's `Policy` from `route.config["microkit.policy"]` (microkit/gateway/policy.py) and
offers both forms the gateway runs: `apply(callback, route)` wraps the Bottle callback (admin
endpoints, HTTP/1.0, CORS preflights), and `fast_check(route)` returns the same check for the fast
path (microkit/gateway/fastpath.py), so proxied traffic never needs Bottle. Installed in this order in
Gateway._build_app, which is also the order they run in:

1. CORS: answers a preflight itself (before auth: browsers send no credentials on a preflight), and adds
   Access-Control-* headers and `Vary: Origin` to every answer, refusals included;
2. auth: 401 with WWW-Authenticate, 403 for a missing scope; the identity goes to the service as
   X-Auth-* headers (client copies are always dropped by the proxy);
3. rate limit: counts the caller (API key, subject or IP), 429 with Retry-After and RateLimit-*.

A refusal is a `Denied`; both forms answer it with the gateway's JSON error body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import bottle

from microkit.gateway.fastpath import FastCall
from microkit.gateway.policy import Policy, Security
from microkit.gateway.security import Denied, Identity, RequestInfo, identity_headers, limit_key

POLICY_KEY = "microkit.policy"
IDENTITY_KEY = "microkit.identity"
UPSTREAM_KEY = "microkit.upstream_headers"  # header lines (bytes, CRLF-ended) to add to the upstream request

ErrorAnswer = Callable[[Denied], bytes]


def policy_of(route: bottle.Route) -> Policy | None:
    return route.config.get(POLICY_KEY)


@lru_cache(maxsize=4096)
def identity_lines(identity: Identity) -> tuple[bytes, ...]:
    """The X-Auth-* header lines for an identity (cached: a cached token yields the same Identity object)."""
    return tuple(f"{name}: {value}\r\n".encode("latin-1") for name, value in identity_headers(identity))


def _merge_vary(response: bottle.BaseResponse, token: str) -> None:
    """Add `token` to the response's Vary (merging every Vary line the service sent into one)."""
    values = response.headers.getall("Vary") if "Vary" in response.headers else []
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if "*" in items or token.lower() in (item.lower() for item in items):
        return
    response.set_header("Vary", ", ".join([*items, token]))


class _Plugin:
    """What the three plugins share: Bottle's plugin API version, and one instance per app."""

    api = 2
    name = ""

    def setup(self, app: bottle.Bottle) -> None:
        for other in app.plugins:
            if other is not self and getattr(other, "name", None) == self.name:
                raise bottle.PluginError(f"a {self.name} plugin is already installed")


class CorsPlugin(_Plugin):
    """CORS per route (Fetch standard): preflights answered here, headers on every answer."""

    name = "microkit.cors"

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        policy = policy_of(route)
        cors = policy.cors if policy else None
        if cors is None:
            return callback

        def cors_wrapper(*args: Any, **kwargs: Any) -> Any:
            info = RequestInfo.from_environ(bottle.request.environ)
            response = bottle.response
            preflight = cors.preflight(info)
            if preflight is not None:
                status, headers = preflight
                response.status = status
                for name, value in headers:
                    response.set_header(name, value)
                return b""
            result = callback(*args, **kwargs)
            for name, value in cors.response_headers(info):
                if name == "Vary":
                    _merge_vary(response, value)
                else:
                    response.set_header(name, value)
            return result
        return cors_wrapper

    def fast_check(self, route: bottle.Route) -> Callable[[FastCall], bool | None] | None:
        policy = policy_of(route)
        cors = policy.cors if policy else None
        if cors is None:
            return None

        def cors_check(call: FastCall) -> bool | None:
            info = call.info()
            if info.method == "OPTIONS" and cors.preflight(info) is not None:
                return False  # Bottle answers preflights (cors_wrapper)
            for name, value in cors.response_headers(info):
                if name == "Vary":
                    call.vary = value.encode("latin-1")
                else:
                    call.add_response(name, value)
            return None
        return cors_check


class AuthPlugin(_Plugin):
    """JWT or API key authentication per route; the identity is forwarded as X-Auth-* headers."""

    name = "microkit.auth"

    def __init__(self, security: Security, answer: ErrorAnswer) -> None:
        self.security = security
        self.answer = answer

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        policy = policy_of(route)
        authenticate = self.security.authenticator(policy) if policy else None
        if authenticate is None:
            return callback

        def auth_wrapper(*args: Any, **kwargs: Any) -> Any:
            environ = bottle.request.environ
            try:
                identity = authenticate(RequestInfo.from_environ(environ))
            except Denied as denied:
                return self.answer(denied)
            environ[IDENTITY_KEY] = identity
            environ.setdefault(UPSTREAM_KEY, []).extend(identity_lines(identity))
            return callback(*args, **kwargs)
        return auth_wrapper

    def fast_check(self, route: bottle.Route) -> Callable[[FastCall], bool | None] | None:
        policy = policy_of(route)
        authenticate = self.security.authenticator(policy) if policy else None
        if authenticate is None:
            return None

        def auth_check(call: FastCall) -> None:
            identity = call.identity = authenticate(call.info())
            call.upstream_headers += identity_lines(identity)
        return auth_check


class RateLimitPlugin(_Plugin):
    """A route's limit, counted per caller in the shared limiter; RateLimit-* headers on every answer."""

    name = "microkit.ratelimit"

    def __init__(self, security: Security, answer: ErrorAnswer) -> None:
        self.security = security
        self.answer = answer

    def _counter(self, policy: Policy | None) -> Callable[[RequestInfo, Identity | None], Iterable[tuple[str, str]]] | None:
        """A function that counts one request and returns the headers to send (raising Denied when over)."""
        if policy is None or policy.rate is None:
            return None
        limiter, rate, by, scope = self.security.limiter, policy.rate, policy.rate_by, policy.limit_scope

        def count(info: RequestInfo, identity: Identity | None) -> Iterable[tuple[str, str]]:
            return limiter.enforce(limit_key(by, info, identity, scope), rate).headers()
        return count

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        count = self._counter(policy_of(route))
        if count is None:
            return callback

        def ratelimit_wrapper(*args: Any, **kwargs: Any) -> Any:
            environ = bottle.request.environ
            try:
                headers = count(RequestInfo.from_environ(environ), environ.get(IDENTITY_KEY))
            except Denied as denied:
                return self.answer(denied)
            result = callback(*args, **kwargs)
            for name, value in headers:
                bottle.response.set_header(name, value)
            return result
        return ratelimit_wrapper

    def fast_check(self, route: bottle.Route) -> Callable[[FastCall], bool | None] | None:
        count = self._counter(policy_of(route))
        if count is None:
            return None

        def ratelimit_check(call: FastCall) -> None:
            for name, value in count(call.info(), call.identity):
                call.add_response(name, value)
        return ratelimit_check
