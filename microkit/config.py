"""microkit.toml into read-only objects.

Every setting is declared once below (name, parser, default, description). Parsing is strict: an
unknown key is an error with a did-you-mean, and every error names the file, the key path and the
bad value, e.g. ``microkit.toml: services.users.workers: expected an integer >= 1, got "two"``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import keyword
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import ConfigError
from .rates import Rate

CONFIG_NAME = "microkit.toml"
ENV_CONFIG = "MICROKIT_CONFIG"
ENV_REGISTRY_URL = "MICROKIT_REGISTRY_URL"
RESERVED_NAMES = frozenset({"gateway"})


class Invalid(ValueError):
    """A value failed its parser; the message says what was expected."""


def show(value: Any) -> str:
    """A value as the user wrote it in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


# Parsers: each takes the raw TOML value and returns the parsed one, or raises Invalid.

def integer(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise Invalid(f"expected an integer >= {minimum}, got {show(value)}")
        return value
    return parse


def seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise Invalid(f"expected a number of seconds > 0, got {show(value)}")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {show(value)}")
    return value


def non_empty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected a non-empty string, got {show(value)}")
    return value


def identifier(value: Any) -> str:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise Invalid(f"expected a Python identifier, got {show(value)}")
    return value


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def app_spec(value: Any) -> str:
    """`module:attr`, both dotted Python names: how a WSGI callable is named, loaded lazily."""
    if isinstance(value, str) and value.count(":") == 1:
        module, attr = value.split(":")
        if _DOTTED.match(module) and _DOTTED.match(attr):
            return value
    raise Invalid(f'expected "module:attr" (e.g. "services.users.app:app"), got {show(value)}')


def route(value: Any) -> str:
    """A URL path prefix: starts with "/", no trailing "/", no empty or dot segments, no query."""
    ok = isinstance(value, str) and value.startswith("/")
    if ok and value != "/":
        segments = value[1:].split("/")
        ok = all(s and s not in (".", "..") and re.fullmatch(r"[A-Za-z0-9_.~!$&'()*+,;=:@-]+", s)
                 for s in segments)
    if not ok:
        raise Invalid(f'expected a path prefix like "/users" (starts with "/", no trailing "/"), '
                      f"got {show(value)}")
    return value


def health_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or " " in value:
        raise Invalid(f'expected a path starting with "/", got {show(value)}')
    return value


@dataclass(frozen=True)
class Address:
    """A listen address; port 0 means "any free port", chosen when the socket is bound."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def address(value: Any) -> Address:
    """`HOST:PORT` or `[IPv6]:PORT`."""
    match = isinstance(value, str) and re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]+)):(\d{1,5})", value)
    if not match or int(match.group(3)) > 65535:
        raise Invalid(f'expected "HOST:PORT" (e.g. "127.0.0.1:8000"), got {show(value)}')
    return Address(match.group(1) or match.group(2), int(match.group(3)))


def registry_url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise Invalid(f'expected a URL like "redis://127.0.0.1:6379/0", got {show(value)}')
    from .storage import REDIS_SCHEMES
    scheme = value.split("://", 1)[0].lower()
    if scheme not in REDIS_SCHEMES:
        known = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        raise Invalid(f"unknown registry scheme {show(scheme + '://')} (known: {known}; "
                      f"leave url out for the embedded registry), got {show(value)}")
    if scheme == "redis+sentinel":
        from .storage.redis_urls import parse_sentinel
        try:
            parse_sentinel(value)
        except ValueError as exc:
            raise Invalid(f'{exc} (e.g. "redis+sentinel://h1:26379,h2:26379/mymaster/0")') from None
    return value



def events_url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise Invalid(f'expected a URL like "amqp://guest:guest@127.0.0.1:5672/" or "redis://127.0.0.1:6379/0", '
                      f"got {show(value)}")
    from .events.settings import SCHEMES
    schemes = [s for s in SCHEMES if s != "sqlite"]  # the embedded store's own URL: chosen by leaving url out
    scheme = value.split("://", 1)[0].lower()
    if scheme not in schemes:
        known = ", ".join(f"{s}://" for s in schemes)
        raise Invalid(f"unknown events scheme {show(scheme + '://')} (known: {known}; leave url out for the "
                      f"registry's Redis or the embedded store)")
    return value


def module_name(value: Any) -> str:
    if not isinstance(value, str) or not all(p.isidentifier() and not keyword.iskeyword(p) for p in value.split(".")):
        raise Invalid(f'expected a dotted module name such as "services.orders.handlers", got {show(value)}')
    return value


def size(value: Any) -> int:
    """A byte count: an integer, or a string with a unit ("10MB", "512KB", "1GB")."""
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3}
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = isinstance(value, str) and re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", value.upper())
    if not match:
        raise Invalid(f'expected a size like 10485760 or "10MB", got {show(value)}')
    return int(match.group(1)) * units[match.group(2)]


def networks(value: Any) -> tuple[str, ...]:
    """IP addresses or networks (CIDR), as strings; checked now so that a typo fails at load."""
    if not isinstance(value, list):
        raise Invalid(f'expected a list like ["127.0.0.1", "10.0.0.0/8"], got {show(value)}')
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            raise Invalid(f"expected IP addresses or networks, got {show(item)}") from None
    return tuple(value)


def otlp_url(value: Any) -> str:
    """An OTLP/HTTP endpoint, accepted only where the opentelemetry packages that export to it are installed."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise Invalid(f'expected a URL like "http://127.0.0.1:4318/v1/traces", got {show(value)}')
    from importlib.util import find_spec
    try:
        found = find_spec("opentelemetry.sdk") and find_spec("opentelemetry.exporter.otlp.proto.http")
    except ModuleNotFoundError:
        found = None
    if not found:
        raise Invalid("exporting spans needs the opentelemetry packages: "
                      "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(map(show, choices))}, got {show(value)}")
        return value
    return parse


def strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Invalid(f'expected a list of strings like ["a", "b"], got {show(value)}')
    return tuple(value)


def strings_or_star(value: Any) -> tuple[str, ...] | str:
    """A list of strings, or "*" for any."""
    return "*" if value == "*" else strings(value)


def algorithms(value: Any) -> tuple[str, ...]:
    from .gateway.jwt_algorithms import ALLOWED_ALGORITHMS
    found = strings(value)
    for name in found:
        if name not in ALLOWED_ALGORITHMS:
            raise Invalid(f"expected algorithms among {', '.join(map(show, ALLOWED_ALGORITHMS))}, got {show(name)}")
    return found


def audience(value: Any) -> tuple[str, ...]:
    return (non_empty(value),) if isinstance(value, str) else strings(value)


def rate_spec(value: Any) -> str:
    try:
        Rate.parse(value)
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc)) from None
    return value


