"""JWT bearer authentication with PyJWT: pinned algorithms, keys chosen by algorithm and `kid`.

Why it resists the classic attacks:
- the algorithm list comes from config; a token's `alg` only selects among the pinned ones (`none` never);
- each algorithm has its own key table (HS256: the secret; RS256: RSA public keys; ES256: P-256 public
  keys), so a public key can never be used as an HMAC secret, whatever the token claims;
- `kid` must name a configured key exactly; a key configured without a kid only serves tokens without one;
- error descriptions are fixed strings: nothing from the token is echoed into a header or a log.
Verified tokens are cached (bounded LRU keyed by the token) until `cache_ttl` or their `exp` + leeway.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from microkit.errors import ConfigError
from microkit.gateway.jwt_algorithms import ALLOWED_ALGORITHMS
from microkit.gateway.security.cache import ExpiringLRU
from microkit.gateway.security.request import Denied, Identity, RequestInfo

MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 8192
MAX_SUBJECT_CHARS = 256
REALM = "microkit"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_JWS_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SCOPE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\"}


def _algorithm_of(key: PublicKey) -> str | None:
    """The one algorithm a public key may verify: RSA -> RS256, P-256 -> ES256."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256"
    return None


@dataclass(frozen=True)
class JWTSettings:
    """How bearer tokens are verified; read-only once built (`from_files` builds one from config)."""

    algorithms: tuple[str, ...]
    secret: bytes | None = None
    public_keys: Mapping[str | None, PublicKey] = field(default_factory=dict)
    jwks: Mapping[str | None, PublicKey] = field(default_factory=dict)
    issuer: str | None = None
    audience: str | tuple[str, ...] | None = None
    leeway: float = 0.0
    required_scopes: frozenset[str] = frozenset()
    cache_size: int = 4096
    cache_ttl: float = 60.0

    def __post_init__(self) -> None:
        algorithms = tuple(self.algorithms)
        object.__setattr__(self, "algorithms", algorithms)
        object.__setattr__(self, "required_scopes", frozenset(self.required_scopes))
        if not algorithms:
            raise ConfigError("jwt: no algorithms pinned (choose from HS256, RS256, ES256)")
        for alg in algorithms:
            if alg not in ALLOWED_ALGORITHMS:
                raise ConfigError(f"jwt: algorithm {alg!r} is not accepted (choose from HS256, RS256, ES256)")
        if "HS256" in algorithms:
            if not self.secret:
                raise ConfigError("jwt: HS256 is pinned but no secret is set")
            if len(self.secret) < MIN_SECRET_BYTES:
                raise ConfigError(f"jwt: the HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        for source in (self.public_keys, self.jwks):
            for kid, key in source.items():
                if _algorithm_of(key) is None:
                    raise ConfigError(f"jwt: key {kid!r} is neither an RSA nor a P-256 public key")
        for alg in ("RS256", "ES256"):
            if alg in algorithms and not any(_algorithm_of(k) == alg for s in (self.public_keys, self.jwks)
                                             for k in s.values()):
                raise ConfigError(f"jwt: {alg} is pinned but no {alg[:2]} public key is configured")
        shared = set(self.public_keys) & set(self.jwks)
        if shared:
            raise ConfigError(f"jwt: key id {sorted(shared, key=str)[0]!r} is both a PEM key and in the JWKS")
        if self.leeway < 0 or self.cache_ttl < 0 or self.cache_size < 0:
            raise ConfigError("jwt: leeway, cache_ttl and cache_size must not be negative")

    @classmethod
    def from_files(cls, algorithms: Iterable[str], *, secret: bytes | None = None,
                   public_key_files: Mapping[str | None, str | Path] | None = None,
                   jwks_file: str | Path | None = None, issuer: str | None = None,
                   audience: str | Iterable[str] | None = None, leeway: float = 0.0,
                   required_scopes: Iterable[str] = (), **extra: Any) -> JWTSettings:
        """Settings with keys read from PEM files ({kid or None: path}) and a JWKS file."""
        keys = {kid: load_public_key(path) for kid, path in (public_key_files or {}).items()}
        jwks = load_jwks(jwks_file) if jwks_file is not None else {}
        if audience is not None and not isinstance(audience, str):
            audience = tuple(audience)
        return cls(tuple(algorithms), secret=secret, public_keys=keys, jwks=jwks, issuer=issuer,
                   audience=audience, leeway=leeway, required_scopes=frozenset(required_scopes), **extra)


def secret_from_env(variable: str, environ: Mapping[str, str] = os.environ) -> bytes:
    """The HS256 secret held in environment variable `variable` (UTF-8), at least 32 bytes."""
    value = environ.get(variable)
    if not value:
        raise ConfigError(f"jwt: environment variable {variable} (the HS256 secret) is not set")
    secret = value.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"jwt: environment variable {variable} must hold at least {MIN_SECRET_BYTES} bytes")
    return secret


