"""One gateway route: a data type shared by the route table, the relay, the checks and the admin views."""

from __future__ import annotations

from dataclasses import dataclass, field

from microkit.config import Config
from microkit.gateway.balancer import Balancer
from microkit.gateway.policy import Policy, service_policy


@dataclass(frozen=True)
class Route:
    """Where a path prefix points (a service and its balancer) and how it is governed."""

    prefix: str
    service: str
    timeout: float
    balancer: Balancer
    policy: Policy = field(default_factory=Policy)
    max_body: int = 10 * 1024 * 1024
    strip_prefix: bool = False
    websocket_idle_timeout: float = 300.0
    websocket_max_tunnels: int = 1000


def routes_from_config(config: Config) -> list[Route]:
    """The routing table of a project, longest prefix first."""
    gateway = config.gateway
    routes = [Route(s.route, s.name, s.route_timeout or gateway.timeout, Balancer(s.balance or gateway.balance),
                    service_policy(config, s), s.max_body if s.max_body is not None else gateway.max_body,
                    s.strip_prefix, s.websocket_idle_timeout, s.websocket_max_tunnels)
              for s in config.services.values() if s.route is not None]
    return sorted(routes, key=lambda r: (-len(r.prefix), r.prefix))
