"""What the migration features keep in the registry's store, so that every gateway sharing the
registry sees it: live splits, shadow counters, the last mismatches with both sides, learned noise.

Chosen by the registry URL like the registry itself:
- `redis://`, `rediss://`, `redis+sentinel://`: `RedisMigrationStore`, under `{namespace}:migration:`: `splits` (hash, service
  -> JSON {split, changed_at}), `counts:{service}` (hash of counters), `diffs:{service}` (list of JSON
  mismatch records, newest first, trimmed to `keep`), `noise:{service}` (set of learned noisy fields).
- no URL: `SqliteMigrationStore`, tables `migration_*` in the embedded registry's file.
Connections come from `microkit.storage` (per process, lazily, again after a fork); an unreachable
store raises `microkit.storage.StoreUnavailable`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microkit.registry import embedded_path
from microkit.storage import PerProcess, StoreUnavailable, backend_for, redacted, redis_client, unavailable
from microkit.storage import sqlite as open_sqlite

if TYPE_CHECKING:
    import redis

SOCKET_TIMEOUT = 1.0
COUNTERS = ("compared", "mismatched", "dropped", "failed")


class MigrationStore(ABC):
    """Live splits, shadow counters, mismatches and noise of one project (namespace)."""

    @abstractmethod
    def splits(self) -> dict[str, dict]:
        """service -> {"split": percent, "changed_at": epoch seconds} for every live override."""

    @abstractmethod
    def set_split(self, service: str, split: float | None) -> None:
        """Override a route's split on every gateway (None: back to microkit.toml's)."""

    @abstractmethod
    def add(self, counts: dict[str, dict[str, int]], diffs: dict[str, list[dict]], noise: dict[str, set[str]],
            keep: dict[str, int]) -> None:
        """Add counter deltas, mismatch records (keeping the last `keep[service]`) and noisy fields."""

    @abstractmethod
    def report(self, service: str) -> dict:
        """{"counts": {...}, "mismatches": [newest first], "noise": [...]} of one route."""

    @abstractmethod
    def clear(self, service: str) -> None:
        """Forget a route's counters, mismatches and noise."""

    def close(self) -> None:
        """Release this process's connection."""


class RedisMigrationStore(MigrationStore):
    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.prefix = f"{namespace}:migration:"
        self._client: PerProcess[redis.Redis] = PerProcess(
            lambda: redis_client(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, retries=1))

    def splits(self) -> dict[str, dict]:
        found = self._call(lambda c: c.hgetall(self.prefix + "splits"))
        return {service: json.loads(value) for service, value in found.items()}

    def set_split(self, service: str, split: float | None) -> None:
        if split is None:
            self._call(lambda c: c.hdel(self.prefix + "splits", service))
        else:
            value = json.dumps({"split": split, "changed_at": time.time()})
            self._call(lambda c: c.hset(self.prefix + "splits", service, value))

    def add(self, counts, diffs, noise, keep) -> None:
        def run(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=True)  # all or nothing: a failed flush is retried whole
            for service, values in counts.items():
                for name, delta in values.items():
                    if delta:
                        pipe.hincrby(f"{self.prefix}counts:{service}", name, delta)
            for service, records in diffs.items():
                key = f"{self.prefix}diffs:{service}"
                pipe.lpush(key, *(json.dumps(r) for r in records))
                pipe.ltrim(key, 0, keep.get(service, 50) - 1)
            for service, fields in noise.items():
                if fields:
                    pipe.sadd(f"{self.prefix}noise:{service}", *fields)
            pipe.execute()
        self._call(run)

    def report(self, service: str) -> dict:
        def run(client: redis.Redis) -> list:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(f"{self.prefix}counts:{service}")
            pipe.lrange(f"{self.prefix}diffs:{service}", 0, -1)
            pipe.smembers(f"{self.prefix}noise:{service}")
            return pipe.execute()
        counts, diffs, noise = self._call(run)
        return {"counts": {name: int(counts.get(name, 0)) for name in COUNTERS},
                "mismatches": [json.loads(d) for d in diffs], "noise": sorted(noise)}

    def clear(self, service: str) -> None:
        self._call(lambda c: c.delete(*(f"{self.prefix}{kind}:{service}" for kind in ("counts", "diffs", "noise"))))

    def close(self) -> None:
        client = self._client.drop()
        if client is not None:
            client.close()

    def _call(self, operation: Callable[[redis.Redis], Any]) -> Any:
        with unavailable(f"migration store {redacted(self.url)}"):
            return operation(self._client.get())


