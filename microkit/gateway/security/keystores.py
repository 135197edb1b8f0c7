"""Where API key records live, chosen by the registry URL like the registry itself.

- `redis://`, `rediss://`: `RedisKeyStore`, one hash `{namespace}:apikeys`, field = key id, value = JSON
  {name, scopes, created_at, revoked, digest}. No TTL: keys live until deleted by hand.
- no URL: `SqliteKeyStore` in the embedded registry's file (`<project_root>/.microkit/registry.db`), its
  own table `apikeys`, WAL mode, writes under BEGIN IMMEDIATE with a busy timeout, so every process of
  the host shares it safely.
Connections come from `microkit.storage`: per process, lazily and again after a fork; redis-py and peewee
are imported on first use, so importing the security checks loads neither.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microkit.gateway.security.apikeys import KeyRecord, KeyStore, UnknownKey
from microkit.registry import embedded_path
from microkit.storage import BUSY_TIMEOUT, SOCKET_TIMEOUT, PerProcess, StoreUnavailable, backend_for, redacted, redis_client

if TYPE_CHECKING:
    import peewee
    import redis


def _record_json(record: KeyRecord, digest: str) -> str:
    return json.dumps({"name": record.name, "scopes": sorted(record.scopes), "created_at": record.created_at,
                       "revoked": record.revoked, "digest": digest}, separators=(",", ":"))


def _record_from_json(key_id: str, text: str | bytes) -> tuple[KeyRecord, str]:
    data = json.loads(text)
    return (KeyRecord(key_id, data["name"], frozenset(data["scopes"]), data["created_at"], data["revoked"]),
            data["digest"])


class RedisKeyStore(KeyStore):
    """API keys in a Redis hash shared by every host."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.key = f"{namespace}:apikeys"
        self._client: PerProcess[redis.Redis] = PerProcess(
            lambda: redis_client(url, socket_timeout=SOCKET_TIMEOUT, retries=1))

    def __repr__(self) -> str:
        return f"RedisKeyStore({redacted(self.url)!r}, key={self.key!r})"

    def list(self) -> list[KeyRecord]:
        entries = self._call(lambda c: c.hgetall(self.key))
        records = [_record_from_json(k.decode(), v)[0] for k, v in entries.items()]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    def revoke(self, key_id: str) -> KeyRecord:
        found = self._get(key_id)
        if found is None:
            raise UnknownKey(f"no API key with id {key_id!r}")
        record, digest = found
        revoked = KeyRecord(record.key_id, record.name, record.scopes, record.created_at, True)
        self._call(lambda c: c.hset(self.key, key_id, _record_json(revoked, digest)))
        return revoked

    def close(self) -> None:
        client = self._client.drop()
        if client is not None:
            client.close()

    def _insert(self, record: KeyRecord, digest: str) -> bool:
        return bool(self._call(lambda c: c.hsetnx(self.key, record.key_id, _record_json(record, digest))))

    def _get(self, key_id: str) -> tuple[KeyRecord, str] | None:
        value = self._call(lambda c: c.hget(self.key, key_id))
        return None if value is None else _record_from_json(key_id, value)

    def _call(self, operation: Callable[[redis.Redis], Any]) -> Any:
        import redis

        try:
            return operation(self._client.get())
        except redis.RedisError as exc:
            raise StoreUnavailable(f"API key store {redacted(self.url)} unavailable: {exc}") from None


class SqliteKeyStore(KeyStore):
    """API keys in the embedded registry's SQLite file, shared by the processes of one host."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path = Path(path)
        self.namespace = namespace
        self._db: PerProcess[tuple[peewee.SqliteDatabase, type[peewee.Model]]] = PerProcess(self._open)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self.path)!r}, namespace={self.namespace!r})"

    def list(self) -> list[KeyRecord]:
        with self._model() as Key:
            rows = Key.select().where(Key.namespace == self.namespace).order_by(Key.created_at, Key.key_id)
            return [self._record(row)[0] for row in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        with self._model(write=True) as Key:
            mine = (Key.namespace == self.namespace) & (Key.key_id == key_id)
            if not Key.update(revoked=True).where(mine).execute():
                raise UnknownKey(f"no API key with id {key_id!r}")
            return self._record(Key.get(mine))[0]

    def close(self) -> None:
        db = self._db.drop()
        if db is not None:
            db[0].close()

    def _insert(self, record: KeyRecord, digest: str) -> bool:
        import peewee

        with self._model(write=True) as Key:
            try:
                Key.insert(namespace=self.namespace, key_id=record.key_id, name=record.name,
                           scopes=json.dumps(sorted(record.scopes)), created_at=record.created_at,
                           revoked=record.revoked, digest=digest).execute()
            except peewee.IntegrityError:
                return False
            return True

    def _get(self, key_id: str) -> tuple[KeyRecord, str] | None:
        with self._model() as Key:
            row = Key.get_or_none((Key.namespace == self.namespace) & (Key.key_id == key_id))
            return None if row is None else self._record(row)

    @staticmethod
    def _record(row: Any) -> tuple[KeyRecord, str]:
        return (KeyRecord(row.key_id, row.name, frozenset(json.loads(row.scopes)), row.created_at, row.revoked),
                row.digest)

    def _open(self) -> tuple[peewee.SqliteDatabase, type[peewee.Model]]:
        import peewee

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = peewee.SqliteDatabase(
                str(self.path), thread_safe=False, check_same_thread=False, timeout=BUSY_TIMEOUT,
                lock_type="IMMEDIATE", pragmas={"journal_mode": "wal", "synchronous": "normal"})

            class Key(peewee.Model):
                namespace = peewee.TextField()
                key_id = peewee.TextField()
                name = peewee.TextField()
                scopes = peewee.TextField()
                created_at = peewee.FloatField()
                revoked = peewee.BooleanField(default=False)
                digest = peewee.TextField()

                class Meta:
                    database = db
                    table_name = "apikeys"
                    primary_key = peewee.CompositeKey("namespace", "key_id")

            db.create_tables([Key], safe=True)
            return db, Key
        except (OSError, peewee.OperationalError) as exc:
            raise StoreUnavailable(f"API key store {self.path} unavailable: {exc}") from None

    @contextmanager
    def _model(self, *, write: bool = False) -> Iterator[type[peewee.Model]]:
        """This process's model under the store's lock; writes in one IMMEDIATE transaction."""
        import peewee

        with self._lock:
            try:
                db, model = self._db.get()
                if write:
                    with db.atomic():
                        yield model
                else:
                    yield model
            except peewee.OperationalError as exc:
                raise StoreUnavailable(f"API key store {self.path} unavailable: {exc}") from None


schemes: dict[str, Callable[[str, str], KeyStore]] = {"redis": RedisKeyStore, "rediss": RedisKeyStore,
                                                         "redis+sentinel": RedisKeyStore}


def connect_keystore(url: str | None, *, project_root: Path, namespace: str) -> KeyStore:
    """The key store for a registry URL (None: the embedded SQLite file); nothing connects yet."""
    if url is None:
        return SqliteKeyStore(embedded_path(project_root), namespace)
    return backend_for(url, schemes)(url, namespace)