def load_public_key(path: str | Path) -> PublicKey:
    """An RSA (>= 2048 bits) or P-256 public key from a PEM file (a public key or an X.509 certificate)."""
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            if b"PRIVATE KEY" in data:
                raise ConfigError(f"{path}: holds a private key; give the gateway the public key "
                                  f"(openssl pkey -in KEY -pubout)") from None
            raise ConfigError(f"{path}: not a PEM public key or certificate") from None
    return _checked(key, str(path))


def load_jwks(path: str | Path) -> dict[str | None, PublicKey]:
    """The signing keys of a JWKS file, by `kid`; RSA and P-256 only, public parts only."""
    try:
        document = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'{path}: a JWKS needs a "keys" list')
    keys: dict[str | None, PublicKey] = {}
    for number, entry in enumerate(entries, 1):
        where = f"{path}: key #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not an object")
        if entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ConfigError(f"{where}: kid must be a string")
        if "d" in entry:
            raise ConfigError(f"{where} holds private key material; publish only public keys")
        kty = entry.get("kty")
        try:
            if kty == "RSA":
                key = RSAAlgorithm.from_jwk(entry)
            elif kty == "EC":
                key = ECAlgorithm.from_jwk(entry)
            else:
                raise ConfigError(f"{where}: kty {kty!r} is not accepted (RSA or EC; HS256 secrets come "
                                  f"from the environment)")
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: not a valid {kty} key ({exc})") from None
        key = _checked(key, where)
        alg = entry.get("alg")
        if alg is not None and alg != _algorithm_of(key):
            raise ConfigError(f"{where}: alg {alg!r} does not fit its {kty} key")
        if kid in keys:
            raise ConfigError(f"{where}: kid {kid!r} appears twice")
        keys[kid] = key
    if not keys:
        raise ConfigError(f"{path}: no signing keys")
    return keys


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _checked(key: Any, where: str) -> PublicKey:
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(f"{where}: holds a private key; give the gateway the public key")
    if _algorithm_of(key) is None:
        raise ConfigError(f"{where}: not an RSA or P-256 (ES256) public key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
    return key


def _challenge(description: str | None, error: str = "invalid_token", extra: str = "") -> tuple[tuple[str, str]]:
    value = f'Bearer realm="{REALM}"'
    if description is not None:
        value += f', error="{error}", error_description="{description}"{extra}'
    return (("WWW-Authenticate", value),)


def unauthorized(description: str | None) -> Denied:
    """A 401 with a Bearer challenge; `description` is a fixed string (None: no credentials were sent)."""
    return Denied(401, description or "authentication required", _challenge(description))


def bearer_token(info: RequestInfo) -> str:
    """The one bearer token of a request, from its Authorization header; 401 for anything ambiguous."""
    values = info.values("authorization")
    if not values:
        raise unauthorized(None)
    if len(values) > 1 or "," in values[0]:
        raise unauthorized("more than one Authorization header")
    scheme, _, token = values[0].strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise unauthorized("the Authorization scheme must be Bearer")
    token = token.strip(" \t")
    if len(token) > MAX_TOKEN_CHARS:
        raise unauthorized("token too long")
    if _JWS_SHAPE.fullmatch(token) is None:
        raise unauthorized("malformed token")
    if "access_token" in info.query or "%" in info.query:  # "%": the name may be percent-encoded
        for name, value in parse_qsl(info.query, keep_blank_values=True):
            if name.strip(" \t\x00") == "access_token" and value != token:
                raise unauthorized("two different tokens in one request")
    return token


class JWTAuth:
    """Verifies bearer tokens against one `JWTSettings`; cheap to call on every request."""

    def __init__(self, settings: JWTSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._cache: ExpiringLRU[Identity] = ExpiringLRU(settings.cache_size, clock)
        self._keys: dict[tuple[str, str | None], Any] = {}
        self._secret: bytes | None = None
        if settings.secret is not None and "HS256" in settings.algorithms:
            self._secret = settings.secret
        for source in (settings.public_keys, settings.jwks):
            for kid, key in source.items():
                self._keys[(_algorithm_of(key), kid)] = key
        self._options = {"require": ["exp", "sub"] + (["iss"] if settings.issuer else [])
                         + (["aud"] if settings.audience else [])}

    def authenticate(self, info: RequestInfo, required_scopes: Iterable[str] | None = None) -> Identity:
        """The identity behind the request's bearer token; Denied 401 (bad token) or 403 (missing scope).

        `required_scopes` overrides the settings' default for this call (a route's own scopes).
        """
        token = bearer_token(info)
        identity = self._cache.get(token)
        if identity is None:
            identity, expires = self.verify(token)
            self._cache.put(token, identity, min(self.clock() + self.settings.cache_ttl,
                                                 expires + self.settings.leeway))
        require_scopes(identity, self.settings.required_scopes if required_scopes is None else required_scopes)
        return identity

    def verify(self, token: str) -> tuple[Identity, float]:
        """Verify `token` (no cache): its identity and its `exp`; Denied 401 on any failure."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise unauthorized("token algorithm not accepted")
        if "crit" in header:
            raise unauthorized("unsupported critical header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise unauthorized("malformed kid")
        key = self._secret if alg == "HS256" else self._keys.get((alg, kid))
        if key is None:
            raise unauthorized("unknown key id" if kid is not None else "token has no kid")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.settings.audience,
                                issuer=self.settings.issuer, leeway=self.settings.leeway, options=self._options)
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"missing {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("bad signature") from None
        except jwt.InvalidTokenError:
            raise unauthorized("invalid token") from None
        return identity_from_claims(claims), float(claims["exp"])


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The identity in verified claims: `sub`, scopes from `scope` (space-separated) and/or `scp`
    (list or string), and the API key id `mk_key` of tokens issued by `POST /auth/token`."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS or not subject.isprintable():
        raise unauthorized("invalid sub claim")
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s and _SCOPE_CHARS.issuperset(s)
                                                  for s in items):
            raise unauthorized(f"invalid {name} claim")
        scopes.update(items)
    key_id = claims.get("mk_key")
    if key_id is not None and not (isinstance(key_id, str) and key_id and _B64URL.issuperset(key_id)):
        raise unauthorized("invalid mk_key claim")
    return Identity(subject, frozenset(scopes), key_id, "jwt")


def require_scopes(identity: Identity, required: Iterable[str]) -> None:
    """Denied 403 (error="insufficient_scope") unless `identity` holds every scope in `required`."""
    missing = frozenset(required) - identity.scopes
    if missing:
        needed = " ".join(sorted(frozenset(required)))
        challenge = _challenge("the token lacks a required scope", "insufficient_scope", f', scope="{needed}"')
        raise Denied(403, f"missing scope: {' '.join(sorted(missing))}",
                     challenge if identity.method == "jwt" else ())
