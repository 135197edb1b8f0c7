"""The check contract: what governs a proxied request before it goes upstream, one check per concern.

A check is `check(call: Call) -> None` and runs before anything is read or forwarded. It may raise
`Denied` (401, 403, 429: answered with the gateway's JSON error), raise `Answered` to answer the
request itself (a CORS preflight), add upstream header lines (the identity an auth check found, after
the proxy has dropped every client copy), add response headers (RateLimit-*, CORS), or set `vary`,
a token merged into the upstream's Vary header. `checks_for(policy, security)` builds a route's checks
in the order they run: CORS (a preflight carries no credentials), auth, rate limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

from microkit.gateway.policy import Policy, Security
from microkit.gateway.security import Identity, RequestInfo, identity_headers, limit_key
from microkit.http import Request


class Answered(Exception):
    """A check answers the request itself: status and headers, no body."""

    def __init__(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        super().__init__(status)
        self.status = status
        self.headers = tuple(headers)


class Call:
    """One proxied request as the checks see it; checks may add to the two header lists."""

    __slots__ = ("request", "path", "query", "upstream_headers", "response_headers", "identity", "vary", "_info")

    def __init__(self, request: Request, path: bytes = b"/", query: bytes = b"") -> None:
        self.request = request
        self.path = path
        self.query = query
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
        """Send this header upstream."""
        self.upstream_headers.append(header_line(name, value))

    def add_response(self, name: str, value: str) -> None:
        """Send this header to the client with the response (refusals included)."""
        self.response_headers.append(header_line(name, value))

    def answer_headers(self) -> list[bytes]:
        """The response header lines the checks added, with their Vary token as a header of its own."""
        if self.vary is None:
            return self.response_headers
        return [*self.response_headers, b"Vary: " + self.vary + b"\r\n"]


Check = Callable[[Call], None]


def header_line(name: str, value: str) -> bytes:
    """`name: value` CRLF, refusing CR or LF inside either."""
    line = f"{name}: {value}\r\n"
    if line.count("\n") != 1 or line.count("\r") != 1:
        raise ValueError("CR or LF inside a header")
    return line.encode("latin-1")


def merged_vary(value: bytes, token: bytes) -> bytes:
    """An upstream Vary value with `token` added (unless already listed, or the value is "*")."""
    listed = {item.strip().lower() for item in value.split(b",")}
    if b"*" in listed or token.lower() in listed:
        return value
    return value + b", " + token if value.strip() else token


@lru_cache(maxsize=4096)
def identity_lines(identity: Identity) -> tuple[bytes, ...]:
    """The X-Auth-* header lines for an identity (cached: a cached token yields the same Identity object)."""
    return tuple(f"{name}: {value}\r\n".encode("latin-1") for name, value in identity_headers(identity))


def cors_check(policy: Policy) -> Check | None:
    """CORS (Fetch standard): a preflight is answered here; every answer gets the Access-Control-* headers."""
    cors = policy.cors
    if cors is None:
        return None

    def cors_check(call: Call) -> None:
        info = call.info()
        if info.method == "OPTIONS":
            preflight = cors.preflight(info)
            if preflight is not None:
                raise Answered(*preflight)
        for name, value in cors.response_headers(info):
            if name == "Vary":
                call.vary = value.encode("latin-1")
            else:
                call.add_response(name, value)
    return cors_check


def auth_check(policy: Policy, security: Security) -> Check | None:
    """JWT or API key authentication; the identity goes upstream as X-Auth-* headers."""
    authenticate = security.authenticator(policy)
    if authenticate is None:
        return None

    def auth_check(call: Call) -> None:
        identity = call.identity = authenticate(call.info())
        call.upstream_headers += identity_lines(identity)
    return auth_check


def ratelimit_check(policy: Policy, security: Security) -> Check | None:
    """The route's limit, counted per caller in the shared limiter; RateLimit-* headers on every answer."""
    if policy.rate is None:
        return None
    limiter, rate, by, scope = security.limiter, policy.rate, policy.rate_by, policy.limit_scope

    def ratelimit_check(call: Call) -> None:
        decision = limiter.enforce(limit_key(by, call.info(), call.identity, scope), rate)
        for name, value in decision.headers():
            call.add_response(name, value)
    return ratelimit_check


def checks_for(policy: Policy, security: Security) -> tuple[Check, ...]:
    """A route's checks, in the order they run."""
    made = (cors_check(policy), auth_check(policy, security), ratelimit_check(policy, security))
    return tuple(check for check in made if check is not None)
