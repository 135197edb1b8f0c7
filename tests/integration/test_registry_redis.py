"""Redis-only behaviour: key layout, pruning, outages of a private redis-server, gevent workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import redis

from support.cli import PROGRAMS, REPO
from support.servers import REDIS_URL, delete_namespace, free_port, require_redis
from support.waiting import seconds_until

from microkit.registry import Heartbeat, Instance, RedisRegistry, RegistryUnavailable
from microkit.testing import eventually


def next_message(pubsub: redis.client.PubSub, timeout: float) -> dict | None:
    """The next published message's JSON body within `timeout` (subscribe confirmations skipped)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=remaining)
        if message is not None:
            return json.loads(message["data"])
    return None


@pytest.fixture
def shared():
    """A RedisRegistry on the shared test server under a fresh namespace, plus a raw client."""
    require_redis(REDIS_URL)
    namespace = f"mktest-{uuid.uuid4().hex[:12]}"
    registry = RedisRegistry(REDIS_URL, namespace)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield registry, client
    registry.close()
    client.close()
    delete_namespace(REDIS_URL, namespace)


def test_key_layout_and_notifications(shared):
    registry, client = shared
    ns = registry.namespace
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{ns}:changes")
    instance = registry.register(Instance("users", "127.0.0.1", 9001))

    key = f"{ns}:instance:users:{instance.instance_id}"
    assert Instance.from_json(client.get(key)) == instance
    assert 1500 < client.pttl(key) <= 2000
    assert client.smembers(f"{ns}:service:users") == {instance.instance_id}
    assert client.smembers(f"{ns}:services") == {"users"}
    assert next_message(pubsub, timeout=1.0) == {"event": "register", "service": "users",
                                           "instance_id": instance.instance_id}

    registry.heartbeat(instance)
    assert next_message(pubsub, timeout=0.2) is None, "a plain heartbeat must not notify"
    registry.deregister(instance)
    assert next_message(pubsub, timeout=1.0)["event"] == "deregister"
    assert not client.exists(key) and not client.smembers(f"{ns}:service:users")
    pubsub.close()


def test_expired_ids_are_pruned_and_a_lost_key_is_recreated_by_heartbeat(shared):
    registry, client = shared
    ns = registry.namespace
    gone = registry.register(Instance("orders", "127.0.0.1", 9100), ttl=0.2)
    kept = registry.register(Instance("users", "127.0.0.1", 9001))
    eventually(lambda: registry.services() == {"users": [kept]}, 2.0, "the instance past its 0.2 s ttl left")
    assert not client.smembers(f"{ns}:service:orders") and client.smembers(f"{ns}:services") == {"users"}
    assert gone in registry.registered()

    client.delete(f"{ns}:instance:users:{kept.instance_id}", f"{ns}:service:users", f"{ns}:services")
    assert registry.services() == {}
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{ns}:changes")
    registry.heartbeat(kept)
    assert next_message(pubsub, timeout=1.0)["event"] == "register"
    assert [i.instance_id for i in registry.instances("users")] == [kept.instance_id]
    pubsub.close()


def test_unreachable_redis_raises_registry_unavailable_quickly():
    registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", "mktest-down")
    instance = Instance("users", "127.0.0.1", 9001)
    started = time.monotonic()
    for call in (lambda: registry.register(instance), lambda: registry.heartbeat(instance),
                 lambda: registry.instances("users"), registry.services, registry.changes,
                 lambda: registry.deregister(instance)):
        with pytest.raises(RegistryUnavailable, match="unavailable"):
            call()
    assert time.monotonic() - started < 2.0

    watcher = registry.watch(interval=0.2)
    try:
        assert watcher.snapshot() == {} and watcher.age == float("inf")
        assert isinstance(watcher.error, RegistryUnavailable)
    finally:
        watcher.stop()


def test_outage_keeps_the_last_snapshot_and_converges_after_restart(private_redis):
    registry = RedisRegistry(private_redis.url, "mktest-outage")
    heartbeat = Heartbeat(registry).start()
    watcher = registry.watch()
    try:
        instance = registry.register(Instance("users", "127.0.0.1", 9001))
        eventually(lambda: watcher.instances("users"), 1.0, "the watcher saw the instance")

        private_redis.stop()
        with pytest.raises(RegistryUnavailable):
            registry.instances("users")
        eventually(lambda: isinstance(watcher.error, RegistryUnavailable) and watcher.age > 2.0, 5,
                   "the watcher's snapshot outlived two seconds of outage")
        assert [i.instance_id for i in watcher.instances("users")] == [instance.instance_id]
        assert isinstance(heartbeat.error, RegistryUnavailable)

        private_redis.start()
        # the restarted server is empty: converged once the heartbeat has written the instance again and the
        # watcher has read it
        converged = seconds_until(lambda: watcher.error is None and watcher.age < 0.5 and registry.instances("users")
                                  and watcher.instances("users"), 5.0, "the watcher converged")
        assert [i.instance_id for i in watcher.instances("users")] == [instance.instance_id]
        assert [i.instance_id for i in registry.instances("users")] == [instance.instance_id]
        print(f"\nwatcher converged {converged:.2f} s after redis-server came back")

        newcomer = registry.register(Instance("orders", "127.0.0.1", 9100))
        eventually(lambda: watcher.instances("orders") == [newcomer], 1.0, "the watcher saw the newcomer")
        assert heartbeat.error is None
    finally:
        watcher.stop()
        heartbeat.stop()
        registry.close()


def test_a_redis_that_refuses_writes_does_not_kill_heartbeats_or_watchers(private_redis):
    """Reachable but refusing (here NOREPLICAS; MISCONF, OOM and READONLY behave alike): the threads live on,
    and the instance is back once Redis accepts writes again."""
    registry = RedisRegistry(private_redis.url, "mktest-refusing")
    heartbeat = Heartbeat(registry, interval=0.1).start()
    watcher = registry.watch(interval=0.2)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        instance = registry.register(Instance("users", "127.0.0.1", 9001), ttl=0.5)
        eventually(lambda: watcher.instances("users"), 1.0, "the watcher saw the instance")
        admin.config_set("min-replicas-to-write", 1)
        with pytest.raises(RegistryUnavailable, match="NOREPLICAS"):
            registry.register(Instance("orders", "127.0.0.1", 9002))
        eventually(lambda: isinstance(heartbeat.error, RegistryUnavailable), 2.0, "the heartbeat met NOREPLICAS")
        assert heartbeat._thread.is_alive() and watcher._thread.is_alive()
        admin.config_set("min-replicas-to-write", 0)
        eventually(lambda: [i.instance_id for i in registry.instances("users")] == [instance.instance_id], 2.0,
                   "the heartbeat wrote the instance again")
        eventually(lambda: heartbeat.error is None and watcher.error is None, 2.0, "heartbeat and watcher recovered")
    finally:
        admin.close()
        watcher.stop()
        heartbeat.stop()
        registry.close()


def test_usable_from_a_gevent_patched_worker(shared):
    registry, _ = shared
    result = subprocess.run([sys.executable, str(PROGRAMS / "registry_gevent_worker.py"), REDIS_URL, registry.namespace],
                            capture_output=True, text=True, timeout=20, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["readers"] == [1] * 50
    assert report["watched"] == report["alive"] == [report["mine"]]