def non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise Invalid(f"expected a number >= 0, got {show(value)}")
    return float(value)


def path_table(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise Invalid(f'expected a table of key ids to PEM files like {{ key1 = "keys/key1.pem" }}, got {show(value)}')
    return MappingProxyType(dict(value))


def balance_policy(value: Any) -> str:
    from .gateway.balancer import POLICIES
    if value not in POLICIES:
        raise Invalid(f"expected one of {', '.join(map(show, POLICIES))}, got {show(value)}")
    return value


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_table(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise Invalid(f'expected a table like {{ DATABASE_URL = "sqlite:///data/x.db" }}, got {show(value)}')
    for name, item in value.items():
        if not _ENV_NAME.match(name):
            raise Invalid(f"expected environment variable names, got {show(name)}")
        if not isinstance(item, str):
            raise Invalid(f"{name}: expected a string, got {show(item)}")
    return MappingProxyType(dict(value))


_IGNORE_RULE = re.compile(r"^\$(?:\.[^.\[\]]+|\[(?:\*|\d+)\])*$|^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def percentage(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise Invalid(f"expected a percentage from 0 to 100, got {show(value)}")
    return float(value)


def sticky_rule(value: Any) -> str:
    """What keeps one user on one side of a split: "client" (address), "cookie:NAME" or "header:NAME"."""
    if value == "client":
        return value
    if isinstance(value, str):
        kind, _, name = value.partition(":")
        valid = re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name)
        if kind in ("cookie", "header") and valid and not (kind == "header" and "_" in name):  # the engine drops those
            return value
    raise Invalid(f'expected "client", "cookie:NAME" or "header:NAME", got {show(value)}')


def failover_on(value: Any) -> tuple[str | int, ...]:
    """When a route's request goes to the legacy upstream instead: "connect" and/or statuses (500-599)."""
    if not isinstance(value, list):
        raise Invalid(f'expected a list like ["connect", 502, 503], got {show(value)}')
    for item in value:
        if item != "connect" and (isinstance(item, bool) or not isinstance(item, int) or not 500 <= item <= 599):
            raise Invalid(f'expected "connect" or statuses from 500 to 599, got {show(item)}')
    return tuple(value)


def ignore_rules(value: Any) -> tuple[str, ...]:
    """Fields a shadow comparison skips: JSON paths ("$.created_at", "$.items[*].id") or "header:NAME"."""
    rules = strings(value)
    for rule in rules:
        if not _IGNORE_RULE.match(rule):
            raise Invalid(f'expected JSON paths like "$.created_at" or "$.items[*].id", or "header:NAME", '
                          f"got {show(rule)}")
    return rules


def http_methods(value: Any) -> tuple[str, ...]:
    found = strings(value)
    for name in found:
        if not re.fullmatch(r"[A-Z]+", name):
            raise Invalid(f'expected HTTP methods in capitals like "GET", got {show(name)}')
    return found


# Declarations: each setting is a field of the read-only object it ends up in, carrying its parser, default
# and description (the README mirrors them); the tables the reader walks are derived from those fields.

REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str


@dataclass(frozen=True)
class Table:
    """A nested table of settings (`[gateway.auth]`), made into `make(**values)`; absent means all defaults,
    or None when `optional`."""

    settings: tuple[Setting, ...]
    make: type
    optional: bool = False


def setting(parse: Callable[[Any], Any], default: Any, doc: str) -> Any:
    """A dataclass field that is also a setting: `parse` checks the TOML value, `default` stands in when it
    is absent (REQUIRED: it must be given), `doc` says what it means."""
    metadata = {"setting": (parse, default, doc)}
    if default is REQUIRED:
        return field(metadata=metadata)
    if type(default).__hash__ is None:  # a read-only mapping: shared, but dataclasses want a factory
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(make: type, doc: str, optional: bool = False) -> Any:
    """A dataclass field holding a nested table of settings: all defaults when absent, or None if `optional`."""
    metadata = {"setting": (Table(settings_of(make), make, optional), None, doc)}
    return field(default=None, metadata=metadata) if optional else field(default_factory=make, metadata=metadata)


def settings_of(cls: type, given: tuple[str, ...] = ()) -> tuple[Setting, ...]:
    """The settings of a dataclass, in declaration order; every field but those the loader fills (`given`)
    must be declared with `setting` or `section`."""
    found = []
    for item in fields(cls):
        if "setting" in item.metadata:
            found.append(Setting(item.name, *item.metadata["setting"]))
        elif item.name not in given:
            raise TypeError(f"{cls.__name__}.{item.name} is not declared with setting() or section()")
    return tuple(found)


def folder_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise Invalid(f"expected a folder path, got {show(value)}")
    return value


AUTH_METHODS = ("none", "jwt", "apikey")
LIMIT_KEYS = ("key", "subject", "ip")


@dataclass(frozen=True)
class JWTConfig:
    algorithms: tuple[str, ...] = setting(
        algorithms, (), 'Accepted algorithms, pinned (never read from a token): "HS256", "RS256", "ES256". '
                        "Required when a route uses JWT.")
    secret_env: str = setting(non_empty, "MICROKIT_JWT_SECRET", "Environment variable holding the HS256 secret.")
    public_key: str | None = setting(non_empty, None, "PEM file of the public key for tokens without a kid.")
    public_keys: Mapping[str, str] = setting(path_table, MappingProxyType({}), "PEM files of public keys by kid.")
    jwks_file: str | None = setting(non_empty, None, "A JWKS file of public keys, looked up by kid.")
    issuer: str | None = setting(non_empty, None, "Required iss claim.")
    audience: tuple[str, ...] | None = setting(audience, None, "Accepted aud claim(s).")
    leeway: float = setting(non_negative, 30.0, "Seconds of clock skew allowed on exp and nbf.")
    required_scopes: tuple[str, ...] = setting(strings, (), "Scopes every JWT must carry.")
    cache_size: int = setting(integer(0), 4096, "Verified tokens remembered (until their exp) to skip re-verifying.")
    cache_ttl: float = setting(seconds, 60.0, "Longest a verified token is remembered.")


@dataclass(frozen=True)
class ApiKeysConfig:
    cache_ttl: float = setting(seconds, 1.0, "Seconds an API key check is remembered: how long a revoked key "
                                             "may still pass.")


@dataclass(frozen=True)
class TokenConfig:
    ttl: int = setting(integer(1), 300, "Lifetime in seconds of tokens from POST /auth/token.")
    rate_limit: str = setting(rate_spec, "20/min", "Requests to POST /auth/token per client IP, failed ones included.")
    rate_limit_burst: int = setting(integer(1), 10, "Of those, how many at once.")
    signing_key: str | None = setting(non_empty, None, "PEM private key to sign them (RS256/ES256); default HS256 "
                                                       "with the secret.")
    signing_kid: str | None = setting(non_empty, None, "kid header of the tokens signed with signing_key.")


@dataclass(frozen=True)
class AuthConfig:
    default: str = setting(one_of(*AUTH_METHODS), "none", 'Auth of routes that set none: "none", "jwt" or "apikey".')
    admin_scope: str = setting(non_empty, "microkit:admin", "API key scope that opens /__microkit/ admin endpoints.")
    jwt: JWTConfig = section(JWTConfig, "[gateway.auth.jwt]: how bearer tokens are verified.")
    apikeys: ApiKeysConfig = section(ApiKeysConfig, "[gateway.auth.apikeys]")
    token: TokenConfig = section(TokenConfig, "[gateway.auth.token]: POST /auth/token.")


@dataclass(frozen=True)
class RateLimitConfig:
    on_redis_down: str = setting(one_of("open", "closed"), "open", 'While Redis is unreachable: "open" admits '
                                                                   'requests, "closed" refuses them with 503.')
    retry_interval: float = setting(seconds, 1.0, "Seconds between attempts to reach Redis again.")
    by: str = setting(one_of(*LIMIT_KEYS), "ip", 'Default limit key: "key" (API key), "subject" (JWT) or "ip".')


@dataclass(frozen=True)
class CorsConfig:
    origins: tuple[str, ...] | str = setting(strings_or_star, REQUIRED,
                                             'Allowed origins ("https://app.example.com"), or "*".')
    methods: tuple[str, ...] = setting(strings, ("GET", "HEAD", "POST"), "Allowed methods.")
    headers: tuple[str, ...] | str = setting(strings_or_star, ("Content-Type",), 'Allowed request headers, or "*".')
    expose_headers: tuple[str, ...] = setting(strings, (), "Response headers a browser may read.")
    credentials: bool = setting(boolean, False, 'Allow cookies and Authorization (never with origins = "*").')
    max_age: int = setting(integer(0), 600, "Seconds a browser may cache a preflight.")


@dataclass(frozen=True)
class ShadowConfig:
    percent: float = setting(percentage, 100.0, "Share of the route's matching requests copied to the other side.")
    methods: tuple[str, ...] = setting(http_methods, ("GET", "HEAD"), "Methods that are copied (only idempotent "
                                                                      "ones are safe).")
    max_body: int = setting(size, 64 * 1024, "Request bodies up to this are mirrored (larger: not copied); "
                                             "response bodies up to this are compared field by field.")
    timeout: float = setting(seconds, 5.0, "How long the copy may take; later, it is abandoned and counted.")
    queue: int = setting(integer(1), 100, "Copies in flight per gateway worker; above it, dropped and counted.")
    headers: tuple[str, ...] = setting(strings, ("content-type",), "Response headers compared (besides status "
                                                                   "and body).")
    ignore: tuple[str, ...] = setting(ignore_rules, (), 'What the comparison skips: JSON paths ("$.created_at", '
                                                        '"$.items[*].id") and "header:NAME".')
    keep: int = setting(integer(1), 50, "Last mismatches kept per route in the registry's store.")
    noise: bool = setting(boolean, False, "Also call the primary twice for safe methods and ignore fields that "
                                          "differ between its own two answers (Diffy's trick).")


# The objects the rest of microkit reads.

@dataclass(frozen=True)
class ProjectConfig:
    name: str = setting(identifier, REQUIRED, "The project's name.")
    root: str | None = setting(folder_path, None, "Folder that app imports and data/ are relative to, from this "
                                                  "file's folder; default: the folder of microkit.toml.")


@dataclass(frozen=True)
class RegistryConfig:
    url: str | None = setting(registry_url, None, "Where instances register: redis://, rediss:// or "
                                                  "redis+sentinel://. Absent: the embedded registry (no server, "
                                                  "one host). MICROKIT_REGISTRY_URL overrides it.")
    connect_timeout: float = setting(seconds, 10.0, "Seconds up, run and gateway wait at start for the registry "
                                                    "to answer before they exit 1.")

    @property
    def embedded(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class EventsConfig:
    url: str | None = setting(events_url, None, "Where events go: amqp:// (RabbitMQ) or redis:// (Redis Streams). "
                                                "Absent: the registry's Redis when it has one, else the embedded "
                                                "store (SQLite, one host).")
    publish_timeout: float = setting(seconds, 5.0, "How long publish waits for a store that is down before it "
                                                   "raises.")
    prefetch: int = setting(integer(1), 10, "Unacked events a consumer holds at once, per handler.")
    claim_after: float = setting(seconds, 30.0, "Redis and embedded: seconds after which a dead consumer's unacked "
                                                "events are claimed by another.")


@dataclass(frozen=True)
class GatewayConfig:
    listen: Address = setting(address, Address("127.0.0.1", 8000), "Address the gateway listens on.")
    workers: int = setting(integer(1), 1, "Gateway worker processes.")
    timeout: float = setting(seconds, 30.0, "Default time a route may take to answer before the gateway gives 504.")
    max_body: int = setting(size, 10 * 1024 ** 2, 'Largest request body the gateway accepts (413 above it), '
                                                  'e.g. "10MB".')
    balance: str = setting(balance_policy, "round_robin", 'Default balancing: "round_robin" or "least_outstanding".')
    trusted_proxies: tuple[str, ...] = setting(networks, (), "Peers whose X-Forwarded-* headers are kept and "
                                                             "extended.")
    access_log: bool = setting(boolean, True, "One log line per proxied request.")
    body_timeout: float = setting(seconds, 10.0, "Longest wait for the next bytes of a request body (408 after it).")
    body_buffer: int = setting(size, 64 * 1024, "A request body is read whole before it goes upstream: up to this "
                                                "size in memory, beyond it in a temporary file in body_temp_dir.")
    body_temp_dir: str | None = setting(folder_path, None, "Folder (next to microkit.toml, or absolute) for the "
                                                           "temporary files of large request bodies, unlinked as "
                                                           "they are made; default the system's temp folder.")
    lingering_time: float = setting(seconds, 30.0, "After an early answer (413, 408 ...), how long in all unread "
                                                   "request bytes are read and dropped before the socket closes.")
    lingering_timeout: float = setting(seconds, 5.0, "Longest wait between two reads while lingering.")
    metrics_allow: tuple[str, ...] = setting(networks, (), "Addresses or networks that may read "
                                                           "/__microkit/metrics without an admin API key "
                                                           "(a Prometheus scraper).")
    otlp_endpoint: str | None = setting(otlp_url, None, "OTLP/HTTP traces endpoint (http://HOST:4318/v1/traces) "
                                                        "the gateway exports a span per request to; needs the "
                                                        "opentelemetry packages.")
    auth: AuthConfig = section(AuthConfig, "[gateway.auth]: authentication.")
    ratelimit: RateLimitConfig = section(RateLimitConfig, "[gateway.ratelimit]: shared rate limits.")
    tls_cert: str | None = setting(non_empty, None, "PEM certificate chain: with tls_key, the gateway serves HTTPS "
                                                    "(TLS 1.2+) at listen. Re-read by `microkit reload gateway`.")
    tls_key: str | None = setting(non_empty, None, "PEM private key (unencrypted) of tls_cert.")
    http_redirect: Address | None = setting(address, None, "A plain-HTTP listener that answers every request with "
                                                           '308 to HTTPS at listen, e.g. "0.0.0.0:80"; needs '
                                                           "tls_cert.")
    legacy: str | None = setting(non_empty, None, 'Where requests no route matches go: "http://HOST:PORT", or the '
                                                  "name of a service without a route (the old app as a command "
                                                  "service).")


@dataclass(frozen=True)
class ServiceConfig:
    name: str  # the key of its [services.NAME] table, filled in by the loader
    app: str | None = setting(app_spec, None, 'The WSGI callable, "module:attr". One of app, command or events '
                                              "is required.")
    command: str | None = setting(non_empty, None, "Run a program instead (e.g. an asyncio server); it gets PORT "
                                                   "in its environment.")
    route: str | None = setting(route, None, 'Path prefix the gateway routes to this service, e.g. "/users".')
    route_timeout: float | None = setting(seconds, None, "Time this route may take at the gateway; default "
                                                         "gateway.timeout.")
    balance: str | None = setting(balance_policy, None, "Balancing for this route; default gateway.balance.")
    max_body: int | None = setting(size, None, "Largest request body on this route (413 above it); default "
                                               "gateway.max_body.")
    websocket_idle_timeout: float = setting(seconds, 300.0, "A WebSocket tunnel with no byte either way this "
                                                            "long is closed.")
    websocket_max_tunnels: int = setting(integer(1), 1000, "Open WebSocket tunnels this route allows per gateway "
                                                           "worker (503 above).")
    strip_prefix: bool = setting(boolean, False, "Forward the path below the route (as a mount point) with "
                                                 "X-Forwarded-Prefix, which a microkit worker makes SCRIPT_NAME.")
    request_buffering: bool = setting(boolean, True, "Read a request's whole body (up to max_body) before an "
                                                     "instance is picked, and send it with Content-Length; false "
                                                     "streams bodies larger than gateway.body_buffer as they "
                                                     "arrive.")
    auth: str | None = setting(one_of(*AUTH_METHODS), None, 'Auth for this route: "none", "jwt" or "apikey"; '
                                                            "default gateway.auth.default.")
    scopes: tuple[str, ...] = setting(strings, (), "Scopes a caller needs for this route (403 without them).")
    rate_limit: str | None = setting(rate_spec, None, 'Requests allowed per caller, e.g. "100/min" (429 above it).')
    rate_limit_by: str | None = setting(one_of(*LIMIT_KEYS), None, "Who a limit counts: default "
                                                                   "gateway.ratelimit.by.")
    rate_limit_burst: int | None = setting(integer(1), None, "Requests allowed at once; default the limit's count.")
    cors: CorsConfig | None = section(CorsConfig, "CORS for this route (an inline table).", optional=True)
    workers: int = setting(integer(1), 1, "Worker processes.")
    listen: Address = setting(address, Address("127.0.0.1", 0), "Address the workers share; port 0 picks a free "
                                                                "port.")
    advertise: str | None = setting(non_empty, None, "Host other machines reach this service at, as registered; "
                                                     "default: the listen host (this machine's address for 0.0.0.0 "
                                                     "or ::).")
    env: Mapping[str, str] = setting(env_table, MappingProxyType({}), "Extra environment variables for the "
                                                                      "workers.")
    timeout: float = setting(seconds, 30.0, "A worker whose event loop is blocked this long is killed and replaced.")
    graceful_timeout: float = setting(seconds, 10.0, "How long in-flight requests may run on stop or reload.")
    health: str = setting(health_path, "/healthz", "Path answered with 200 by a healthy instance.")
    access_log: bool = setting(boolean, True, "One log line per request.")
    events: str | None = setting(module_name, None, 'Module whose @events.handler functions run in consumer '
                                                    'processes, e.g. "services.orders.handlers".')
    consumers: int = setting(integer(1), 1, "Consumer processes running the events handlers.")
    split: float | None = setting(percentage, None, "Percent of this route's requests the service gets; the rest "
                                                    "go to gateway.legacy. `microkit route NAME --split N` changes "
                                                    "it live.")
    sticky: str | None = setting(sticky_rule, None, 'Keeps a user on one side of the split: "client", '
                                                    '"cookie:NAME" or "header:NAME".')
    failover: tuple[str | int, ...] = setting(failover_on, (), "Send idempotent bodyless requests to "
                                                               'gateway.legacy when the service fails: "connect" '
                                                               'and/or statuses, e.g. ["connect", 503].')
    shadow: ShadowConfig | None = section(ShadowConfig, "Copy requests to the other side and compare the answers "
                                                        "(an inline table; see README).", optional=True)

    @property
    def app_route(self) -> str:
        """The route as the app sees it (MICROKIT_ROUTE): "" below a stripped prefix, whose routes are relative."""
        return "" if self.strip_prefix or not self.route else self.route


PROJECT = settings_of(ProjectConfig)
REGISTRY = settings_of(RegistryConfig)
EVENTS = settings_of(EventsConfig)
GATEWAY = settings_of(GatewayConfig)
SERVICE = settings_of(ServiceConfig, given=("name",))
SECTIONS = {"project": PROJECT, "registry": REGISTRY, "events": EVENTS, "gateway": GATEWAY, "services": None}


@dataclass(frozen=True)
class Config:
    path: Path
    project: ProjectConfig
    registry: RegistryConfig
    gateway: GatewayConfig
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: MappingProxyType({}))
    events: EventsConfig = EventsConfig()

    @property
    def root(self) -> Path:
        """The project folder: what `module:attr` imports, services/ and data/ are relative to."""
        if self.project.root is None:
            return self.path.parent
        return (self.path.parent / self.project.root).resolve()


class _Reader:
    """Reads one file's TOML document; its errors carry the file's name and the key path."""

    def __init__(self, path: Path):
        self.label = display_path(path)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {key}: {message}" if key else f"{self.label}: {message}")

    def table(self, data: Any, key: str) -> dict:
        if not isinstance(data, dict):
            raise self.error(key, f"expected a table ([{key}]), got {show(data)}")
        return data

    def settings(self, data: dict, key: str, settings: tuple[Setting, ...]) -> dict[str, Any]:
        known = {s.name: s for s in settings}
        self.reject_unknown(data, key, known)
        values = {}
        for setting in settings:
            path = f"{key}.{setting.name}"
            if isinstance(setting.parse, Table):
                table = setting.parse
                if setting.name not in data and table.optional:
                    values[setting.name] = None
                    continue
                found = self.table(data.get(setting.name, {}), path)
                values[setting.name] = table.make(**self.settings(found, path, table.settings))
                continue
            if setting.name in data:
                try:
                    values[setting.name] = setting.parse(data[setting.name])
                except Invalid as exc:
                    raise self.error(path, str(exc)) from None
            elif setting.default is REQUIRED:
                raise self.error(path, "is required")
            else:
                values[setting.name] = setting.default
        return values

    def reject_unknown(self, data: dict, key: str, known: Mapping[str, Any]) -> None:
        for name in data:
            if name not in known:
                near = difflib.get_close_matches(name, list(known), n=1)
                hint = f'; did you mean "{near[0]}"?' if near else f" (known: {', '.join(known)})"
                where = f"{key}.{name}" if key else name
                raise self.error(where, f"unknown key{hint}")


def display_path(path: Path) -> str:
    """The path as the user is likely to have typed it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse(text: str, path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate a microkit.toml document; `path` names it in errors and anchors the project root."""
    environ = os.environ if environ is None else environ
    reader = _Reader(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", message)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        position = f"line {where.group(1)}, column {where.group(2)}: " if where else ""
        raise ConfigError(f"{reader.label}: {position}invalid TOML: {message}") from None

    reader.reject_unknown(doc, "", SECTIONS)
    project = reader.settings(reader.table(doc.get("project"), "project") if "project" in doc
                              else {}, "project", PROJECT)
    registry = reader.settings(reader.table(doc.get("registry", {}), "registry"), "registry", REGISTRY)
    override = environ.get(ENV_REGISTRY_URL)
    if override:
        try:
            registry["url"] = registry_url(override)
        except Invalid as exc:
            raise ConfigError(f"{ENV_REGISTRY_URL}: {exc}") from None
    gateway = reader.settings(reader.table(doc.get("gateway", {}), "gateway"), "gateway", GATEWAY)
    events = reader.settings(reader.table(doc.get("events", {}), "events"), "events", EVENTS)

    services: dict[str, ServiceConfig] = {}
    owners: dict[str, str] = {}
    for name, table in reader.table(doc.get("services", {}), "services").items():
        key = f"services.{name}"
        try:
            identifier(name)
        except Invalid:
            raise reader.error(key, "service names must be Python identifiers (letters, digits, _)") from None
        if name in RESERVED_NAMES:
            raise reader.error(key, f"{show(name)} is reserved for microkit's own process; choose another name")
        values = reader.settings(reader.table(table, key), key, SERVICE)
        if values["app"] is not None and values["command"] is not None:
            raise reader.error(key, 'needs one of app = "module:attr" or command = "...", not both')
        if values["app"] is None and values["command"] is None and values["events"] is None:
            raise reader.error(key, 'needs app = "module:attr", command = "..." or events = "module"')
        prefix = values["route"]
        if prefix is not None:
            if prefix in owners:
                raise reader.error(f"{key}.route", f"{show(prefix)} is already the route of services.{owners[prefix]}")
            owners[prefix] = name
        services[name] = ServiceConfig(name=name, **values)

    _check_security(reader, path.resolve().parent, gateway, services)
    _check_tls(reader, path.resolve().parent, gateway)
    folder = gateway["body_temp_dir"]
    if folder is not None and not (path.resolve().parent / folder).is_dir():
        raise reader.error("gateway.body_temp_dir", f"{show(folder)} is not a folder next to {reader.label}")
    _check_migration(reader, gateway, services)
    if project["root"] is not None and not (path.resolve().parent / project["root"]).is_dir():
        raise reader.error("project.root", f"{show(project['root'])} is not a folder next to {reader.label}")
    return Config(
        path=path.resolve(),
        project=ProjectConfig(**project),
        registry=RegistryConfig(**registry),
        gateway=GatewayConfig(**gateway),
        services=MappingProxyType(services),
        events=EventsConfig(**events),
    )


def _check_security(reader: _Reader, folder: Path, gateway: dict, services: dict[str, ServiceConfig]) -> None:
    """What one setting cannot see alone: JWT routes need keys, key files must exist, CORS "*" has no credentials."""
    auth: AuthConfig = gateway["auth"]
    jwt = auth.jwt
    files = [("gateway.auth.jwt.public_key", jwt.public_key), ("gateway.auth.jwt.jwks_file", jwt.jwks_file),
             ("gateway.auth.token.signing_key", auth.token.signing_key)]
    files += [(f"gateway.auth.jwt.public_keys.{kid}", file) for kid, file in jwt.public_keys.items()]
    for key, file in files:
        if file is not None and not (folder / file).is_file():
            raise reader.error(key, f"{show(file)}: no such file next to {reader.label}")
    for name, service in services.items():
        if (service.auth or auth.default) == "jwt" and service.route is not None:
            if not jwt.algorithms:
                raise reader.error("gateway.auth.jwt.algorithms", f"is required: services.{name} uses JWT auth")
            if set(jwt.algorithms) - {"HS256"} and not (jwt.public_key or jwt.public_keys or jwt.jwks_file):
                raise reader.error("gateway.auth.jwt", "RS256/ES256 need public_key, public_keys or jwks_file")
        if service.scopes and (service.auth or auth.default) == "none":
            raise reader.error(f"services.{name}.scopes", 'need auth = "jwt" or "apikey" (with auth "none" '
                                                          "nobody has scopes and the route would be open)")
        if service.cors is not None and service.cors.credentials and service.cors.origins == "*":
            raise reader.error(f"services.{name}.cors", 'credentials = true needs a list of origins, not "*"')


def _check_tls(reader: _Reader, folder: Path, gateway: dict) -> None:
    """tls_cert and tls_key go together, load as a certificate and its key, and http_redirect needs them."""
    cert, key = gateway["tls_cert"], gateway["tls_key"]
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise reader.error(f"gateway.{missing}", f"is required with gateway.{given}")
    if cert is None:
        if gateway["http_redirect"] is not None:
            raise reader.error("gateway.http_redirect", "needs gateway.tls_cert and gateway.tls_key "
                                                        "(it redirects to HTTPS)")
        return
    from .tls import TLSFileError, server_context
    try:
        server_context(folder / cert, folder / key)
    except TLSFileError as exc:
        given = cert if exc.which == "cert" else key
        where = f" next to {reader.label}" if exc.reason == "no such file" else ""
        raise reader.error(f"gateway.tls_{exc.which}", f"{show(given)}: {exc.reason}{where}") from None


def legacy_url(value: str) -> tuple[str, int] | None:
    """(host, port) of a `gateway.legacy` URL; None when it names a service instead."""
    if "://" not in value:
        return None
    match = re.fullmatch(r"http://(?:\[([0-9A-Fa-f:.]+)\]|([^\s:/\[\]]+)):(\d{1,5})/?", value)
    if not match or not 0 < int(match.group(3)) <= 65535:
        raise Invalid(f'expected "http://HOST:PORT" or the name of a service, got {show(value)}')
    return match.group(1) or match.group(2), int(match.group(3))


def _check_migration(reader: _Reader, gateway: dict, services: dict[str, ServiceConfig]) -> None:
    """gateway.legacy is a URL or a route-less service; split, failover and shadow need it."""
    legacy = gateway["legacy"]
    if legacy is not None:
        try:
            url = legacy_url(legacy)
        except Invalid as exc:
            raise reader.error("gateway.legacy", str(exc)) from None
        if url is None:
            if legacy not in services:
                raise reader.error("gateway.legacy", f"{show(legacy)} is neither \"http://HOST:PORT\" nor a "
                                                     f"service (known: {', '.join(services) or 'none'})")
            if services[legacy].route is not None:
                raise reader.error(f"services.{legacy}.route", "the legacy service gets every unmatched path; "
                                                               "remove its route")
        if any(s.route == "/" for s in services.values()):
            raise reader.error("gateway.legacy", 'a route "/" leaves no unmatched path for the legacy upstream')
    for name, service in services.items():
        for key in ("split", "sticky", "failover", "shadow"):
            if getattr(service, key) not in (None, ()):
                if legacy is None:
                    raise reader.error(f"services.{name}.{key}", "needs gateway.legacy (the other side)")
                if service.route is None:
                    raise reader.error(f"services.{name}.{key}", "needs a route")


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate one microkit.toml."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{display_path(path)}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{display_path(path)}: cannot read: {exc.strerror}") from None
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{display_path(path)}: not UTF-8 text (byte {exc.start})") from None
    return parse(content, path, environ)


def find(explicit: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
         cwd: Path | None = None) -> Path:
    """Which microkit.toml to use: `-c FILE`, else $MICROKIT_CONFIG, else the nearest in this folder or a parent."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {CONFIG_NAME} in {start} or any parent folder "
                      f"(run `microkit new project NAME`, or pass -c FILE)")


def discover(explicit: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
             cwd: Path | None = None) -> Config:
    """Find and load the project's config, by the discovery rules of `find`."""
    return load(find(explicit, environ, cwd), environ)
