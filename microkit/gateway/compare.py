"""Comparing two answers to one request (a primary's and its shadow's): pure functions.

An `Answer` holds the status, the response headers, and the body: kept whole up to a limit (and then
compared as JSON when both sides say JSON), and always hashed, so a larger or non-JSON body is
compared by its SHA-256. Differences are (field, left, right) with fields named "status",
"header:NAME", "$.path.to[3].field" or "body". Ignore rules name fields: "header:date", "$.created_at",
"$.items[*].id"; a rule also covers everything below the field it names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Difference = tuple[str, Any, Any]
_INDEX = re.compile(r"\[\d+\]")


@dataclass
class Answer:
    """One side's answer, as far as it is compared."""

    status: int
    headers: dict[str, str]
    body: bytes | None  # None: larger than the limit (compared by digest only)
    digest: str
    side: str = ""

    @classmethod
    def of(cls, status: int, headers: Iterable[tuple[bytes, bytes]], capture: BodyCapture, side: str = "") -> Answer:
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            joined[key] = joined[key] + ", " + text if key in joined else text
        return cls(status, joined, capture.body(), capture.hexdigest(), side)

    def shown(self, headers: Iterable[str], limit: int = 4096) -> dict:
        """For a mismatch record: status, the compared headers, the body as text (cut at `limit`)."""
        body = None if self.body is None else self.body[:limit].decode("utf-8", "replace")
        return {"side": self.side, "status": self.status,
                "headers": {name: self.headers[name] for name in headers if name in self.headers},
                "body": body, "body_sha256": self.digest}


@dataclass
class BodyCapture:
    """A body seen in pieces: the first `limit` bytes kept, every byte hashed."""

    limit: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    over: bool = False
    _hash: Any = field(default_factory=hashlib.sha256)

    def __call__(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        if not self.over:
            if self.size > self.limit:
                self.over = True
                self.parts.clear()
            else:
                self.parts.append(chunk)

    def body(self) -> bytes | None:
        return None if self.over else b"".join(self.parts)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def rule_pattern(rules: Iterable[str]) -> re.Pattern | None:
    """One regular expression matching every field an ignore (or noise) rule covers."""
    parts = []
    for rule in rules:
        if rule.startswith("header:"):
            parts.append(re.escape(rule.lower()) + "$")
        else:
            parts.append(re.escape(rule).replace(r"\[\*\]", r"\[\d+\]") + r"(?:$|[.\[])")
    return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


def general(field_name: str) -> str:
    """A field with its list indexes made wildcards: how learned noise is remembered."""
    return _INDEX.sub("[*]", field_name)


def _is_json(answer: Answer) -> bool:
    kind = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _walk(path: str, left: Any, right: Any, out: list[Difference]) -> None:
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right), key=str):
            _walk(f"{path}.{key}", left.get(key, _MISSING), right.get(key, _MISSING), out)
    elif isinstance(left, list) and isinstance(right, list):
        for index in range(max(len(left), len(right))):
            _walk(f"{path}[{index}]", left[index] if index < len(left) else _MISSING,
                  right[index] if index < len(right) else _MISSING, out)
    elif left != right or type(left) is not type(right):
        out.append((path, None if left is _MISSING else left, None if right is _MISSING else right))


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def compare(left: Answer, right: Answer, headers: Iterable[str] = (), ignore: re.Pattern | None = None) -> list[Difference]:
    """The differences between two answers, minus the fields `ignore` matches."""
    found: list[Difference] = []
    if left.status != right.status:
        found.append(("status", left.status, right.status))
    for name in headers:
        name = name.lower()
        if left.headers.get(name) != right.headers.get(name):
            found.append((f"header:{name}", left.headers.get(name), right.headers.get(name)))
    if left.digest != right.digest:
        parsed = None
        if left.body is not None and right.body is not None and _is_json(left) and _is_json(right):
            try:
                parsed = json.loads(left.body), json.loads(right.body)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
                parsed = None
        fields: list[Difference] = []
        if parsed is not None:
            try:
                _walk("$", parsed[0], parsed[1], fields)
            except RecursionError:
                parsed = None
        found += fields if parsed is not None else [
            ("body", f"sha256:{left.digest[:16]}", f"sha256:{right.digest[:16]}")]
    if ignore is None:
        return found
    return [d for d in found if not ignore.match(d[0])]
