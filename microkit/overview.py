"""What `microkit status` and `microkit routes` show: the registry's instances and the routing table."""

from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from . import registry
from .config import Config
from .errors import MicrokitError
from .supervisor.command import health_status

PROBE_TIMEOUT = 1.0


class RegistryError(MicrokitError):
    """The registry could not be read."""


def _probe(host: str, port: int, path: str) -> str:
    try:
        status = health_status(host, port, path, PROBE_TIMEOUT)
    except (OSError, http.client.HTTPException) as exc:
        return f"unreachable ({type(exc).__name__})"
    return "healthy" if status == 200 else f"unhealthy ({status})"


def instances(conf: Config) -> dict[str, list[dict]]:
    """Every service's live instances from the registry, each probed once per address for health."""
    store = registry.connect(conf.registry.url, project_root=conf.root, namespace=conf.project.name)
    try:
        snapshot = store.services()
    except registry.RegistryUnavailable as exc:
        raise RegistryError(f"cannot read the registry: {exc}") from None
    finally:
        store.close()
    health_paths = {name: s.health for name, s in conf.services.items()}
    addresses = {(i.host, i.port, health_paths.get(service, "/healthz"))
                 for service, found in snapshot.items() for i in found}
    with ThreadPoolExecutor(max_workers=8) as pool:
        health = dict(zip(addresses, pool.map(lambda a: _probe(*a), addresses)))
    now = time.time()
    return {service: [{"host": i.host, "port": i.port, "pid": i.pid, "hostname": i.hostname,
                       "instance_id": i.instance_id, "worker": i.meta.get("worker"),
                       "health": health[(i.host, i.port, health_paths.get(service, "/healthz"))],
                       "age": round(now - i.started_at, 1), "last_seen": round(now - i.last_seen, 1)}
                      for i in found]
            for service, found in sorted(snapshot.items())}


def routes(conf: Config, live: dict[str, list[dict]] | None) -> list[dict]:
    """The gateway's routing table, longest prefix first, with live instance counts when known."""
    gateway = conf.gateway
    rows = [{"prefix": s.route, "service": s.name, "timeout": s.route_timeout or gateway.timeout,
             "balance": s.balance or gateway.balance,
             "instances": None if live is None else len(live.get(s.name, []))}
            | ({"split": s.split, "shadow": s.shadow is not None, "failover": list(s.failover)} if gateway.legacy else {})
            for s in conf.services.values() if s.route is not None]
    return sorted(rows, key=lambda r: (-len(r["prefix"]), r["prefix"]))


def table(rows: Iterable[Iterable[str]]) -> str:
    """Rows as left-aligned columns."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
