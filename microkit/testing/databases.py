"""Per-test databases for peewee: a fresh SQLite file, or a database created on a PostgreSQL or MariaDB
server (named by a URL such as postgresql://user@host:5432/postgres) and dropped after the test."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

POSTGRES = ("postgres", "postgresql", "postgresext")
MYSQL = ("mysql",)


class DatabaseError(RuntimeError):
    """A per-test database could not be created."""


class TestDatabase:
    """One test's database: `url` (what DATABASE_URL gets) and `connect()` for a peewee Database on it."""

    __test__ = False

    def __init__(self, url: str, drop=None) -> None:
        self.url = url
        self._drop = drop

    def __repr__(self) -> str:
        return f"<TestDatabase {self.url}>"

    def connect(self):
        """A peewee Database for this URL (through playhouse.db_url), not yet connected."""
        from playhouse.db_url import connect

        return connect(self.url)

    def drop(self) -> None:
        if self._drop is not None:
            self._drop()
            self._drop = None


def sqlite(path: Path) -> TestDatabase:
    path.parent.mkdir(parents=True, exist_ok=True)
    return TestDatabase(f"sqlite:///{path}")


def on_server(server_url: str) -> TestDatabase:
    """Create a database with a unique name on the server `server_url` names; its path (if any) is the
    database to connect to for CREATE and DROP."""
    parts = urlsplit(server_url)
    kind = parts.scheme.split("+", 1)[0].lower()
    if kind == "sqlite":
        raise DatabaseError("an SQLite URL names one file: leave the server URL out for per-test SQLite files")
    if kind not in POSTGRES + MYSQL:
        raise DatabaseError(f"unknown database URL scheme {parts.scheme!r} in {redacted(server_url)} "
                            f"(known: postgresql://, mysql://, or none for SQLite files)")
    name = f"mkt_{uuid.uuid4().hex[:16]}"
    admin_db = unquote(parts.path.lstrip("/")) or ("postgres" if kind in POSTGRES else "")
    url = urlunsplit(parts._replace(path="/" + name))
    try:
        if kind in POSTGRES:
            _postgres(parts, admin_db, f'CREATE DATABASE "{name}"')
            drop = lambda: _postgres(parts, admin_db, f'DROP DATABASE IF EXISTS "{name}"', force=True)  # noqa: E731
        else:
            _mysql(parts, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            drop = lambda: _mysql(parts, f"DROP DATABASE IF EXISTS `{name}`")  # noqa: E731
    except ImportError as exc:
        raise DatabaseError(f"{kind} databases need a driver: pip install "
                            f"{'psycopg2-binary' if kind in POSTGRES else 'pymysql'} ({exc})") from None
    except Exception as exc:
        raise DatabaseError(f"cannot create a test database on {redacted(server_url)}: {exc}".strip()) from None
    return TestDatabase(url, drop)


def _postgres(parts, database: str, statement: str, force: bool = False) -> None:
    import psycopg2

    conn = psycopg2.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432, dbname=database,
                            user=unquote(parts.username) if parts.username else None,
                            password=unquote(parts.password) if parts.password else None, connect_timeout=10)
    try:
        conn.autocommit = True
        if force and conn.server_version >= 130000:
            statement += " WITH (FORCE)"
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


def _mysql(parts, statement: str) -> None:
    import pymysql

    conn = pymysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                           user=unquote(parts.username) if parts.username else "root",
                           password=unquote(parts.password) if parts.password else "", connect_timeout=10,
                           autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
