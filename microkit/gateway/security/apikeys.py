"""API keys: `mk_` + 32 random bytes (URL-safe base64, 43 characters), stored only as a SHA-256 digest.

Why plain SHA-256 rather than a slow KDF or an HMAC with a server pepper: a key holds 256 random bits,
so a leaked digest cannot be brute-forced whatever the hash speed (slow hashes exist to protect
low-entropy passwords), and a pepper would be one more secret every host and `microkit keys` needs.
Digests are compared with `hmac.compare_digest`.

The first 11 characters after `mk_` are the key's id, which indexes the store, so verifying needs one
lookup and no scan. The id is not secret (listed, logged, forwarded as X-Auth-Key-Id); the remaining
32 characters (192 bits) are. The store is chosen by the registry URL: Redis (a hash under
`{namespace}:apikeys`) or the embedded SQLite file; see `keystores`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from microkit.errors import MicrokitError
from microkit.gateway.security.cache import ExpiringLRU
from microkit.gateway.security.jwt_auth import require_scopes
from microkit.gateway.security.request import Denied, Identity, RequestInfo
from microkit.registry import RegistryUnavailable

PREFIX = "mk_"
ID_CHARS = 11
KEY_CHARS = len(PREFIX) + 43
CACHE_TTL = 1.0
MAX_NAME_CHARS = 100
REALM = "microkit"
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_SCOPE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\"}
_MISSING = object()


class UnknownKey(MicrokitError):
    """No API key has this id."""


@dataclass(frozen=True)
class KeyRecord:
    """What the store knows about a key, without its secret."""

    key_id: str
    name: str
    scopes: frozenset[str]
    created_at: float
    revoked: bool = False


def generate_key() -> str:
    """A fresh plaintext key whose id never starts with "-" (`microkit keys revoke -x...` would read an option)."""
    while True:
        key = PREFIX + secrets.token_urlsafe(32)
        if key[len(PREFIX)] != "-":
            return key


def well_formed(key: str) -> bool:
    """True for something shaped like a microkit key (cheap check before any lookup)."""
    return len(key) == KEY_CHARS and key.startswith(PREFIX) and _B64URL.issuperset(key[len(PREFIX):])


def key_id_of(key: str) -> str:
    """The id embedded in a (well-formed) key."""
    return key[len(PREFIX):len(PREFIX) + ID_CHARS]


def key_digest(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def check_name_and_scopes(name: str, scopes: Iterable[str]) -> frozenset[str]:
    """Validate what `create` is given; ValueError names the problem."""
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"a key name is 1 to {MAX_NAME_CHARS} printable characters")
    scopes = frozenset(scopes)
    for scope in scopes:
        if not scope or not _SCOPE_CHARS.issuperset(scope):
            raise ValueError(f"scope {scope!r}: use printable ASCII without spaces, quotes or backslashes")
    return scopes


class KeyStore(ABC):
    """Where key records live; subclasses store (record, digest) pairs by key id."""

    def create(self, name: str, scopes: Iterable[str] = ()) -> tuple[str, str]:
        """Make a key: (key_id, plaintext). The plaintext is not stored anywhere: show it once."""
        scopes = check_name_and_scopes(name, scopes)
        for _ in range(5):
            plaintext = generate_key()
            record = KeyRecord(key_id_of(plaintext), name, scopes, time.time())
            if self._insert(record, key_digest(plaintext)):
                return record.key_id, plaintext
        raise MicrokitError("could not allocate a unique API key id")

    def verify(self, plaintext: str) -> KeyRecord | None:
        """The record of a valid, unrevoked key; None otherwise. RegistryUnavailable if the store is down."""
        if not well_formed(plaintext):
            return None
        found = self._get(key_id_of(plaintext))
        if found is None:
            return None
        record, digest = found
        if not hmac.compare_digest(digest, key_digest(plaintext)) or record.revoked:
            return None
        return record

    @abstractmethod
    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""

    @abstractmethod
    def revoke(self, key_id: str) -> KeyRecord:
        """Mark a key revoked (kept for the record); UnknownKey if there is none."""

    @abstractmethod
    def close(self) -> None:
        """Release this process's connection."""

    @abstractmethod
    def _insert(self, record: KeyRecord, digest: str) -> bool:
        """Store a new record; False if its id is taken."""

    @abstractmethod
    def _get(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """The record and digest stored under `key_id`."""


def unauthorized(message: str) -> Denied:
    return Denied(401, message, (("WWW-Authenticate", f'ApiKey realm="{REALM}"'),))


def presented_key(info: RequestInfo) -> str:
    """The one API key of a request, from `Authorization: ApiKey <key>` or `X-API-Key`; 401 if ambiguous."""
    authorization = info.values("authorization")
    header = info.values("x-api-key")
    if len(authorization) > 1 or len(header) > 1:
        raise unauthorized("more than one credential header")
    found = []
    if authorization:
        scheme, _, rest = authorization[0].strip(" \t").partition(" ")
        if scheme.lower() == "apikey":
            found.append(rest.strip(" \t"))
    if header:
        found.append(header[0].strip(" \t"))
    if "api_key" in info.query or "%" in info.query:  # "%": the name may be percent-encoded
        found += [value for name, value in parse_qsl(info.query, keep_blank_values=True)
                  if name.strip(" \t\x00") == "api_key"]
    if not found:
        raise unauthorized("API key required")
    if len(set(found)) > 1:
        raise unauthorized("two different API keys in one request")
    if not authorization and not header:
        raise unauthorized("send the API key in the X-API-Key or Authorization header, not the URL")
    if not well_formed(found[0]):
        raise unauthorized("malformed API key")
    return found[0]


class ApiKeyAuth:
    """Authenticates requests by API key, caching each verdict for `cache_ttl` seconds.

    The cache (keyed by the key's digest) holds valid and invalid verdicts alike, so a revoked key stops
    working at most `cache_ttl` seconds (default 1) after `revoke` returns, in every process.
    """

    def __init__(self, store: KeyStore, *, cache_ttl: float = CACHE_TTL, cache_size: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._cache: ExpiringLRU[Identity | None] = ExpiringLRU(cache_size, clock)

    def authenticate(self, info: RequestInfo, required_scopes: Iterable[str] = ()) -> Identity:
        """The identity of the request's API key; Denied 401 (missing/invalid), 403 (scope), 503 (store down)."""
        key = presented_key(info)
        digest = key_digest(key)
        identity = self._cache.get(digest, _MISSING)
        if identity is _MISSING:
            try:
                record = self.store.verify(key)
            except RegistryUnavailable:
                raise Denied(503, "API key store unavailable", (("Retry-After", "1"),)) from None
            identity = None if record is None else Identity(record.name, record.scopes, record.key_id, "apikey")
            self._cache.put(digest, identity, self.clock() + self.cache_ttl)
        if identity is None:
            raise unauthorized("invalid or revoked API key")
        require_scopes(identity, required_scopes)
        return identity

    def active(self, key_id: str) -> bool:
        """Whether the key `key_id` exists and is not revoked, cached like verdicts: a token obtained with a
        key (POST /auth/token) stops working when the key is revoked, within the same `cache_ttl`."""
        cache_key = "id:" + key_id
        found = self._cache.get(cache_key, _MISSING)
        if found is _MISSING:
            try:
                entry = self.store._get(key_id)
            except RegistryUnavailable:
                raise Denied(503, "API key store unavailable", (("Retry-After", "1"),)) from None
            found = entry is not None and not entry[0].revoked
            self._cache.put(cache_key, found, self.clock() + self.cache_ttl)
        return bool(found)
