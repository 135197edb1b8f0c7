"""The {{service}} service's data: SQLAlchemy models in the service's own database.

DATABASE_URL picks the database: sqlite:///path, postgresql://... (psycopg2) or mysql://...
(PyMySQL, pure Python); without it, an SQLite file under the project's data/ folder
(MICROKIT_PROJECT_ROOT, which microkit sets; else the current folder). Each worker process has
its own pool of connections (QueuePool), made after the fork, checked before use (pre-ping) so a
connection the database closed is replaced instead of failing a request.
"""

import datetime
import os
import zlib
from pathlib import Path

from sqlalchemy import DateTime, Engine, String, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import QueuePool
from sqlalchemy.schema import CreateTable

PROJECT_ROOT = Path(os.environ.get("MICROKIT_PROJECT_ROOT") or Path.cwd())
DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_ROOT / 'data' / '{{service}}.db'}"
DRIVERS = {"postgresql": "postgresql+psycopg2", "postgres": "postgresql+psycopg2", "mysql": "mysql+pymysql"}
SCHEMA_LOCK = zlib.crc32(b"microkit-schema:{{service}}")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class {{model}}(Base):
    __tablename__ = "{{service}}"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "created_at": self.created_at.isoformat() + "Z"}


def make_engine(url: str | None = None) -> Engine:
    """A pooled engine for DATABASE_URL; connections are opened when a request first needs one."""
    parsed = make_url(url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    parsed = parsed.set(drivername=DRIVERS.get(parsed.drivername, parsed.drivername))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql":
        _cooperative_psycopg2()
    return create_engine(parsed, poolclass=QueuePool, pool_size=5, max_overflow=10, pool_timeout=10,
                         pool_pre_ping=True, pool_recycle=3600)


def create_tables(engine: Engine) -> None:
    """Create missing tables when a worker starts. Workers starting at once take turns on a lock
    (concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL); elsewhere IF NOT EXISTS is enough."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        for table in Base.metadata.sorted_tables:
            connection.execute(CreateTable(table, if_not_exists=True))


def _cooperative_psycopg2() -> None:
    """psycopg2 is a C extension that gevent's monkey-patching cannot reach: without a wait callback,
    one query blocks the whole worker. Install one (psycogreen's) when gevent is patched and none is set."""
    try:
        import gevent.monkey
        import psycopg2.extensions
    except ImportError:
        return
    if not gevent.monkey.is_module_patched("socket") or psycopg2.extensions.get_wait_callback() is not None:
        return
    from gevent.socket import wait_read, wait_write

    def wait(connection, timeout=None):
        while True:
            state = connection.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                wait_read(connection.fileno(), timeout=timeout)
            elif state == psycopg2.extensions.POLL_WRITE:
                wait_write(connection.fileno(), timeout=timeout)
            else:
                raise psycopg2.OperationalError(f"bad state from poll: {state}")

    psycopg2.extensions.set_wait_callback(wait)
