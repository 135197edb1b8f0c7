"""The gateway's security core, free of any web framework: authentication (JWT, API keys), token
exchange, rate limits, CORS and log redaction. Each check takes a `RequestInfo` and either returns or
raises `Denied`; the gateway's checks (microkit/gateway/checks.py) wrap them.
"""

from microkit.gateway.security.apikeys import ApiKeyAuth, KeyRecord, KeyStore, UnknownKey
from microkit.gateway.security.cors import CorsPolicy
from microkit.gateway.security.jwt_auth import JWTAuth, JWTSettings, secret_from_env
from microkit.gateway.security.keystores import RedisKeyStore, SqliteKeyStore, connect_keystore
from microkit.gateway.security.ratelimit import Decision, LocalLimiter, Rate, RedisLimiter, limit_key
from microkit.gateway.security.redact import RedactingFilter, redact_headers, redact_target, redact_text
from microkit.gateway.security.request import (
    IDENTITY_HEADERS, Denied, Identity, RequestInfo, identity_environ, identity_headers, strip_identity,
    strip_identity_environ,
)
from microkit.gateway.security.tokens import issue_token, token_response

__all__ = [
    "IDENTITY_HEADERS", "ApiKeyAuth", "CorsPolicy", "Decision", "Denied", "Identity", "JWTAuth", "JWTSettings",
    "KeyRecord", "KeyStore", "LocalLimiter", "Rate", "RedactingFilter", "RedisKeyStore", "RedisLimiter",
    "RequestInfo", "SqliteKeyStore", "UnknownKey", "connect_keystore", "identity_environ", "identity_headers",
    "issue_token", "limit_key", "redact_headers", "redact_target", "redact_text", "secret_from_env",
    "strip_identity", "strip_identity_environ", "token_response",
]
