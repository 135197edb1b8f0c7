"""What governs each gateway route (auth, scopes, rate limit, CORS), and the checkers built from config.

A `Policy` rides on every Bottle route's config as `route.config["microkit.policy"]`; the gateway's
plugins (microkit/gateway/plugins.py) read it there, so a route's behaviour is decided once, when the
app is built. `Security` holds what the policies share: the JWT verifier, the API key checker and the
rate limiter, made from `[gateway.auth]`, `[gateway.ratelimit]` and `[registry]`.

Limits are shared through the registry's Redis when there is one (namespace = the project name, so
every gateway process on every host counts together); with the embedded registry they are counted in
each gateway worker's memory, so a limit applies per worker process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from microkit.config import Config, ServiceConfig
from microkit.errors import ConfigError
from microkit.gateway.security import (
    ApiKeyAuth, CorsPolicy, Identity, JWTAuth, JWTSettings, LocalLimiter, Rate, RedisLimiter, RequestInfo,
    connect_keystore, secret_from_env,
)
from microkit.gateway.security.jwt_auth import unauthorized as jwt_unauthorized

TOKEN_PATH = "/auth/token"


@dataclass(frozen=True)
class Policy:
    """One route's governance; `limit_scope` separates its counters from other routes'."""

    auth: str = "none"  # "none" | "jwt" | "apikey"
    scopes: frozenset[str] = frozenset()
    rate: Rate | None = None
    rate_by: str = "ip"
    limit_scope: str = ""
    cors: CorsPolicy | None = None


def service_policy(config: Config, service: ServiceConfig) -> Policy:
    """The policy of a service's route, defaults filled in from `[gateway.auth]` and `[gateway.ratelimit]`."""
    cors = None
    if service.cors is not None:
        c = service.cors
        try:
            cors = CorsPolicy(c.origins, c.methods, c.headers, expose_headers=c.expose_headers,
                              credentials=c.credentials, max_age=c.max_age)
        except ValueError as exc:
            raise ConfigError(f"{config.path}: services.{service.name}.cors: {exc}") from None
    rate = Rate.parse(service.rate_limit, service.rate_limit_burst) if service.rate_limit else None
    return Policy(auth=service.auth or config.gateway.auth.default, scopes=frozenset(service.scopes), rate=rate,
                  rate_by=service.rate_limit_by or config.gateway.ratelimit.by, limit_scope=service.route or "",
                  cors=cors)


def admin_policy(config: Config) -> Policy:
    """`/__microkit/` endpoints other than health: an API key holding the admin scope."""
    return Policy(auth="apikey", scopes=frozenset({config.gateway.auth.admin_scope}))


def token_policy(config: Config) -> Policy:
    """`POST /auth/token` checks the API key itself, after a per-IP limit that counts failed attempts too
    (API key guesses cost a slot each)."""
    token = config.gateway.auth.token
    return Policy(rate=Rate.parse(token.rate_limit, token.rate_limit_burst), rate_by="ip", limit_scope=TOKEN_PATH)


class Security:
    """The checkers the plugins share, built on first use from the project's config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.folder = config.path.parent

    @property
    def issues_tokens(self) -> bool:
        """Whether `POST /auth/token` is served: JWTs are configured, with HS256 or a signing key to sign them."""
        auth = self.config.gateway.auth
        return bool(auth.jwt.algorithms) and ("HS256" in auth.jwt.algorithms or auth.token.signing_key is not None)

    @cached_property
    def jwt_settings(self) -> JWTSettings:
        jwt = self.config.gateway.auth.jwt
        if not jwt.algorithms:
            raise ConfigError(f"{self.config.path}: gateway.auth.jwt.algorithms: is required for JWT auth")
        files: dict[str | None, Path] = {kid: self.folder / path for kid, path in jwt.public_keys.items()}
        if jwt.public_key is not None:
            files[None] = self.folder / jwt.public_key
        secret = secret_from_env(jwt.secret_env) if "HS256" in jwt.algorithms else None
        return JWTSettings.from_files(
            jwt.algorithms, secret=secret, public_key_files=files,
            jwks_file=self.folder / jwt.jwks_file if jwt.jwks_file else None, issuer=jwt.issuer,
            audience=jwt.audience, leeway=jwt.leeway, required_scopes=jwt.required_scopes,
            cache_size=jwt.cache_size, cache_ttl=jwt.cache_ttl)

    @cached_property
    def jwt(self) -> JWTAuth:
        return JWTAuth(self.jwt_settings)

    @cached_property
    def apikeys(self) -> ApiKeyAuth:
        store = connect_keystore(self.config.registry.url, project_root=self.config.root,
                                 namespace=self.config.project.name)
        return ApiKeyAuth(store, cache_ttl=self.config.gateway.auth.apikeys.cache_ttl)

    @cached_property
    def limiter(self) -> RedisLimiter | LocalLimiter:
        url = self.config.registry.url
        if url is None:
            return LocalLimiter()
        governance = self.config.gateway.ratelimit
        return RedisLimiter(url, self.config.project.name, governance.on_redis_down,
                            retry_interval=governance.retry_interval)

    @cached_property
    def signing_key(self):
        """The private key of `[gateway.auth.token] signing_key`, or None for HS256 with the secret."""
        path = self.config.gateway.auth.token.signing_key
        if path is None:
            return None
        try:
            return serialization.load_pem_private_key((self.folder / path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.config.path}: gateway.auth.token.signing_key: cannot load {path}: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None

    def prepare(self, policies: list[Policy]) -> None:
        """Build what `policies` need now, so a bad key file or a missing secret stops the gateway at boot."""
        needed = []
        if any(p.auth == "jwt" for p in policies):
            needed.append("jwt")
        if self.issues_tokens:
            needed += ["jwt_settings", "signing_key"]
        if self.issues_tokens or any(p.rate is not None for p in policies):
            needed.append("limiter")
        for name in needed:
            getattr(self, name)

    def authenticator(self, policy: Policy) -> Callable[[RequestInfo], Identity] | None:
        """The check a route's auth makes (raising Denied), or None for `auth = "none"`."""
        if policy.auth == "jwt":
            jwt = self.jwt
            scopes = self.jwt_settings.required_scopes | policy.scopes

            def check_jwt(info: RequestInfo) -> Identity:
                identity = jwt.authenticate(info, scopes)
                if identity.key_id is not None and not self.apikeys.active(identity.key_id):
                    raise jwt_unauthorized("the API key this token was issued for is revoked")
                return identity
            return check_jwt
        if policy.auth == "apikey":
            apikeys = self.apikeys
            scopes = policy.scopes
            return lambda info: apikeys.authenticate(info, scopes)
        return None

    def close(self) -> None:
        """Release this process's connections (key store, limiter)."""
        if "apikeys" in self.__dict__:
            self.apikeys.store.close()
        if "limiter" in self.__dict__:
            self.limiter.close()
