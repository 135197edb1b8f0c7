"""Which service a request path belongs to: longest-prefix match on segment boundaries.

`/users` matches `/users` and `/users/1` but not `/usersx`. Paths are normalised before matching
(percent-encoded dots decoded, dot segments removed), so `/users/../admin` is matched as `/admin`;
percent-encoded slashes and backslashes are refused, so no encoding can step out of a prefix.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes
from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")

_ENCODED_DOT = re.compile(rb"%2[eE]")
_FORBIDDEN = re.compile(rb"%(?:2[fF]|5[cC]|00)")


class BadPath(ValueError):
    """A request target that cannot be routed safely: answered with 400."""


def split_target(raw: bytes) -> tuple[bytes, bytes]:
    """(path, query) of an origin-form request target; the query keeps its leading "?" (or is empty)."""
    path, mark, query = raw.partition(b"?")
    return path, mark + query


def normalize(path: bytes) -> bytes:
    """The raw path with %2E decoded and dot segments removed (RFC 3986 5.2.4); refuses encoded "/", "\\", NUL."""
    if not path.startswith(b"/"):
        raise BadPath("the request path must start with /")
    if _FORBIDDEN.search(path):
        raise BadPath("percent-encoded '/', '\\' or NUL in the path")
    if b"." not in path and b"%" not in path:
        return path
    path = _ENCODED_DOT.sub(b".", path)
    if b"/." not in path:
        return path
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        elif segment == b".":
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def normalize_environ(environ: dict) -> None:
    """Point a WSGI environ's PATH_INFO at the normalised raw target (RAW_URI), so what a router matches
    is what gets forwarded; raises BadPath for a target that cannot be routed safely."""
    raw = environ.get("RAW_URI")
    if raw is None:
        return
    path, _ = split_target(raw.encode("latin-1"))
    normal = normalize(path)
    if normal != path:
        environ["PATH_INFO"] = unquote_to_bytes(normal).decode("latin-1")


@dataclass(frozen=True)
class Match(Generic[T]):
    prefix: str
    target: T


class RouteTable(Generic[T]):
    """Prefix -> target, matched on whole segments, longest prefix first; "/" catches everything else."""

    def __init__(self, routes: Iterable[tuple[str, T]] = ()) -> None:
        self._routes: dict[str, T] = {}
        for prefix, target in routes:
            self.add(prefix, target)

    def add(self, prefix: str, target: T) -> None:
        if not prefix.startswith("/") or (prefix != "/" and prefix.endswith("/")):
            raise ValueError(f"route prefix must start with / and not end with one: {prefix!r}")
        if prefix in self._routes:
            raise ValueError(f"route {prefix!r} is defined twice")
        self._routes[prefix] = target

    def match(self, path: str) -> Match[T] | None:
        """The route owning a normalised path, or None. Walks the path's own prefixes: O(segments)."""
        routes = self._routes
        candidate = path.rstrip("/") or "/"
        while True:
            target = routes.get(candidate)
            if target is not None:
                return Match(candidate, target)
            if candidate == "/":
                return None
            cut = candidate.rfind("/")
            candidate = candidate[:cut] or "/"

    def items(self) -> list[tuple[str, T]]:
        """Routes, longest prefix first: the order in which they win."""
        return sorted(self._routes.items(), key=lambda item: (-len(item[0]), item[0]))

    def __len__(self) -> int:
        return len(self._routes)
