"""A service's peewee database from a URL: pooled per worker process, cooperative under gevent, safe
across fork, and back by itself after the database restarts.

    from microkit import db
    database = db.connect(os.environ["DATABASE_URL"])   # sqlite:///path, postgresql://..., mysql://...

- Pooled (playhouse.pool): a request takes an idle connection instead of connecting (a MariaDB connect
  costs about 25 ms here), at most `max_connections` per process (`?max_connections=N` in the URL; a
  request waits up to `timeout` seconds for one), and connections older than `stale_timeout` are replaced.
  The connection of a greenlet that ended without giving it back is taken back when the pool is full.
- Checking a connection out costs one poll() of its socket, not a round trip: an idle connection whose
  socket is readable has been closed by the server (a restart, pg_terminate_backend, KILL) and is
  dropped. peewee's own pools send `SELECT 1` (PostgreSQL) or a ping (MySQL) on every checkout.
- A database that cannot be reached, or a connection lost mid-query, raises `DatabaseUnavailable`: a
  peewee `OperationalError` that Bottle also treats as a ready answer, 503 JSON with `Retry-After`, so a
  Bottle service answers 503 during a restart without code of its own. The broken connection leaves the
  pool and the next request connects again: no worker restart.
- Fork-safe: a child never uses a connection its parent opened (the two would share one socket); it
  keeps them unused, since closing one would also end the parent's session, and opens its own.
- Cooperative: under gevent's monkey-patching psycopg2 and psycopg 3 get waits on the hub (see
  `microkit.supervisor.drivers`, which every microkit worker installs anyway).
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import threading
import time
import weakref
from typing import Any
from urllib.parse import urlparse

import bottle
import greenlet
from peewee import Database, InterfaceError, OperationalError, SqliteDatabase
from playhouse.db_url import parse
from playhouse.pool import MaxConnectionsExceeded, PooledMySQLDatabase, PooledPostgresqlDatabase, \
    PooledSqliteDatabase

log = logging.getLogger("microkit.db")

MAX_CONNECTIONS = 16
STALE_TIMEOUT = 300
WAIT_TIMEOUT = 10
RETRY_AFTER = "1"


class DatabaseUnavailable(OperationalError, bottle.HTTPResponse):
    """The database cannot be used right now (down, restarting, every pooled connection busy): a peewee
    OperationalError, and for Bottle a 503 JSON answer with Retry-After."""

    def __init__(self, reason: str):
        OperationalError.__init__(self, reason)
        body = json.dumps({"error": "database unavailable"})  # the reason is for logs, not for clients
        bottle.HTTPResponse.__init__(self, body, 503, {"Content-Type": "application/json",
                                                       "Retry-After": RETRY_AFTER})

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "database unavailable"


_poll_class: Any = None


def _poll() -> Any:
    """A poll object of the OS's own, even under gevent's monkey-patching: a check with no timeout needs no
    hub. gevent is imported only where it already is (a worker), so plain importers never load it. The class
    is looked up once: gevent's get_original() costs more than the check itself, at every checkout."""
    global _poll_class
    if _poll_class is None:
        monkey = sys.modules.get("gevent.monkey")
        _poll_class = monkey.get_original("select", "poll") if monkey is not None else select.poll
    return _poll_class()


_POLL_MASK = 0x001 | 0x002  # POLLIN | POLLPRI; POLLHUP and POLLERR are always reported


def fileno(conn: Any) -> int:
    """The socket of a driver connection, or -1 (SQLite, or a driver that does not tell)."""
    sock = getattr(conn, "_sock", None)  # PyMySQL
    if sock is not None:
        return sock.fileno()
    method = getattr(conn, "fileno", None)  # psycopg2, psycopg 3
    if callable(method):
        try:
            return method()
        except Exception:
            return -1
    return -1


def broken(conn: Any) -> bool:
    """Whether a driver connection knows it is closed or lost (psycopg2, psycopg 3, PyMySQL)."""
    if getattr(conn, "closed", False) or getattr(conn, "broken", False):
        return True
    is_open = getattr(conn, "open", True)  # PyMySQL: False once the socket is gone
    return is_open is False


def closed_by_server(conn: Any) -> bool:
    """An idle connection is silent; a readable one has been closed by the server (or is about to be)."""
    if broken(conn):
        return True
    fd = fileno(conn)
    if fd < 0:
        return False
    poller = _poll()
    poller.register(fd, _POLL_MASK)
    return bool(poller.poll(0))


_databases: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _forget_parents_connections() -> None:
    for database in list(_databases):
        database.forget_parents_connections()


os.register_at_fork(after_in_child=_forget_parents_connections)


