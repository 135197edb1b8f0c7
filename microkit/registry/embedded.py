"""The default registry: an SQLite file shared by the processes of one host, no server needed.

Tables (peewee models, one file for every namespace):
- `instances(namespace, instance_id, service, data, expires_at)`: `data` is the instance as JSON, and an
  instance is live while `expires_at` (last heartbeat + TTL, wall clock) is in the future.
- `versions(namespace, version)`: a counter bumped in the same transaction as every register, deregister
  or re-creation; watchers poll it with one primary-key read, which is the change notification.
WAL mode lets readers run beside the single writer; writes take the lock up front (BEGIN IMMEDIATE) and
wait out a busy timeout, so concurrent processes queue instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee

from microkit.registry.base import ChangeFeed, Instance, Registry, RegistryUnavailable, Snapshot, ordered

BUSY_TIMEOUT = 2.0
VERSION_POLL = 0.1


def _models(db: peewee.SqliteDatabase) -> tuple[type[peewee.Model], type[peewee.Model]]:
    """Model classes bound to `db`, made per connection so processes never share a binding."""

    class Row(peewee.Model):
        namespace = peewee.TextField()
        instance_id = peewee.TextField()
        service = peewee.TextField()
        data = peewee.TextField()
        expires_at = peewee.FloatField(index=True)

        class Meta:
            database = db
            table_name = "instances"
            primary_key = peewee.CompositeKey("namespace", "instance_id")

    class Version(peewee.Model):
        namespace = peewee.TextField(primary_key=True)
        version = peewee.IntegerField()

        class Meta:
            database = db
            table_name = "versions"

    return Row, Version


class _Store:
    """This process's SQLite connection and the models bound to it."""

    def __init__(self, path: Path) -> None:
        self.db = peewee.SqliteDatabase(
            str(path), thread_safe=False, check_same_thread=False, timeout=BUSY_TIMEOUT,
            lock_type="IMMEDIATE", pragmas={"journal_mode": "wal", "synchronous": "normal"},
        )
        self.Row, self.Version = _models(self.db)
        self.db.create_tables([self.Row, self.Version], safe=True)


class EmbeddedRegistry(Registry):
    """Registry in an SQLite file; every process of the host that opens the same file shares it."""

    def __init__(self, path: Path, namespace: str) -> None:
        super().__init__(namespace)
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"EmbeddedRegistry({str(self.path)!r}, namespace={self.namespace!r})"

    def instances(self, service: str) -> list[Instance]:
        """Live instances of `service`."""
        return self.services().get(service, [])

    def services(self) -> Snapshot:
        """Every service with live instances."""
        with self._store() as store:
            rows = store.Row.select(store.Row.service, store.Row.data).where(
                (store.Row.namespace == self.namespace) & (store.Row.expires_at > time.time())
            ).tuples()
            snapshot: Snapshot = {}
            for service, data in rows:
                snapshot.setdefault(service, []).append(Instance.from_json(data))
        return {service: ordered(found) for service, found in sorted(snapshot.items())}

    def changes(self) -> ChangeFeed:
        """A feed that polls the namespace's version counter."""
        return _VersionFeed(self)

    def version(self) -> int:
        """The namespace's change counter (0 before the first change)."""
        with self._store() as store:
            row = store.Version.get_or_none(store.Version.namespace == self.namespace)
        return row.version if row else 0

    def _connect(self) -> _Store:
        """Open (and if needed create) the database file for this process."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return _Store(self.path)
        except (OSError, peewee.OperationalError) as exc:
            raise RegistryUnavailable(f"registry {self.path} unavailable: {exc}") from exc

    def _disconnect(self, conn: _Store) -> None:
        conn.db.close()

    def _put(self, record: Instance, ttl: float, *, announce: bool) -> None:
        """Extend a live row; otherwise (new, expired or lost) write it whole and bump the version."""
        expires_at = record.last_seen + ttl
        with self._store() as store, store.db.atomic():
            Row = store.Row
            mine = (Row.namespace == self.namespace) & (Row.instance_id == record.instance_id)
            if not announce:
                alive = mine & (Row.expires_at > record.last_seen)
                if Row.update(data=record.to_json(), expires_at=expires_at).where(alive).execute():
                    return
            Row.delete().where(Row.expires_at <= record.last_seen).execute()
            Row.replace(namespace=self.namespace, instance_id=record.instance_id, service=record.service,
                        data=record.to_json(), expires_at=expires_at).execute()
            self._bump(store)

    def _remove(self, instance: Instance) -> None:
        with self._store() as store, store.db.atomic():
            Row = store.Row
            Row.delete().where((Row.namespace == self.namespace) & (Row.instance_id == instance.instance_id)).execute()
            self._bump(store)

    def _bump(self, store: _Store) -> None:
        Version = store.Version
        Version.insert(namespace=self.namespace, version=1).on_conflict(
            conflict_target=[Version.namespace], update={Version.version: Version.version + 1}
        ).execute()

    @contextmanager
    def _store(self) -> Iterator[_Store]:
        """This process's store, used under its lock; SQLite errors become RegistryUnavailable."""
        state = self._process()
        try:
            with state.lock:
                yield state.conn
        except peewee.OperationalError as exc:
            raise RegistryUnavailable(f"registry {self.path} unavailable: {exc}") from exc


class _VersionFeed(ChangeFeed):
    """Change notification for SQLite: a cheap poll of the version counter every VERSION_POLL seconds."""

    def __init__(self, registry: EmbeddedRegistry) -> None:
        self._registry = registry
        self._seen = registry.version()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            current = self._registry.version()
            if current != self._seen:
                self._seen = current
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(VERSION_POLL, remaining))

    def close(self) -> None:
        """Nothing to release: the feed reads through the registry's own connection."""
