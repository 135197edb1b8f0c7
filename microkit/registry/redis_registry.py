"""The multi-host registry: instances as Redis keys whose TTL heartbeats refresh, changes over pub/sub.

Key layout, for namespace `ns`:
- `ns:instance:{service}:{instance_id}`: string, the instance as JSON, PX = its TTL. Liveness is the key
  existing, judged by Redis's own clock, so hosts with skewed clocks agree. A string (not a hash) because
  one `SET ... PX ... GET` writes value and expiry atomically and tells whether the key had vanished.
- `ns:service:{service}`: set of instance ids, the index used to find the keys without SCAN.
- `ns:services`: set of service names.
- `ns:changes`: pub/sub channel; a message means "refresh", its JSON body is informative only.
Readers prune ids whose keys expired, atomically (a Lua script checks EXISTS before SREM), and every
heartbeat re-adds its id and service, so a pruning race heals within one heartbeat. Index sets carry a
long TTL refreshed by heartbeats, so an abandoned namespace cleans itself up. Needs Redis 6.2+ (SET ... GET).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import redis

from microkit import storage
from microkit.registry.base import Registry
from microkit.registry.contract import ChangeFeed, Instance, Snapshot, ordered
from microkit.storage import redacted

INDEX_TTL_MS = 3_600_000
SOCKET_TIMEOUT = 1.0

_PRUNE = """
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i - 1]) end
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


class RedisRegistry(Registry):
    """Registry in Redis, shared by every host that reaches the same server and namespace."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(namespace)
        self.url = url
        self.channel = f"{namespace}:changes"
        self._services_key = f"{namespace}:services"

    def __repr__(self) -> str:
        return f"RedisRegistry({redacted(self.url)!r}, namespace={self.namespace!r})"

    def instances(self, service: str) -> list[Instance]:
        """Live instances of `service`, found through its index set and pruned of expired ids."""
        with self._available():
            return self._collect([service]).get(service, [])

    def services(self) -> Snapshot:
        """Every service with live instances, read in three round trips whatever the count."""
        with self._available():
            return self._collect(sorted(self._client().smembers(self._services_key)))

    def changes(self) -> ChangeFeed:
        """Subscribe to the namespace's channel on a dedicated connection."""
        with self._available():
            return _RedisFeed(self._client(), self.channel, self._available)

    def _collect(self, services: list[str]) -> Snapshot:
        """Read the indexes of `services`, fetch their keys in one MGET, prune what expired."""
        client = self._client()
        pipe = client.pipeline(transaction=False)
        for service in services:
            pipe.smembers(self._index(service))
        ids = {service: sorted(members) for service, members in zip(services, pipe.execute())}
        keys = [self._key(service, i) for service, members in ids.items() for i in members]
        values = iter(client.mget(keys) if keys else [])
        snapshot: Snapshot = {}
        for service, members in ids.items():
            found = [(i, next(values)) for i in members]
            dead = [i for i, value in found if value is None]
            if dead or not members:
                prune_keys = [self._index(service), self._services_key] + [self._key(service, i) for i in dead]
                client.eval(_PRUNE, len(prune_keys), *prune_keys, service, *dead)
            live = [Instance.from_json(value) for _, value in found if value is not None]
            if live:
                snapshot[service] = ordered(live)
        return snapshot

    def _connect(self) -> redis.Redis:
        """A client for this process; one quick retry covers a pooled connection that a restart broke."""
        return storage.redis_client(self.url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, retries=1)

    def _disconnect(self, conn: redis.Redis) -> None:
        conn.close()

    def _put(self, record: Instance, ttl: float, *, announce: bool) -> None:
        """SET with PX and GET: one round trip refreshes and reveals whether the key had expired or vanished."""
        with self._available():
            client = self._client()
            pipe = client.pipeline(transaction=False)
            pipe.set(self._key(record.service, record.instance_id), record.to_json(), px=int(ttl * 1000), get=True)
            pipe.sadd(self._index(record.service), record.instance_id)
            pipe.pexpire(self._index(record.service), INDEX_TTL_MS)
            pipe.sadd(self._services_key, record.service)
            pipe.pexpire(self._services_key, INDEX_TTL_MS)
            previous = pipe.execute()[0]
            if announce or previous is None:
                self._announce(client, "register", record)

    def _remove(self, instance: Instance) -> None:
        with self._available():
            client = self._client()
            pipe = client.pipeline(transaction=False)
            pipe.delete(self._key(instance.service, instance.instance_id))
            pipe.srem(self._index(instance.service), instance.instance_id)
            pipe.execute()
            self._announce(client, "deregister", instance)

    def _announce(self, client: redis.Redis, event: str, instance: Instance) -> None:
        message = {"event": event, "service": instance.service, "instance_id": instance.instance_id}
        client.publish(self.channel, json.dumps(message))

    def _client(self) -> redis.Redis:
        return self._process().conn

    def _key(self, service: str, instance_id: str) -> str:
        return f"{self.namespace}:instance:{service}:{instance_id}"

    def _index(self, service: str) -> str:
        return f"{self.namespace}:service:{service}"

    @contextmanager
    def _available(self) -> Iterator[None]:
        """Turn "Redis cannot serve us now" into RegistryUnavailable: unreachable, and also reachable but
        refusing (MISCONF, OOM, READONLY after a failover, NOREPLICAS), which heals the same way."""
        with storage.unavailable(f"registry {redacted(self.url)}"):
            yield


class _RedisFeed(ChangeFeed):
    """A pub/sub subscription; messages lost while disconnected are made up for by the watcher's polling."""

    def __init__(self, client: redis.Redis, channel: str, available: Callable[[], AbstractContextManager[None]]) -> None:
        self._available = available
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)

    def wait(self, timeout: float) -> bool:
        """Wait for one message, then drain any burst so it causes one refresh."""
        with self._available():
            if self._pubsub.get_message(timeout=timeout) is None:
                return False
            while self._pubsub.get_message(timeout=0) is not None:
                pass
            return True

    def close(self) -> None:
        self._pubsub.close()
