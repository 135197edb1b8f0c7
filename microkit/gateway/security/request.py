"""What the security checks see of a request, what they answer, and who they found.

The checks take a `RequestInfo` rather than a Bottle request so that the proxy path and the Bottle
plugin of the gateway's own endpoints call them alike. `RequestInfo.from_environ` wraps a WSGI environ and `RequestInfo.from_head`
the engine's raw header lines; neither copies headers up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote

IDENTITY_HEADERS = ("X-Auth-Subject", "X-Auth-Scopes", "X-Auth-Key-Id", "X-Auth-Method")
IDENTITY_PREFIX = "x-auth-"
_IDENTITY_CGI_PREFIX = "HTTP_X_AUTH_"
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "


class Denied(Exception):
    """A request refused: the gateway answers `status` with a JSON body holding `message`, plus `headers`."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)

    def __repr__(self) -> str:
        return f"Denied({self.status}, {self.message!r})"


@dataclass(frozen=True)
class Identity:
    """Who made a verified request: forwarded to services as the X-Auth-* headers."""

    subject: str
    scopes: frozenset[str]
    key_id: str | None
    method: str  # "jwt" | "apikey"


class EnvironHeaders(Mapping[str, list[str]]):
    """A WSGI environ's request headers as lower-case name -> values, read lazily.

    microkit's HTTP engine joins repeated headers with ", " (as RFC 9110 allows), so a duplicate shows up
    as one value holding a comma; the checks treat a comma inside a credential as a duplicate.
    """

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> list[str]:
        value = self._environ.get(_cgi_key(name))
        if value is None:
            raise KeyError(name)
        return [value]

    def get(self, name: str, default=None):  # type: ignore[override]
        value = self._environ.get(_cgi_key(name))
        return default if value is None else [value]

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


class RawHeaders(Mapping[str, list[str]]):
    """Header lines as received, `[(name bytes, value bytes)]`, as lower-case name -> every value.

    The dictionary is built on first use, so a request that no check looks at costs nothing; repeated
    headers stay separate values.
    """

    __slots__ = ("_lines", "_map")

    def __init__(self, lines: list[tuple[bytes, bytes]]) -> None:
        self._lines = lines
        self._map: dict[str, list[str]] | None = None

    def _built(self) -> dict[str, list[str]]:
        if self._map is None:
            found: dict[str, list[str]] = {}
            for name, value in self._lines:
                found.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            self._map = found
        return self._map

    def __getitem__(self, name: str) -> list[str]:
        return self._built()[name]

    def get(self, name: str, default=None):  # type: ignore[override]
        return self._built().get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def _cgi_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


@dataclass(frozen=True)
class RequestInfo:
    """The parts of a request that authentication, rate limiting and CORS look at."""

    method: str
    path: str  # normalised, without the query
    headers: Mapping[str, list[str]]  # lower-case names -> every value received
    peer: str  # the socket peer's IP, never X-Forwarded-For
    query: str = ""  # the raw query string, only read to spot a second token (access_token=...)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> RequestInfo:
        """The request in a WSGI environ (PATH_INFO is expected to be normalised already)."""
        return cls(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"), EnvironHeaders(environ),
                   environ.get("REMOTE_ADDR", ""), environ.get("QUERY_STRING", ""))

    @classmethod
    def from_head(cls, method: str, path: str, lines: list[tuple[bytes, bytes]], peer: str,
                  query: str = "") -> RequestInfo:
        """The request from header lines as received (the engine's raw `Request.headers`): duplicates visible."""
        return cls(method, path, RawHeaders(lines), peer, query)

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (lower-case), [] when absent."""
        return self.headers.get(name) or []


def strip_identity(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`headers` without any X-Auth-* header: only the gateway may set those for services."""
    return [(name, value) for name, value in headers if not name.lower().startswith(IDENTITY_PREFIX)]


def strip_identity_environ(environ: dict) -> None:
    """Delete every X-Auth-* header a client sent from a WSGI environ, in place."""
    for key in [k for k in environ if k.startswith(_IDENTITY_CGI_PREFIX)]:
        del environ[key]


def header_value(text: str) -> str:
    """`text` made safe for a header line: printable ASCII kept, anything else (and `%`) percent-encoded UTF-8."""
    return quote(text, safe=_HEADER_SAFE)


def identity_headers(identity: Identity) -> list[tuple[str, str]]:
    """The X-Auth-* headers that tell a service who is calling (scopes space-separated, sorted)."""
    headers = [("X-Auth-Subject", header_value(identity.subject)),
               ("X-Auth-Scopes", header_value(" ".join(sorted(identity.scopes))))]
    if identity.key_id is not None:
        headers.append(("X-Auth-Key-Id", header_value(identity.key_id)))
    headers.append(("X-Auth-Method", identity.method))
    return headers


def identity_environ(identity: Identity) -> dict[str, str]:
    """The same headers as WSGI environ keys, for a proxy that builds the upstream request from the environ."""
    return {_cgi_key(name): value for name, value in identity_headers(identity)}
