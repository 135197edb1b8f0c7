"""What every export target needs to know about a project, worked out once from its Config.

The targets only lay these facts out in their own format: which processes run (each service with its
worker count, and the gateway), the command that starts each, its health path and port in a container,
how long a graceful stop may take, and where the registry is.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import Config
from ..errors import UsageError
from ..storage.redis_urls import SENTINEL_SCHEME, parse_sentinel

CONTAINER_PORT = 8000          # a service's port in its own container, unless its listen names one
GATEWAY_HEALTH = "/__microkit/health"
STOP_MARGIN = 5                # seconds beyond graceful_timeout before a process manager kills


@dataclass(frozen=True)
class Process:
    """One long-running microkit process of the project: a service's `microkit run`, or the gateway."""

    name: str                  # the service's name, or "gateway"
    args: tuple[str, ...]      # microkit's arguments, e.g. ("run", "users")
    workers: int
    health: str
    port: int                  # where it listens inside a container
    stop_timeout: int          # seconds a graceful stop may take, margin included
    is_gateway: bool = False

    def container_args(self) -> tuple[str, ...]:
        return ("microkit", *self.args, "--listen", f"0.0.0.0:{self.port}")


@dataclass(frozen=True)
class Registry:
    """Where instances register. kind: "embedded" (no URL), "local" (a Redis on this host) or "external"."""

    kind: str
    url: str | None
    database: str              # the Redis database number of the URL ("0" when none)


@dataclass(frozen=True)
class Plan:
    project: str
    config_name: str           # the config file's name, e.g. "microkit.toml"
    processes: tuple[Process, ...]
    registry: Registry
    gateway_port: int
    gateway_host: str

    @property
    def services(self) -> tuple[Process, ...]:
        return tuple(p for p in self.processes if not p.is_gateway)


def registry_of(url: str | None) -> Registry:
    if url is None:
        return Registry("embedded", None, "0")
    if url.split("://", 1)[0].lower() == SENTINEL_SCHEME:  # its primary moves between hosts: never "local"
        return Registry("external", url, str(parse_sentinel(url).db))
    parts = urlsplit(url)
    database = parts.path.strip("/") or "0"
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return Registry("local" if local else "external", url, database)


def make(config: Config) -> Plan:
    """The plan for a project; a UsageError when it has nothing to deploy."""
    if not config.services:
        raise UsageError(f"{config.path.name} has no services to export (add one with `microkit new service NAME`)")
    processes = []
    for name in sorted(config.services):
        service = config.services[name]
        processes.append(Process(
            name=name, args=("run", name), workers=service.workers, health=service.health,
            port=service.listen.port or CONTAINER_PORT,
            stop_timeout=math.ceil(service.graceful_timeout) + STOP_MARGIN))
    gateway = config.gateway
    graceful = max((s.graceful_timeout for s in config.services.values()), default=10.0)
    processes.append(Process(name="gateway", args=("gateway",), workers=gateway.workers, health=GATEWAY_HEALTH,
                             port=gateway.listen.port or CONTAINER_PORT,
                             stop_timeout=math.ceil(graceful) + STOP_MARGIN, is_gateway=True))
    return Plan(project=config.project.name, config_name=config.path.name, processes=tuple(processes),
                registry=registry_of(config.registry.url), gateway_port=gateway.listen.port or CONTAINER_PORT,
                gateway_host=gateway.listen.host)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def dns_names(plan: Plan, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """A DNS-1123 label per process (and per extra name), `PROJECT-NAME` in lower case with "-" for "_";
    a UsageError when two collide or one is too long (63 characters at most)."""
    names: dict[str, str] = {}
    for name in [p.name for p in plan.processes] + list(extra):
        label = f"{plan.project}-{name}".lower().replace("_", "-")
        if len(label) > 63 or not _DNS_LABEL.match(label):
            raise UsageError(f"services.{name}: {label!r} is not a valid Kubernetes name (at most 63 letters, "
                             f"digits and '-'); shorten project.name or the service's name")
        clash = next((other for other, used in names.items() if used == label), None)
        if clash is not None:
            raise UsageError(f"services.{name} and services.{clash} would both be named {label!r}; rename one")
        names[name] = label
    return names
