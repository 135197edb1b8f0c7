"""The registry contract, run against both backends: the embedded SQLite file and a real Redis.

Each test gets its own namespace (and, for the embedded backend, its own project folder); Redis keys
under it are deleted on teardown. Redis comes from MICROKIT_TEST_REDIS (default the local server).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from microkit.errors import ConfigError
from microkit.registry import (
    EmbeddedRegistry, Heartbeat, Instance, RedisRegistry, Registry, Watcher, connect, embedded_path,
)
from microkit.testing import eventually
from support.servers import REDIS_URL, delete_namespace, require_redis
from support.waiting import seconds_until

@dataclass
class Store:
    """One backend under test; everything opened through it is closed on teardown."""

    url: str | None
    root: Path
    namespace: str
    namespaces: set[str] = field(default_factory=set)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def open(self, namespace: str | None = None) -> Registry:
        registry = connect(self.url, project_root=self.root, namespace=namespace or self.namespace)
        self.namespaces.add(registry.namespace)
        self.cleanups.append(registry.close)
        return registry

    def watch(self, registry: Registry, **kwargs) -> Watcher:
        watcher = registry.watch(**kwargs)
        self.cleanups.append(watcher.stop)
        return watcher

    def heartbeat(self, registry: Registry, interval: float) -> Heartbeat:
        heartbeat = Heartbeat(registry, interval).start()
        self.cleanups.append(heartbeat.stop)
        return heartbeat


@pytest.fixture(params=["embedded", "redis"])
def store(request, tmp_path):
    url = None
    if request.param == "redis":
        url = REDIS_URL
        require_redis(url)
    store = Store(url, tmp_path, f"mktest-{uuid.uuid4().hex[:12]}")
    yield store
    for cleanup in reversed(store.cleanups):
        cleanup()
    if url:
        for namespace in store.namespaces:
            delete_namespace(url, namespace)


def ids(instances: list[Instance]) -> set[str]:
    return {i.instance_id for i in instances}


def test_register_list_deregister(store):
    registry = store.open()
    first = registry.register(Instance("users", "127.0.0.1", 9001, meta={"version": "1.2"}))
    second = registry.register(Instance("users", "127.0.0.1", 9002))
    orders = registry.register(Instance("orders", "10.0.0.5", 9100))

    assert registry.instances("users") == [first, second]
    assert registry.services() == {"orders": [orders], "users": [first, second]}
    assert first.last_seen >= first.started_at and first.meta == {"version": "1.2"}
    assert first.pid == os.getpid()

    registry.deregister(first)
    registry.deregister(first)
    assert registry.instances("users") == [second]
    registry.deregister(second)
    assert registry.instances("users") == []
    assert registry.instances("nobody") == []
    assert list(registry.services()) == ["orders"]
    assert registry.registered() == [orders]


def test_heartbeat_keeps_an_instance_alive_and_needs_a_registration(store):
    registry = store.open()
    instance = registry.register(Instance("users", "127.0.0.1", 9001), ttl=0.4)
    heartbeat = store.heartbeat(registry, interval=0.1)

    def refreshed_past_its_ttl() -> bool:
        [seen] = registry.instances("users")  # there all along
        assert seen.instance_id == instance.instance_id
        return seen.last_seen > instance.last_seen + 0.5

    eventually(refreshed_past_its_ttl, 2.0, "the heartbeat kept the instance past its 0.4 s ttl")

    heartbeat.stop()
    eventually(lambda: not registry.instances("users"), 0.4 + 0.3, "the instance expired")
    with pytest.raises(LookupError):
        registry.heartbeat("not-registered-here")
    registry.deregister(instance)
    with pytest.raises(LookupError):
        registry.heartbeat(instance)


def test_instance_without_heartbeats_expires_within_ttl_plus_poll_interval(store):
    registry = store.open()
    watcher = store.watch(store.open(), interval=0.3)
    instance = registry.register(Instance("users", "127.0.0.1", 9001), ttl=0.5)
    eventually(lambda: watcher.instances("users"), 1.0, "the watcher saw the instance")

    elapsed = seconds_until(lambda: not watcher.instances("users"), 2.0, "the watcher dropped the expired instance")
    assert elapsed <= 0.5 + 0.3 + 0.2
    assert registry.instances("users") == [] and registry.services() == {}
    assert registry.registered() == [instance]


def test_watcher_sees_register_and_deregister_within_a_second(store):
    snapshots = []
    watcher = store.watch(store.open(), callback=snapshots.append, interval=10.0)
    registry = store.open()

    instance = registry.register(Instance("users", "127.0.0.1", 9001))
    eventually(lambda: watcher.instances("users"), 1.0, "the watcher saw the instance")
    assert ids(watcher.instances("users")) == {instance.instance_id}

    registry.heartbeat(instance)
    registry.deregister(instance)
    eventually(lambda: not watcher.instances("users"), 1.0, "the watcher dropped the deregistered instance")
    assert [list(s) for s in snapshots] == [["users"], []]
    assert watcher.age < 1.0 and watcher.error is None


def test_namespaces_isolate(store):
    mine, theirs = store.open(), store.open(f"{store.namespace}-other")
    snapshots = []
    watcher = store.watch(theirs, callback=snapshots.append, interval=0.2)
    instance = mine.register(Instance("users", "127.0.0.1", 9001))
    registered = time.monotonic()
    eventually(lambda: time.monotonic() - watcher.age > registered + 0.2, 2.0,
               "the other namespace's watcher read its store after the registration")
    assert theirs.services() == {} and snapshots == []
    assert mine.instances("users") == [instance]


def _child(registry: Registry, parent_id: str, report: multiprocessing.Queue) -> None:
    """Register from a forked process with the parent's registry object, then heartbeat until killed."""
    child = registry.register(Instance("orders", "127.0.0.1", 9100))
    Heartbeat(registry).start()
    eventually(lambda: parent_id in ids(registry.instances("users")), 5.0, "the parent registered")
    report.put((child.instance_id, registry.registered() == [child]))
    time.sleep(60)


