"""Connections to the stores microkit keeps state in, by URL: one home for the registry, the API key
stores, the gateway's batched Redis calls and events.

- `redis_client(url)` is the one place a URL becomes a Redis client (`redis://`, `rediss://`,
  `redis+sentinel://`: see redis_urls); redis-py
  is imported there, on first use, so a process that never touches Redis never loads it.
- `sqlite(path)` opens an SQLite file the way every embedded store here shares one between processes:
  WAL, a busy timeout, transactions opened explicitly (plain `sqlite3`, no ORM).
- `PerProcess(connect)` holds one connection per process, made on first use and again after a fork
  (a connection made before fork must not be used in the child).
- `StoreUnavailable` is the one error for "the store cannot serve us now" (unreachable, or reachable
  but refusing: MISCONF, OOM, READONLY, NOREPLICAS); `unavailable(what)` turns store errors into it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from microkit.errors import ConfigError, MicrokitError

if TYPE_CHECKING:
    import redis

__all__ = ["BUSY_TIMEOUT", "REDIS_SCHEMES", "SOCKET_TIMEOUT", "PerProcess", "StoreUnavailable", "backend_for",
           "redacted", "redis_client", "redis_errors", "scheme", "sqlite", "unavailable"]

SOCKET_TIMEOUT = 1.0
BUSY_TIMEOUT = 2.0
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel")

T = TypeVar("T")


class StoreUnavailable(MicrokitError):
    """A store (Redis, an SQLite file, a broker) cannot be reached or refuses now; callers keep their last
    known state and try again."""


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scheme(url: str) -> str:
    """The URL's scheme, lower-cased ("" when it has none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def backend_for(url: str, table: dict[str, T], *, what: str = "registry", default: str = "no URL for the "
                "embedded registry") -> T:
    """The entry of a `schemes` table for the URL's scheme; a ConfigError listing the known ones otherwise."""
    found = scheme(url)
    if found not in table:
        known = ", ".join(f"{name}://" for name in table)
        raise ConfigError(f"unknown {what} URL {redacted(url)!r}: known schemes are {known} (or {default})")
    return table[found]


def redis_client(url: str, *, decode_responses: bool = False, socket_timeout: float | None = SOCKET_TIMEOUT,
                 retries: int = 1) -> redis.Redis:
    """A redis-py client for `url`; nothing connects yet. `retries` quick retries (no backoff) cover a
    pooled connection that a Redis restart broke. Every Redis user in microkit gets its client here."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .redis_urls import client_from_url

    if scheme(url) not in REDIS_SCHEMES:
        raise ConfigError(f"not a Redis URL: {redacted(url)!r} (expected redis://, rediss:// or redis+sentinel://)")
    return client_from_url(url, decode_responses=decode_responses, socket_timeout=socket_timeout,
                           socket_connect_timeout=SOCKET_TIMEOUT if socket_timeout is None else socket_timeout,
                           retry=Retry(NoBackoff(), retries))


def redis_errors() -> tuple[type[BaseException], ...]:
    """The redis-py errors that mean "unavailable now" (imports redis-py)."""
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.ResponseError)


def sqlite(path: Path, schema: str = "") -> sqlite3.Connection:
    """Open (creating folder and file if needed) an SQLite file shared by the processes of one host:
    WAL lets readers run beside the writer, a busy timeout queues writers, `isolation_level=None` leaves
    transactions to the caller (BEGIN IMMEDIATE for writes). Raises OSError or sqlite3.Error: call it
    inside `unavailable(...)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    _wal(db)
    db.execute("PRAGMA synchronous=normal")
    if schema:
        db.executescript(schema)
    return db


def _wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so: later opens only read the mode). Switching needs the file
    to itself, and SQLite answers "database is locked" at once, without its busy handler, while another
    process opens the same new file: so retry within the busy timeout (8 processes opening one new
    file failed 7 times in 240 without this)."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=wal")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


@contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn a store's "cannot serve now" errors (redis-py's, sqlite3's, OSError) into StoreUnavailable
    naming `what` (for example "registry redis://host:6379/0")."""
    import sys

    kinds: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    if "redis" in sys.modules:
        kinds += redis_errors()
    try:
        yield
    except StoreUnavailable:
        raise
    except kinds as exc:
        raise StoreUnavailable(f"{what} unavailable: {exc}") from exc


_forks = [0]
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


class PerProcess(Generic[T]):
    """One connection per process, made by `connect` on first use and again after a fork (a fork counter
    bumped in every child: cheaper than a getpid() system call on each use)."""

    def __init__(self, connect: Callable[[], T]) -> None:
        self._connect = connect
        self._made_in = -1
        self._conn: Any = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """This process's connection."""
        if self._made_in != _forks[0]:
            with self._lock:
                if self._made_in != _forks[0]:
                    self._conn, self._made_in = self._connect(), _forks[0]
        return self._conn

    def drop(self) -> T | None:
        """Forget the connection; returns it when this process made it (the caller closes it)."""
        conn, mine = self._conn, self._made_in == _forks[0]
        self._conn, self._made_in = None, -1
        return conn if mine else None