class Resilient:
    """What microkit adds to a peewee pool (a mixin before the Pooled*Database class)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inherited: list[Any] = []
        self.owners: dict[int, weakref.ref] = {}  # checked-out connection -> the greenlet holding it
        self.down_since: float | None = None
        _databases.add(self)

    def forget_parents_connections(self) -> None:
        """In a fresh child: start with an empty pool, fresh locks and no connection in any thread or greenlet.
        The parent's connections are kept, unused, with /dev/null in place of their sockets: when one is
        finally released, the goodbye its driver sends (psycopg2 sends one) must not end the parent's session."""
        inherited = [conn for _, _, conn in self._connections]
        inherited += [entry.connection for entry in self._in_use.values()]
        for conn in inherited:
            fd = fileno(conn)
            if fd >= 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, fd)
                os.close(devnull)
        self.inherited.extend(inherited)
        self._connections, self._in_use, self.owners = [], {}, {}
        self._pool_lock = threading.RLock()
        self._pool_available = threading.Condition(self._pool_lock)
        self._lock = threading.RLock() if self.thread_safe else self._lock
        self._state = type(self._state)()

    def _connect(self) -> Any:
        """Check a connection out for the current greenlet (or thread). When the pool is full, first take
        back the connections of greenlets that ended without checking theirs in (a killed request): a leak
        must not leave the pool exhausted for good."""
        try:
            conn = super()._connect()
        except MaxConnectionsExceeded:
            if not self.reclaim_abandoned():
                raise
            conn = super()._connect()
        self.owners[self.conn_key(conn)] = weakref.ref(greenlet.getcurrent())
        return conn

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        self.owners.pop(self.conn_key(conn), None)
        super()._close(conn, close_conn)

    def reclaim_abandoned(self) -> int:
        """Close the checked-out connections whose greenlet has ended; returns how many."""
        reclaimed = 0
        with self._pool_lock:
            for key, entry in list(self._in_use.items()):
                owner = self.owners.get(key)
                holder = owner() if owner is not None else None
                if owner is not None and (holder is None or holder.dead):
                    del self._in_use[key]
                    self.owners.pop(key, None)
                    self._close_raw(entry.connection)
                    reclaimed += 1
        return reclaimed

    def _is_closed(self, conn: Any) -> bool:
        return closed_by_server(conn)

    def _can_reuse(self, conn: Any) -> bool:
        return not broken(conn) and super()._can_reuse(conn)

    def connect(self, reuse_if_open: bool = False) -> bool:
        try:
            opened = super().connect(reuse_if_open)
        except DatabaseUnavailable:
            raise
        except (OperationalError, InterfaceError, MaxConnectionsExceeded) as exc:
            raise self.unavailable(exc) from exc
        if self.down_since is not None:
            log.warning("database %s is reachable again", self.database)
            self.down_since = None
        return opened

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        try:
            return super().execute_sql(sql, params)
        except DatabaseUnavailable:
            raise
        except (OperationalError, InterfaceError) as exc:
            self.drop_if_broken()
            raise self.unavailable(exc) from exc

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """The error to raise, logged once per outage (each request of an outage would repeat it)."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("database %s unavailable (answering 503 until it is back): %s", self.database, reason)
        return DatabaseUnavailable(reason)

    def rollback(self) -> None:
        """A lost connection has nothing to roll back (the server did it): do not replace the real error."""
        conn = self._state.conn
        if conn is not None and broken(conn):
            return
        super().rollback()

    def drop_if_broken(self) -> None:
        """Take this greenlet's connection out of the pool once the driver knows it is lost. It stays this
        greenlet's until `close()`, so an open transaction unwinds normally."""
        conn = self._state.conn
        if conn is None or not broken(conn):
            return
        with self._pool_lock:
            self._in_use.pop(self.conn_key(conn), None)
            self._pool_available.notify()
        self._close_raw(conn)


class PostgresqlDatabase(Resilient, PooledPostgresqlDatabase):
    pass


class MySQLDatabase(Resilient, PooledMySQLDatabase):
    SERVER_STATUS_IN_TRANS = 1

    def _can_reuse(self, conn: Any) -> bool:
        """peewee's MySQL pool rolls back on every check-in (a round trip); PyMySQL knows from the server's
        last status flags whether a transaction is open, so roll back only then."""
        status = getattr(conn, "server_status", None)
        if broken(conn) or status is None:
            return super()._can_reuse(conn)
        if status & self.SERVER_STATUS_IN_TRANS:
            try:
                conn.rollback()
            except Exception:
                return False
        return True


class SqliteFileDatabase(Resilient, PooledSqliteDatabase):
    """A pooled SQLite file. A pooled connection may be checked out by another thread than the one that
    opened it (a threaded server, the in-process test services), one at a time, so sqlite3's same-thread
    check is off, as peewee's pool documentation advises."""

    def __init__(self, database: str, **kwargs: Any) -> None:
        kwargs.setdefault("check_same_thread", False)
        super().__init__(database, **kwargs)


SCHEMES: dict[str, type] = {
    "postgresql": PostgresqlDatabase,
    "postgres": PostgresqlDatabase,
    "mysql": MySQLDatabase,
    "sqlite": SqliteFileDatabase,
}


def connect(url: str, **options: Any) -> Database:
    """The pooled database a URL names. Pool settings (`max_connections`, `stale_timeout`, `timeout`) and
    driver parameters come from the URL's query string or `options`. An unknown scheme or a URL without a
    database name raises ValueError naming the URL."""
    scheme = urlparse(url).scheme.removesuffix("+pool")  # playhouse's pooled spelling: pooled anyway
    database_class = SCHEMES.get(scheme)
    if database_class is None:
        raise ValueError(f"{url!r}: unknown database scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    params = parse(url)
    if scheme == "sqlite" and params["database"] == ":memory:":
        return SqliteDatabase(":memory:")  # a database per connection: a pool would split it
    if not params.get("database"):
        raise ValueError(f"{url!r} names no database ({scheme}://host/name)")
    params.setdefault("max_connections", MAX_CONNECTIONS)
    params.setdefault("stale_timeout", STALE_TIMEOUT)
    params.setdefault("timeout", WAIT_TIMEOUT)
    params.update(options)
    _cooperative_if_patched()
    return database_class(**params)


def _cooperative_if_patched() -> None:
    """Outside a microkit worker (gunicorn -k gevent, a script), make the drivers cooperative all the same."""
    monkey = sys.modules.get("gevent.monkey")  # not patched (and not to be imported) when gevent is not loaded
    if monkey is not None and monkey.is_module_patched("socket"):
        from .supervisor import drivers
        drivers.install()