SCHEMA = """
CREATE TABLE IF NOT EXISTS migration_splits (namespace TEXT NOT NULL, service TEXT NOT NULL,
    split REAL NOT NULL, changed_at REAL NOT NULL, PRIMARY KEY (namespace, service));
CREATE TABLE IF NOT EXISTS migration_counts (namespace TEXT NOT NULL, service TEXT NOT NULL, name TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (namespace, service, name));
CREATE TABLE IF NOT EXISTS migration_diffs (id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL,
    service TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migration_noise (namespace TEXT NOT NULL, service TEXT NOT NULL, field TEXT NOT NULL,
    PRIMARY KEY (namespace, service, field));
"""


class SqliteMigrationStore(MigrationStore):
    def __init__(self, path: Path, namespace: str) -> None:
        self.path = Path(path)
        self.namespace = namespace
        self._db: PerProcess[sqlite3.Connection] = PerProcess(self._open)
        self._lock = threading.RLock()

    def _open(self) -> sqlite3.Connection:
        with unavailable(f"migration store {self.path}"):
            return open_sqlite(self.path, SCHEMA)

    @contextmanager
    def _store(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._db.get()
                if not write:
                    yield db
                    return
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"migration store {self.path} unavailable: {exc}") from None

    def splits(self) -> dict[str, dict]:
        with self._store() as db:
            rows = db.execute("SELECT service, split, changed_at FROM migration_splits WHERE namespace = ?",
                              (self.namespace,)).fetchall()
        return {service: {"split": split, "changed_at": at} for service, split, at in rows}

    def set_split(self, service: str, split: float | None) -> None:
        with self._store(write=True) as db:
            if split is None:
                db.execute("DELETE FROM migration_splits WHERE namespace = ? AND service = ?", (self.namespace, service))
            else:
                db.execute("REPLACE INTO migration_splits VALUES (?, ?, ?, ?)",
                           (self.namespace, service, split, time.time()))

    def add(self, counts, diffs, noise, keep) -> None:
        ns = self.namespace
        with self._store(write=True) as db:
            for service, values in counts.items():
                for name, delta in values.items():
                    if delta:
                        db.execute("INSERT INTO migration_counts VALUES (?, ?, ?, ?) ON CONFLICT "
                                   "(namespace, service, name) DO UPDATE SET value = value + ?",
                                   (ns, service, name, delta, delta))
            for service, records in diffs.items():
                db.executemany("INSERT INTO migration_diffs (namespace, service, record) VALUES (?, ?, ?)",
                               [(ns, service, json.dumps(r)) for r in records])
                db.execute("DELETE FROM migration_diffs WHERE namespace = ? AND service = ? AND id NOT IN (SELECT id "
                           "FROM migration_diffs WHERE namespace = ? AND service = ? ORDER BY id DESC LIMIT ?)",
                           (ns, service, ns, service, keep.get(service, 50)))
            for service, fields in noise.items():
                db.executemany("INSERT OR IGNORE INTO migration_noise VALUES (?, ?, ?)",
                               [(ns, service, f) for f in fields])

    def report(self, service: str) -> dict:
        key = (self.namespace, service)
        with self._store() as db:
            counts = dict(db.execute("SELECT name, value FROM migration_counts WHERE namespace = ? AND service = ?",
                                     key).fetchall())
            diffs = [json.loads(r) for (r,) in db.execute(
                "SELECT record FROM migration_diffs WHERE namespace = ? AND service = ? ORDER BY id DESC", key)]
            noise = [f for (f,) in db.execute(
                "SELECT field FROM migration_noise WHERE namespace = ? AND service = ? ORDER BY field", key)]
        return {"counts": {name: int(counts.get(name, 0)) for name in COUNTERS}, "mismatches": diffs, "noise": noise}

    def clear(self, service: str) -> None:
        with self._store(write=True) as db:
            for table in ("migration_counts", "migration_diffs", "migration_noise"):
                db.execute(f"DELETE FROM {table} WHERE namespace = ? AND service = ?", (self.namespace, service))

    def close(self) -> None:
        db = self._db.drop()
        if db is not None:
            db.close()


schemes: dict[str, Callable[[str, str], MigrationStore]] = {"redis": RedisMigrationStore,
                                                             "rediss": RedisMigrationStore,
                                                             "redis+sentinel": RedisMigrationStore}


def connect_migration_store(url: str | None, *, project_root: Path, namespace: str) -> MigrationStore:
    """The migration store for a registry URL (None: the embedded SQLite file); nothing connects yet."""
    if url is None:
        return SqliteMigrationStore(embedded_path(project_root), namespace)
    return backend_for(url, schemes)(url, namespace)
