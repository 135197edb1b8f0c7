"""Where events go, resolved once: `[events] url`, else the registry's Redis, else the embedded store (an
SQLite file in the project's `.microkit/`, one host, no server).

`microkit up` hands every service process these settings in its environment (`environ(config, service)`),
so `events.publish` works the same in workers, command services and consumers; a script outside `up`
reads them from microkit.toml (the nearest one, or MICROKIT_CONFIG).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from microkit import storage
from microkit.errors import ConfigError

ENV_URL = "MICROKIT_EVENTS_URL"
ENV_NAMESPACE = "MICROKIT_EVENTS_NAMESPACE"
ENV_SERVICE = "MICROKIT_SERVICE"
ENV_PUBLISH_TIMEOUT = "MICROKIT_EVENTS_PUBLISH_TIMEOUT"
ENV_PREFETCH = "MICROKIT_EVENTS_PREFETCH"
ENV_CLAIM_AFTER = "MICROKIT_EVENTS_CLAIM_AFTER"
ENV_ONCE_URL = "MICROKIT_EVENTS_ONCE_URL"
SCHEMES = ("amqp", "amqps", "redis", "rediss", "redis+sentinel", "sqlite")


@dataclass(frozen=True)
class Settings:
    url: str
    namespace: str
    source: str = ""
    publish_timeout: float = 5.0
    prefetch: int = 10
    claim_after: float = 30.0
    once_url: str = ""

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()


def embedded_url(project_root: Path) -> str:
    return f"sqlite:///{(Path(project_root) / '.microkit' / 'events.db').resolve()}"


def resolve(config, service: str = "") -> Settings:
    """The settings for a project's config (a `microkit.config.Config`)."""
    events = config.events
    url = events.url or config.registry.url or embedded_url(config.root)
    redis_url = url if storage.scheme(url) in storage.REDIS_SCHEMES else config.registry.url
    return Settings(url=url, namespace=config.project.name, source=service,
                    publish_timeout=events.publish_timeout, prefetch=events.prefetch,
                    claim_after=events.claim_after, once_url=redis_url or embedded_url(config.root))


def environ(config, service: str) -> dict[str, str]:
    """The environment variables that carry a service's settings into its processes."""
    found = resolve(config, service)
    return {ENV_URL: found.url, ENV_NAMESPACE: found.namespace, ENV_SERVICE: service,
            ENV_PUBLISH_TIMEOUT: repr(found.publish_timeout), ENV_PREFETCH: str(found.prefetch),
            ENV_CLAIM_AFTER: repr(found.claim_after), ENV_ONCE_URL: found.once_url}


def from_environ(env: Mapping[str, str] | None = None) -> Settings:
    """This process's settings: from the environment `up` set, else from microkit.toml."""
    env = os.environ if env is None else env
    if env.get(ENV_URL):
        try:
            return Settings(url=env[ENV_URL], namespace=env.get(ENV_NAMESPACE) or "microkit",
                            source=env.get(ENV_SERVICE, ""),
                            publish_timeout=float(env.get(ENV_PUBLISH_TIMEOUT) or 5.0),
                            prefetch=int(env.get(ENV_PREFETCH) or 10),
                            claim_after=float(env.get(ENV_CLAIM_AFTER) or 30.0),
                            once_url=env.get(ENV_ONCE_URL) or "")
        except ValueError as exc:
            raise ConfigError(f"{ENV_URL} and the MICROKIT_EVENTS_* variables: {exc}") from None
    from microkit import config

    return resolve(config.discover(None, env), env.get(ENV_SERVICE, ""))
