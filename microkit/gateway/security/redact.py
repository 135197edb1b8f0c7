"""Keep secrets out of logs: credential headers, tokens in query strings, and anything shaped like a JWT
or a microkit API key in free text.

Use `redact_target` on a request target before an access log line is written, `redact_headers` before
headers are logged, and `RedactingFilter` on log handlers as the last line of defence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie",
                            "x-auth-token", "x-csrf-token"})
SECRET_PARAMS = frozenset({"access_token", "id_token", "refresh_token", "token", "api_key", "apikey", "key",
                           "client_secret", "password", "secret", "code", "signature", "sig"})

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(r"\b(mk_[A-Za-z0-9_-]{11})[A-Za-z0-9_-]{32}")
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|apikey|basic|digest)\s+[A-Za-z0-9._~+/=-]+")
TEXT_PARAMS = ("access_token", "refresh_token", "id_token", "client_secret", "api_key", "apikey", "password",
               "secret", "token")
_PARAM = re.compile(r"(?i)([?&;\s\"']|^)(" + "|".join(TEXT_PARAMS)
                    + r")=[^&;#\s\"']*")


def redact_header(name: str, value: str) -> str:
    """`value`, or a redacted stand-in when header `name` carries a credential (the scheme is kept)."""
    if name.lower() not in SECRET_HEADERS:
        return value
    scheme, space, _ = value.strip().partition(" ")
    return f"{scheme} {REDACTED}" if space and name.lower().endswith("authorization") else REDACTED


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every header with credential values redacted."""
    return [(name, redact_header(name, value)) for name, value in headers]


def redact_target(target: str) -> str:
    """A request target (path?query) with the values of secret query parameters redacted, and anything
    shaped like a JWT or a microkit API key wherever it stands (any parameter name, or the path)."""
    if "eyJ" in target or "mk_" in target:
        target = _API_KEY.sub(lambda m: m.group(1) + REDACTED, _JWT.sub(REDACTED, target))
    path, mark, query = target.partition("?")
    if not mark:
        return target
    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
        fragment = "#" + fragment
    pieces = []
    for piece in re.split(r"([&;])", query):
        name, equals, _ = piece.partition("=")
        if equals and unquote_plus(name).lower().strip(" \t\x00") in SECRET_PARAMS:
            piece = f"{name}={REDACTED}"
        pieces.append(piece)
    return f"{path}?{''.join(pieces)}{fragment}"


def redact_text(text: str) -> str:
    """Free text with JWTs, API keys, Authorization values and secret `name=value` pairs redacted."""
    text = _JWT.sub(REDACTED, text)
    text = _API_KEY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}", text)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message (and traceback) through `redact_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_redaction(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add a RedactingFilter to `handlers` (default: the root logger's), once each.

    Filters go on handlers, not loggers, because a logger's filters skip records its children propagate.
    """
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
