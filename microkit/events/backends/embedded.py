"""The embedded events store: an SQLite file in the project's `.microkit/events.db`, for one host with no
server. The same model as Redis Streams (see `log`), in tables; consumers poll every POLL seconds, so an
event takes up to that long to arrive. Every write is a committed transaction (WAL, synchronous=normal:
durable across a process crash; a power cut may lose the last commits).

Tables (every row carries its namespace): `entries(seq, stream, body, created)`, `cursors(grp, stream,
last_seq)`, `pending(grp, stream, seq, consumer, delivered_at, deliveries)`, `dead(...)`, `once(key,
expires_at)`, `leases(name, holder, expires_at)`. Entries older than RETENTION are deleted now and then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from microkit.events.backends.base import DeadLetter
from microkit.events.backends.log import Entry, LogBackend, LogStore
from microkit.events.envelope import Event
from microkit.storage import sqlite, unavailable

POLL = 0.02
RETENTION = 7 * 86400
TRIM_EVERY = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL,
    stream TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_stream ON entries (namespace, stream, seq);
CREATE TABLE IF NOT EXISTS cursors (namespace TEXT NOT NULL, grp TEXT NOT NULL, stream TEXT NOT NULL,
    last_seq INTEGER NOT NULL, PRIMARY KEY (namespace, grp, stream));
CREATE TABLE IF NOT EXISTS pending (namespace TEXT NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL,
    stream TEXT NOT NULL, consumer TEXT NOT NULL, delivered_at REAL NOT NULL, deliveries INTEGER NOT NULL,
    PRIMARY KEY (namespace, grp, seq));
CREATE TABLE IF NOT EXISTS dead (id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL,
    service TEXT NOT NULL, grp TEXT NOT NULL, body BLOB NOT NULL, error TEXT NOT NULL, dead_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS once (namespace TEXT NOT NULL, key TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (namespace, key));
CREATE TABLE IF NOT EXISTS leases (namespace TEXT NOT NULL, name TEXT NOT NULL, holder TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (namespace, name));
"""


def path_of(url: str) -> Path:
    return Path(url.split("://", 1)[1])


class EmbeddedBackend(LogBackend):
    def make_store(self) -> SqliteLogStore:
        return SqliteLogStore(path_of(self.url), self.namespace)


