"""CORS per route, as the Fetch standard's CORS protocol has browsers check it.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered by the gateway itself with
204. When the origin, method and every requested header are allowed, the answer carries the
Access-Control-Allow-* headers; otherwise it carries none, so the browser blocks the request, and the
status is the same 204, so nothing about the policy leaks through an error. Actual requests from an
allowed origin get Access-Control-Allow-Origin (the origin echoed; "*" only for a credential-less
any-origin policy) and, when set, Allow-Credentials and Expose-Headers. Responses always carry
`Vary: Origin`, which the caller merges with any Vary the service sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from microkit.gateway.security.request import RequestInfo

DEFAULT_PORTS = {"http": 80, "https": 443}
PREFLIGHT_VARY = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
VARY_ORIGIN = ("Vary", "Origin")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def normalise_origin(origin: str) -> str:
    """A configured origin as browsers serialise it: `scheme://host[:port]`, lower-case, default port dropped."""
    if origin == "null":
        return origin
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (not parts.scheme or not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query
            or parts.fragment or parts.username is not None):
        raise ValueError(f"CORS origin {origin!r}: write scheme://host[:port], e.g. https://app.example.com")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{parts.scheme.lower()}://{host}:{port}"
    return f"{parts.scheme.lower()}://{host}"


def _wildcard(origin: str) -> re.Pattern[str]:
    """`https://*.example.com[:port]` as a pattern matching one or more subdomain labels (not the apex)."""
    scheme, _, rest = origin.partition("://*.")
    base = normalise_origin(f"{scheme}://{rest}")
    base_scheme, _, host = base.partition("://")
    return re.compile(re.escape(base_scheme) + r"://(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+" + re.escape(host))


def _names(values: Iterable[str], what: str) -> list[str]:
    names = list(values)
    for name in names:
        if name != "*" and not _TOKEN.fullmatch(name):
            raise ValueError(f"CORS {what} {name!r} is not a valid token")
    return names


class CorsPolicy:
    """One route's CORS rules; build once, then call `preflight` and `response_headers` per request."""

    def __init__(self, origins: Iterable[str] | str, methods: Iterable[str] = ("GET", "HEAD", "POST"),
                 headers: Iterable[str] | str = ("Content-Type",), *, expose_headers: Iterable[str] = (),
                 credentials: bool = False, max_age: int = 600) -> None:
        origins = [origins] if isinstance(origins, str) else list(origins)
        self.any_origin = "*" in origins
        if self.any_origin and credentials:
            raise ValueError('CORS origins "*" with credentials would let every site read credentialed '
                             "responses: list the origins instead")
        exact = [o for o in origins if o != "*" and "://*." not in o]
        self.origins = frozenset(normalise_origin(o) for o in exact)
        self._patterns = tuple(_wildcard(o) for o in origins if "://*." in o)
        self.methods = tuple(m.upper() for m in _names(methods, "method"))
        if "*" in self.methods:
            raise ValueError('CORS methods: list them ("*" is not accepted)')
        headers = _names([headers] if isinstance(headers, str) else headers, "header")
        self.any_header = "*" in headers
        self.headers = frozenset(h.lower() for h in headers if h != "*")
        self.expose_headers = ", ".join(_names(expose_headers, "exposed header"))
        self.credentials = bool(credentials)
        if not isinstance(max_age, int) or max_age < 0:
            raise ValueError("CORS max_age must be a whole number of seconds >= 0")
        self.max_age = str(max_age)
        self._allow_methods = ", ".join(self.methods)

    def origin_allowed(self, origin: str) -> bool:
        """Whether `origin` (as the browser sent it) may read responses."""
        if self.any_origin or origin in self.origins:
            return True
        return any(p.fullmatch(origin) for p in self._patterns)

    def preflight(self, info: RequestInfo) -> tuple[int, list[tuple[str, str]]] | None:
        """(204, headers) for a CORS preflight, allowed or not; None when the request is not a preflight."""
        if info.method != "OPTIONS":
            return None
        origins = info.values("origin")
        methods = info.values("access-control-request-method")
        if not origins or not methods:
            return None
        headers = [PREFLIGHT_VARY]
        if len(origins) != 1 or len(methods) != 1 or not self.origin_allowed(origins[0]):
            return 204, headers
        if methods[0].strip() not in self.methods:
            return 204, headers
        requested = [name.strip().lower() for value in info.values("access-control-request-headers")
                     for name in value.split(",") if name.strip()]
        if not all(self._header_allowed(name) for name in requested):
            return 204, headers
        headers += self._origin_headers(origins[0])
        headers.append(("Access-Control-Allow-Methods", self._allow_methods))
        if requested:
            headers.append(("Access-Control-Allow-Headers", ", ".join(dict.fromkeys(requested))))
        headers.append(("Access-Control-Max-Age", self.max_age))
        return 204, headers

    def response_headers(self, info: RequestInfo) -> list[tuple[str, str]]:
        """CORS headers for an actual (non-preflight) response."""
        origins = info.values("origin")
        if len(origins) != 1 or not self.origin_allowed(origins[0]):
            return [VARY_ORIGIN]
        headers = [VARY_ORIGIN, *self._origin_headers(origins[0])]
        if self.expose_headers:
            headers.append(("Access-Control-Expose-Headers", self.expose_headers))
        return headers

    def _header_allowed(self, name: str) -> bool:
        """Listed names, or any name under "*" except Authorization, which Fetch requires be listed."""
        return name in self.headers or (self.any_header and name != "authorization" and bool(_TOKEN.fullmatch(name)))

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if self.any_origin and not self.credentials:
            return [("Access-Control-Allow-Origin", "*")]
        headers = [("Access-Control-Allow-Origin", origin)]
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers
