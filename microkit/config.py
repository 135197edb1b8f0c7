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
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import ConfigError

CONFIG_NAME = "microkit.toml"
ENV_CONFIG = "MICROKIT_CONFIG"
ENV_REGISTRY_URL = "MICROKIT_REGISTRY_URL"
REGISTRY_SCHEMES = ("redis", "rediss")
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


def text(value: Any) -> str:
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
    scheme = value.split("://", 1)[0].lower()
    if scheme not in REGISTRY_SCHEMES:
        known = ", ".join(f"{s}://" for s in REGISTRY_SCHEMES)
        raise Invalid(f"unknown registry scheme {show(scheme + '://')} (known: {known}; "
                      f"leave url out for the embedded registry), got {show(value)}")
    return value


def size(value: Any) -> int:
    """A byte count: an integer, or a string with a unit ("10MB", "512KB", "1GB")."""
    units = {"": 1, "B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
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


BALANCE_POLICIES = ("round_robin", "least_outstanding")


def balance(value: Any) -> str:
    if value not in BALANCE_POLICIES:
        raise Invalid(f"expected one of {', '.join(map(show, BALANCE_POLICIES))}, got {show(value)}")
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


# Declarations: one place for every setting, its default and what it means (the README mirrors it).

REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str


def folder(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise Invalid(f"expected a folder path, got {show(value)}")
    return value


PROJECT = (
    Setting("name", identifier, REQUIRED, "The project's name."),
    Setting("root", folder, None, "Folder that app imports and data/ are relative to, from this file's folder; "
                                  "default: the folder of microkit.toml."),
)
REGISTRY = (
    Setting("url", registry_url, None,
            "Where instances register: redis:// or rediss://. Absent: the embedded registry "
            "(no server, one host). MICROKIT_REGISTRY_URL overrides it."),
)
GATEWAY = (
    Setting("listen", address, Address("127.0.0.1", 8000), "Address the gateway listens on."),
    Setting("workers", integer(1), 1, "Gateway worker processes."),
    Setting("timeout", seconds, 30.0, "Default time a route may take to answer before the gateway gives 504."),
    Setting("max_body", size, 10 * 1024 ** 2, 'Largest request body the gateway accepts (413 above it), e.g. "10MB".'),
    Setting("balance", balance, "round_robin", 'Default balancing: "round_robin" or "least_outstanding".'),
    Setting("trusted_proxies", networks, (), "Peers whose X-Forwarded-* headers are kept and extended."),
    Setting("access_log", boolean, True, "One log line per proxied request."),
)
SERVICE = (
    Setting("app", app_spec, None, 'The WSGI callable, "module:attr". One of app or command is required.'),
    Setting("command", text, None, "Run a program instead (e.g. an asyncio server); it gets PORT in its environment."),
    Setting("route", route, None, 'Path prefix the gateway routes to this service, e.g. "/users".'),
    Setting("route_timeout", seconds, None, "Time this route may take at the gateway; default gateway.timeout."),
    Setting("balance", balance, None, "Balancing for this route; default gateway.balance."),
    Setting("workers", integer(1), 1, "Worker processes."),
    Setting("listen", address, Address("127.0.0.1", 0), "Address the workers share; port 0 picks a free port."),
    Setting("env", env_table, MappingProxyType({}), "Extra environment variables for the workers."),
    Setting("timeout", seconds, 30.0, "A worker whose event loop is blocked this long is killed and replaced."),
    Setting("graceful_timeout", seconds, 10.0, "How long in-flight requests may run on stop or reload."),
    Setting("health", health_path, "/healthz", "Path answered with 200 by a healthy instance."),
    Setting("access_log", boolean, True, "One log line per request."),
)
SECTIONS = {"project": PROJECT, "registry": REGISTRY, "gateway": GATEWAY, "services": None}


# The objects the rest of microkit reads.

@dataclass(frozen=True)
class ProjectConfig:
    name: str
    root: str | None


@dataclass(frozen=True)
class RegistryConfig:
    url: str | None

    @property
    def embedded(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class GatewayConfig:
    listen: Address
    workers: int
    timeout: float
    max_body: int
    balance: str
    trusted_proxies: tuple[str, ...]
    access_log: bool


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    app: str | None
    command: str | None
    route: str | None
    route_timeout: float | None
    balance: str | None
    workers: int
    listen: Address
    env: Mapping[str, str]
    timeout: float
    graceful_timeout: float
    health: str
    access_log: bool


@dataclass(frozen=True)
class Config:
    path: Path
    project: ProjectConfig
    registry: RegistryConfig
    gateway: GatewayConfig
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: MappingProxyType({}))

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


def parse(text_: str, path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate a microkit.toml document; `path` names it in errors and anchors the project root."""
    environ = os.environ if environ is None else environ
    reader = _Reader(path)
    try:
        doc = tomllib.loads(text_)
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
        if (values["app"] is None) == (values["command"] is None):
            raise reader.error(key, 'needs exactly one of app = "module:attr" or command = "..."')
        prefix = values["route"]
        if prefix is not None:
            if prefix in owners:
                raise reader.error(f"{key}.route", f"{show(prefix)} is already the route of services.{owners[prefix]}")
            owners[prefix] = name
        services[name] = ServiceConfig(name=name, **values)

    if project["root"] is not None and not (path.resolve().parent / project["root"]).is_dir():
        raise reader.error("project.root", f"{show(project['root'])} is not a folder next to {reader.label}")
    return Config(
        path=path.resolve(),
        project=ProjectConfig(**project),
        registry=RegistryConfig(**registry),
        gateway=GatewayConfig(**gateway),
        services=MappingProxyType(services),
    )


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
