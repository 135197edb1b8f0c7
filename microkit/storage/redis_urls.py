"""Redis clients from URLs: `client_from_url(url, **options)`, which `microkit.storage.redis_client` calls.

`redis://`, `rediss://` and `unix://` are redis-py's own. `redis+sentinel://HOST:PORT,HOST:PORT/SERVICE/DB`
names Sentinels (port 26379 when left out), the monitored service and the database (0 when left out);
a user and password before the hosts (`redis+sentinel://:PASSWORD@h1,h2/mymaster/0`) are the primary's.
The client asks the Sentinels where the primary is on every new connection, so after a failover a
broken connection is replaced by one to the new primary, and a demoted primary's READONLY answers
are treated as a broken connection.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", SENTINEL_SCHEME)
SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("socket_timeout", "socket_connect_timeout")  # also bound the questions to the Sentinels

_HOST = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]/@,]+))(?::(\d{1,5}))?$")


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel(url: str) -> SentinelURL:
    """The parts of a redis+sentinel:// URL; ValueError saying what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"expected {SENTINEL_SCHEME}://, got {scheme}://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        match = _HOST.match(item)
        if not match or (match.group(3) and not 0 < int(match.group(3)) < 65536):
            raise ValueError(f"expected Sentinels as HOST:PORT,HOST:PORT, got {item!r}")
        sentinels.append((match.group(1) or match.group(2), int(match.group(3) or SENTINEL_PORT)))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("expected /SERVICE or /SERVICE/DB after the Sentinels (e.g. /mymaster/0)")
    return SentinelURL(tuple(sentinels), unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0,
                       username, password)


def client_from_url(url: str, **options: Any):
    """A redis.Redis for `url`; `options` are redis-py connection options (timeouts, decode_responses, retry)."""
    import redis

    if url.split("://", 1)[0].lower() != SENTINEL_SCHEME:
        return redis.Redis.from_url(url, **options)
    from redis.sentinel import Sentinel

    parsed = parse_sentinel(url)
    sentinel = Sentinel(list(parsed.sentinels),
                        sentinel_kwargs={k: options[k] for k in SENTINEL_OPTIONS if k in options})
    return sentinel.master_for(parsed.service, db=parsed.db, username=parsed.username, password=parsed.password,
                               redis_class=_sentinel_client_class(), **options)


@functools.cache
def _sentinel_client_class() -> type:
    """redis.Redis whose close() also closes the connections to the Sentinels (redis-py's leaves them open).
    Those stay alive in a reference cycle until a garbage collection: in `microkit up` the registry check
    made them before the workers fork, and a worker that collects them after close_fds_except closes an
    fd number that is by then its own (gevent's epoll fd: libev aborts on an invalid fd)."""
    import redis

    class SentinelRedis(redis.Redis):
        def close(self) -> None:
            try:
                super().close()
            finally:
                for client in self.connection_pool.sentinel_manager.sentinels:
                    client.close()

    return SentinelRedis
