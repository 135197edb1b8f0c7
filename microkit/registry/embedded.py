"""The default registry: an SQLite file shared by the processes of one host, no server needed.

Tables (one file for every namespace; plain `sqlite3`, so a worker that does not use peewee itself
does not pay for loading it and its database drivers):
- `instances(namespace, instance_id, service, data, expires_at)`: `data` is the instance as JSON, and an
  instance is live while `expires_at` (last heartbeat + TTL, wall clock) is in the future.
- `versions(namespace, version)`: a counter bumped in the same transaction as every register, deregister
  or re-creation; watchers poll it with one primary-key read, which is the change notification.
WAL mode lets readers run beside the single writer; writes take the lock up front (BEGIN IMMEDIATE) and
wait out a busy timeout, so concurrent processes queue instead of failing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from microkit import storage
from microkit.registry.base import Registry
from microkit.registry.contract import ChangeFeed, Instance, RegistryUnavailable, Snapshot, ordered

VERSION_POLL = 0.1


SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    namespace TEXT NOT NULL, instance_id TEXT NOT NULL, service TEXT NOT NULL, data TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (namespace, instance_id));
CREATE INDEX IF NOT EXISTS instances_expires_at ON instances (expires_at);
CREATE TABLE IF NOT EXISTS versions (namespace TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""


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
        with self._store() as db:
            rows = db.execute("SELECT service, data FROM instances WHERE namespace = ? AND expires_at > ?",
                              (self.namespace, time.time())).fetchall()
        snapshot: Snapshot = {}
        for service, data in rows:
            snapshot.setdefault(service, []).append(Instance.from_json(data))
        return {service: ordered(found) for service, found in sorted(snapshot.items())}

    def changes(self) -> ChangeFeed:
        """A feed that polls the namespace's version counter."""
        return _VersionFeed(self)

    def version(self) -> int:
        """The namespace's change counter (0 before the first change)."""
        with self._store() as db:
            row = db.execute("SELECT version FROM versions WHERE namespace = ?", (self.namespace,)).fetchone()
        return row[0] if row else 0

    def _connect(self) -> sqlite3.Connection:
        """Open (and if needed create) the database file for this process."""
        with storage.unavailable(f"registry {self.path}"):
            return storage.sqlite(self.path, SCHEMA)

    def _disconnect(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def _put(self, record: Instance, ttl: float, *, announce: bool) -> None:
        """Extend a live row; otherwise (new, expired or lost) write it whole and bump the version."""
        expires_at = record.last_seen + ttl
        data = record.to_json()
        with self._transaction() as db:
            if not announce and db.execute(
                    "UPDATE instances SET data = ?, expires_at = ? "
                    "WHERE namespace = ? AND instance_id = ? AND expires_at > ?",
                    (data, expires_at, self.namespace, record.instance_id, record.last_seen)).rowcount:
                return
            db.execute("DELETE FROM instances WHERE expires_at <= ?", (record.last_seen,))
            db.execute("REPLACE INTO instances (namespace, instance_id, service, data, expires_at) "
                       "VALUES (?, ?, ?, ?, ?)", (self.namespace, record.instance_id, record.service, data, expires_at))
            self._bump(db)

    def _remove(self, instance: Instance) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM instances WHERE namespace = ? AND instance_id = ?",
                       (self.namespace, instance.instance_id))
            self._bump(db)

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO versions (namespace, version) VALUES (?, 1) "
                   "ON CONFLICT (namespace) DO UPDATE SET version = version + 1", (self.namespace,))

    @contextmanager
    def _store(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, used under its lock; SQLite errors become RegistryUnavailable."""
        state = self._process()
        try:
            with state.lock:
                yield state.conn
        except sqlite3.Error as exc:
            raise RegistryUnavailable(f"registry {self.path} unavailable: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE), committed or rolled back whole."""
        with self._store() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


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
