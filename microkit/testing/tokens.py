"""Credentials for secured routes: JWTs the test's gateway accepts, and API keys in the test's key store."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from microkit.testing.project import TestProject

DEFAULT_TTL = 300


class CredentialError(RuntimeError):
    """The project is not set up for the credential asked for."""


def jwt_token(project: TestProject, subject: str = "test", scopes: Iterable[str] = (), *, ttl: int = DEFAULT_TTL,
              alg: str | None = None, **claims: Any) -> str:
    """A token for `subject` with `scopes`, signed so that the test's gateway accepts it: HS256 with the
    test's secret, RS256/ES256 with the test's own key pair. `iss` and `aud` come from
    `[gateway.auth.jwt]`; `claims` adds or overrides claims (`exp=0` makes an expired token)."""
    import jwt

    settings = project.conf.gateway.auth.jwt
    if not settings.algorithms:
        raise CredentialError(f"{project.source_path}: gateway.auth.jwt.algorithms pins no algorithm, so the "
                              f"gateway accepts no JWT")
    alg = alg or settings.algorithms[0]
    if alg not in settings.algorithms:
        raise CredentialError(f"{alg} is not among gateway.auth.jwt.algorithms ({', '.join(settings.algorithms)})")
    now = int(time.time())
    payload: dict[str, Any] = {"sub": subject, "scope": " ".join(scopes), "iat": now, "nbf": now, "exp": now + ttl}
    if settings.issuer:
        payload["iss"] = settings.issuer
    if settings.audience:
        payload["aud"] = settings.audience[0]
    payload.update(claims)
    if alg == "HS256":
        return jwt.encode(payload, project.jwt_secret, algorithm="HS256")
    kid, private = project.jwt_private_keys[alg]
    return jwt.encode(payload, private, algorithm=alg, headers={"kid": kid})


def api_key(project: TestProject, name: str = "test", scopes: Iterable[str] = ()) -> str:
    """A new API key (the `mk_...` text clients send) in the test's key store, as `microkit keys create`
    makes it."""
    store = project.keystore()
    try:
        _, plaintext = store.create(name, tuple(scopes))
    finally:
        store.close()
    return plaintext