class SqliteLogStore(LogStore):
    def __init__(self, path: Path, namespace: str) -> None:
        self.path = path
        self.ns = namespace
        self.what = f"events store {path}"
        with unavailable(self.what):
            self.db = sqlite(path, SCHEMA)
        self.lock = threading.RLock()
        self.added = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator:
        with unavailable(self.what), self.lock:
            if not write:
                yield self.db
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def add(self, stream: str, body: bytes) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO entries (namespace, stream, body, created) VALUES (?, ?, ?, ?)",
                       (self.ns, stream, body, now))
            self.added += 1
            if self.added % TRIM_EVERY == 0:
                db.execute("DELETE FROM entries WHERE created < ?", (now - RETENTION,))

    def lag(self) -> list[tuple[str, str, int, int]]:
        """(group, stream, entries not delivered to the group yet, delivered and not acked) of each group."""
        with self._tx(write=False) as db:
            waiting = db.execute(
                "SELECT c.grp, c.stream, (SELECT COUNT(*) FROM entries e WHERE e.namespace = c.namespace AND "
                "e.stream = c.stream AND e.seq > c.last_seq) FROM cursors c WHERE c.namespace = ?",
                (self.ns,)).fetchall()
            pending = dict(((g, s), n) for g, s, n in db.execute(
                "SELECT grp, stream, COUNT(*) FROM pending WHERE namespace = ? GROUP BY grp, stream", (self.ns,)))
        return [(g, s, n, pending.get((g, s), 0)) for g, s, n in waiting]

    def ensure_group(self, group: str, streams: list[str]) -> None:
        with self._tx() as db:
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0]
            for stream in streams:
                db.execute("INSERT OR IGNORE INTO cursors (namespace, grp, stream, last_seq) VALUES (?, ?, ?, ?)",
                           (self.ns, group, stream, 0 if stream.startswith("replay:") else last))

    def read(self, group: str, consumer: str, streams: list[str], count: int, block: float, *,
             own: bool = False) -> list[Entry]:
        import gevent

        if own:
            with self._tx() as db:
                rows = db.execute(
                    "SELECT p.stream, p.seq, e.body, p.deliveries + 1 FROM pending p LEFT JOIN entries e "
                    "ON e.seq = p.seq WHERE p.namespace = ? AND p.grp = ? AND p.consumer = ? ORDER BY p.seq",
                    (self.ns, group, consumer)).fetchall()
                db.execute("UPDATE pending SET deliveries = deliveries + 1, delivered_at = ? "
                           "WHERE namespace = ? AND grp = ? AND consumer = ?", (time.time(), self.ns, group, consumer))
            return [Entry(s, str(q), b, d) for s, q, b, d in rows]
        deadline = time.monotonic() + block
        while True:
            found = self._take(group, consumer, streams, count)
            if found or time.monotonic() >= deadline:
                return found
            gevent.sleep(POLL)

    def _take(self, group: str, consumer: str, streams: list[str], count: int) -> list[Entry]:
        marks = ",".join("?" * len(streams))
        with self._tx(write=False) as db:  # a cheap read first (an index lookup per stream): most polls find nothing
            newer = db.execute(
                f"SELECT 1 FROM cursors c WHERE c.namespace = ? AND c.grp = ? AND c.stream IN ({marks}) AND "
                f"(SELECT MAX(e.seq) FROM entries e WHERE e.namespace = c.namespace AND e.stream = c.stream) "
                f"> c.last_seq LIMIT 1", (self.ns, group, *streams)).fetchone()
        if newer is None:
            return []
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                f"SELECT e.seq, e.stream, e.body FROM entries e JOIN cursors c ON c.namespace = e.namespace "
                f"AND c.stream = e.stream AND c.grp = ? WHERE e.namespace = ? AND e.stream IN ({marks}) "
                f"AND e.seq > c.last_seq ORDER BY e.seq LIMIT ?", (group, self.ns, *streams, count)).fetchall()
            for seq, stream, _ in rows:
                db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?, 1)",
                           (self.ns, group, seq, stream, consumer, now))
                db.execute("UPDATE cursors SET last_seq = ? WHERE namespace = ? AND grp = ? AND stream = ? "
                           "AND last_seq < ?", (seq, self.ns, group, stream, seq))
        return [Entry(stream, str(seq), body) for seq, stream, body in rows]

    def claim(self, group: str, consumer: str, streams: list[str], min_idle: float, count: int) -> list[Entry]:
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT p.stream, p.seq, e.body, p.deliveries + 1 FROM pending p LEFT JOIN entries e ON e.seq = p.seq "
                "WHERE p.namespace = ? AND p.grp = ? AND p.delivered_at < ? ORDER BY p.seq LIMIT ?",
                (self.ns, group, now - min_idle, count)).fetchall()
            for _, seq, _, _ in rows:
                db.execute("UPDATE pending SET consumer = ?, delivered_at = ?, deliveries = deliveries + 1 "
                           "WHERE namespace = ? AND grp = ? AND seq = ?", (consumer, now, self.ns, group, seq))
        return [Entry(s, str(q), b, d) for s, q, b, d in rows]

    def touch(self, group: str, consumer: str, entries: list[Entry]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE pending SET delivered_at = ?, consumer = ? WHERE namespace = ? AND grp = ? "
                           "AND seq = ?", [(now, consumer, self.ns, group, int(e.entry_id)) for e in entries])

    def ack(self, group: str, entries: list[Entry]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM pending WHERE namespace = ? AND grp = ? AND seq = ?",
                           [(self.ns, group, int(entry.entry_id)) for entry in entries])

    def add_dead(self, letter: DeadLetter, stream: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO dead (namespace, service, grp, body, error, dead_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (self.ns, letter.service, letter.group, letter.event.to_json(), letter.error, letter.dead_at))

    def dead(self) -> list[tuple[str, DeadLetter]]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT id, service, grp, body, error, dead_at FROM dead WHERE namespace = ? "
                              "ORDER BY id", (self.ns,)).fetchall()
        return [(str(i), DeadLetter(Event.from_json(b), s, g, e, t)) for i, s, g, b, e, t in rows]

    def remove_dead(self, dead_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM dead WHERE namespace = ? AND id = ?", (self.ns, int(dead_id)))

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (namespace, name) DO UPDATE SET "
                       "holder = excluded.holder, expires_at = excluded.expires_at "
                       "WHERE leases.holder = excluded.holder OR leases.expires_at < ?",
                       (self.ns, name, holder, now + ttl, now))
            row = db.execute("SELECT holder FROM leases WHERE namespace = ? AND name = ?", (self.ns, name)).fetchone()
        return row is not None and row[0] == holder

    def tail(self, streams: list[str] | None, after: dict[str, str], block: float) -> list[Entry]:
        import gevent

        deadline = time.monotonic() + block
        while True:
            with self._tx(write=False) as db:
                last = int(after.get("", "0"))
                if block == 0:
                    after[""] = str(db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0])
                    return []
                rows = db.execute("SELECT seq, stream, body FROM entries WHERE namespace = ? AND seq > ? "
                                  "AND stream LIKE 'events:%' ORDER BY seq LIMIT 1000", (self.ns, last)).fetchall()
            if rows:
                after[""] = str(rows[-1][0])
                return [Entry(s, str(q), b) for q, s, b in rows if streams is None or s in streams]
            if time.monotonic() >= deadline:
                return []
            gevent.sleep(POLL)

    def seen(self, key: str) -> bool:
        with self._tx(write=False) as db:
            return db.execute("SELECT 1 FROM once WHERE namespace = ? AND key = ? AND expires_at > ?",
                              (self.ns, key, time.time())).fetchone() is not None

    def mark(self, key: str, ttl: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO once VALUES (?, ?, ?)", (self.ns, key, now + ttl))
            if self.added % TRIM_EVERY == 0:
                db.execute("DELETE FROM once WHERE expires_at < ?", (now,))
