"""Short-lived JWTs for `POST /auth/token`: a client trades its API key for a bearer token.

The token is signed so that the same gateway's `JWTAuth` accepts it: HS256 with the configured secret, or
RS256/ES256 with a private key the caller passes (it must fit a pinned algorithm). It carries `sub`,
`scope`, `iss`/`aud` when configured, `iat`/`nbf`/`exp`, a random `jti`, and the API key id as `mk_key`
so that rate limits keyed by API key still apply to requests made with the token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from microkit.gateway.security.jwt_auth import JWTSettings
from microkit.gateway.security.request import Identity

DEFAULT_TTL = 300
MAX_TTL = 86_400

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _algorithm(settings: JWTSettings, signing_key: SigningKey | None) -> str:
    if signing_key is None:
        if "HS256" not in settings.algorithms or not settings.secret:
            raise ValueError("issuing tokens needs HS256 pinned with a secret, or a private signing key")
        return "HS256"
    if isinstance(signing_key, rsa.RSAPrivateKey):
        alg = "RS256"
    elif isinstance(signing_key, ec.EllipticCurvePrivateKey) and signing_key.curve.name == "secp256r1":
        alg = "ES256"
    else:
        raise ValueError("the signing key must be an RSA or P-256 private key")
    if alg not in settings.algorithms:
        raise ValueError(f"the signing key is for {alg}, which is not pinned")
    return alg


def issue_token(identity: Identity, settings: JWTSettings, ttl: float = DEFAULT_TTL, *,
                scopes: Iterable[str] | None = None, signing_key: SigningKey | None = None,
                kid: str | None = None, clock: Callable[[], float] = time.time) -> str:
    """A JWT for `identity` valid `ttl` seconds; `scopes` narrows the identity's scopes (never widens them)."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"token lifetime must be between 1 and {MAX_TTL} seconds")
    granted = identity.scopes if scopes is None else frozenset(scopes)
    if not granted <= identity.scopes:
        raise ValueError("requested scopes exceed the key's scopes")
    alg = _algorithm(settings, signing_key)
    now = int(clock())
    claims: dict[str, Any] = {"sub": identity.subject, "scope": " ".join(sorted(granted)), "iat": now,
                              "nbf": now, "exp": now + int(ttl), "jti": secrets.token_urlsafe(16)}
    if identity.key_id is not None:
        claims["mk_key"] = identity.key_id
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience if isinstance(settings.audience, str) else list(settings.audience)
    key = settings.secret if alg == "HS256" else signing_key
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def token_response(identity: Identity, settings: JWTSettings, ttl: float = DEFAULT_TTL, **options: Any) -> dict:
    """The JSON body of `POST /auth/token` (RFC 6749 §5.1 field names)."""
    token = issue_token(identity, settings, ttl, **options)
    granted = identity.scopes if options.get("scopes") is None else frozenset(options["scopes"])
    return {"access_token": token, "token_type": "Bearer", "expires_in": int(ttl), "scope": " ".join(sorted(granted))}