def test_two_processes_see_each_other_and_a_killed_one_leaves_within_3s(store):
    registry = store.open()
    parent = registry.register(Instance("users", "127.0.0.1", 9001))
    store.heartbeat(registry, interval=0.5)
    watcher = store.watch(store.open())
    context = multiprocessing.get_context("fork")
    report = context.Queue()
    process = context.Process(target=_child, args=(registry, parent.instance_id, report), daemon=True)
    process.start()
    try:
        child_id, child_owns_only_its_own = report.get(timeout=10)
        assert child_owns_only_its_own
        assert ids(registry.registered()) == {parent.instance_id}
        eventually(lambda: child_id in ids(watcher.instances("orders")), 1.0, "the watcher saw the child")

        os.kill(process.pid, signal.SIGKILL)
        gone = seconds_until(lambda: child_id not in ids(watcher.instances("orders")), 4.0,
                             "the killed child left the snapshot")
        print(f"\n{type(registry).__name__}: kill -9'd instance left the watcher snapshot after {gone:.2f} s")
        assert gone <= 3.0 + 0.3
        assert ids(watcher.instances("users")) == {parent.instance_id}
    finally:
        process.kill()
        process.join(5)
        report.close()


def test_connect_chooses_the_backend_by_scheme(tmp_path):
    embedded = connect(None, project_root=tmp_path, namespace="shop")
    assert isinstance(embedded, EmbeddedRegistry) and embedded.path == tmp_path / ".microkit" / "registry.db"
    assert embedded_path(tmp_path) == embedded.path
    for url in ("redis://127.0.0.1:6379/0", "rediss://user:secret@example.com:6380/1", "REDIS://h"):
        registry = connect(url, project_root=tmp_path, namespace="shop")
        assert isinstance(registry, RedisRegistry) and registry.namespace == "shop"
    assert "secret" not in repr(connect("redis://:secret@h/0", project_root=tmp_path, namespace="shop"))

    for url in ("http://:secret@example.com", "127.0.0.1:6379", "sqlite:///x.db"):
        with pytest.raises(ConfigError) as caught:
            connect(url, project_root=tmp_path, namespace="shop")
        assert "redis://, rediss://" in str(caught.value) and "secret" not in str(caught.value)


def test_instance_round_trips_through_json():
    instance = Instance("users", "::1", 9001, meta={"weight": 2, "tags": ["a"]}, last_seen=5.0)
    assert Instance.from_json(instance.to_json()) == instance
    assert {instance: 1}[Instance.from_json(instance.to_json())] == 1
