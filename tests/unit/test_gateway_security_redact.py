"""Secrets never reach logs: the redaction helpers, the logging filter, and the security checks' own
messages and log records."""

from __future__ import annotations

import io
import logging
import time

import jwt
import pytest

from microkit.gateway.security.apikeys import ApiKeyAuth, generate_key
from microkit.gateway.security.jwt_auth import JWTAuth, JWTSettings
from microkit.gateway.security.keystores import SqliteKeyStore
from microkit.gateway.security.ratelimit import RedisLimiter, Rate
from microkit.gateway.security.redact import (
    RedactingFilter, install_redaction, redact_headers, redact_target, redact_text,
)
from microkit.gateway.security.request import Denied, RequestInfo

SECRET = b"k" * 32
TOKEN = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
KEY = generate_key()


def test_redact_headers_keeps_the_scheme():
    headers = [("Authorization", f"Bearer {TOKEN}"), ("X-API-Key", KEY), ("Cookie", "session=abc"),
               ("Proxy-Authorization", "Basic dXNlcjpwYXNz"), ("Accept", "application/json")]
    assert redact_headers(headers) == [("Authorization", "Bearer [redacted]"), ("X-API-Key", "[redacted]"),
                                       ("Cookie", "[redacted]"), ("Proxy-Authorization", "Basic [redacted]"),
                                       ("Accept", "application/json")]


@pytest.mark.parametrize("target, expected", [
    ("/orders?access_token=abc&page=2", "/orders?access_token=[redacted]&page=2"),
    ("/orders?page=2&API_KEY=abc", "/orders?page=2&API_KEY=[redacted]"),
    ("/orders?access%5Ftoken=abc", "/orders?access%5Ftoken=[redacted]"),
    ("/cb?code=xyz;state=1#frag", "/cb?code=[redacted];state=1#frag"),
    ("/orders?tokens=fine&apikeys=fine", "/orders?tokens=fine&apikeys=fine"),
    ("/orders", "/orders"),
])
def test_redact_target(target, expected):
    assert redact_target(target) == expected


def test_redact_text_catches_tokens_and_keys_anywhere():
    line = (f'GET /x?access_token={TOKEN} auth="Bearer {TOKEN}" key {KEY} apikey {KEY[:10]}'
            f" password=hunter2 ApiKey {KEY}")
    clean = redact_text(line)
    for secret in (TOKEN, KEY, KEY[14:], "hunter2", TOKEN.split(".")[2]):
        assert secret not in clean
    assert KEY[:14] in clean  # the key id stays, for debugging


def test_the_filter_redacts_messages_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install_redaction([handler])
    install_redaction([handler])
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    logger = logging.getLogger("mktest.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("request %s with %s", f"/x?access_token={TOKEN}", {"X-API-Key": KEY})
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            logger.exception("failed for Authorization: Bearer %s", TOKEN)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "ValueError" in output and "[redacted]" in output
    assert TOKEN not in output and KEY[14:] not in output


def test_security_checks_never_log_or_echo_credentials(tmp_path, caplog):
    """Drive every refusal path with real credentials, and look for them in every record and answer."""
    store = SqliteKeyStore(tmp_path / "registry.db", "ns")
    _, key = store.create("billing", ["a"])
    jwt_auth = JWTAuth(JWTSettings(("HS256",), secret=SECRET, required_scopes={"admin"}))
    key_auth = ApiKeyAuth(store)
    other = generate_key()
    bad_token = TOKEN[:-3] + "AAA"
    requests = [
        {"authorization": [f"Bearer {TOKEN}"]}, {"authorization": [f"Bearer {bad_token}"]},
        {"authorization": [f"Bearer {TOKEN}", f"Bearer {bad_token}"]},
        {"x-api-key": [key]}, {"x-api-key": [other]}, {"x-api-key": [key, other]},
        {"authorization": [f"ApiKey {key}"], "x-api-key": [other]},
    ]
    answers = []
    with caplog.at_level(logging.DEBUG):
        for headers in requests:
            info = RequestInfo("GET", "/", headers, "127.0.0.1", f"access_token={bad_token}&api_key={other}")
            for check in (jwt_auth.authenticate, lambda i: key_auth.authenticate(i, {"admin"})):
                try:
                    check(info)
                except Denied as denied:
                    answers.append(denied.message + repr(denied.headers) + repr(denied))
        limiter = RedisLimiter(f"redis://user:{TOKEN}@127.0.0.1:1/0", "ns")
        limiter.check("k", Rate.parse("1/s"))
    text = "\n".join(answers + [r.getMessage() for r in caplog.records])
    assert len(answers) == 14 and caplog.records
    for secret in (TOKEN, bad_token, key, other, key[14:], other[14:], TOKEN.split(".")[2]):
        assert secret not in text


@pytest.mark.parametrize("target", [
    "/pub/x?jwt=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl",
    "/cb?id_token_hint=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl",
    "/x/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl/y",
    "/pub/x?x_api_key=mk_z86c85dE8uo7k62nbeSjpJDgF_cEDC_VSPtbiXPDBIc",
    "/users/1?access_token%00=s3cr3t-value",
])
def test_tokens_are_redacted_from_targets_whatever_their_name(target):
    redacted = redact_target(target)
    for secret in ("c2lnbmF0dXJl", "F_cEDC_VSPtbiXPDBIc", "s3cr3t-value"):
        assert secret not in redacted, redacted
