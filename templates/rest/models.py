"""The {{service}} service's data: one peewee model, in the service's own database.

DATABASE_URL picks the database (sqlite:///..., postgresql://..., mysql://...); without it the
service keeps an SQLite file under the project's data/ folder (MICROKIT_PROJECT_ROOT, which microkit
sets; else the current folder). Connections are pooled per worker process (microkit.db): a request
takes an idle one instead of connecting, and while the database is down or restarting requests get
503 JSON, then work again by themselves.
"""

import datetime
import os
import zlib
from pathlib import Path

from peewee import CharField, DatabaseProxy, DateTimeField, Model, MySQLDatabase, PostgresqlDatabase, SqliteDatabase

from microkit import db as pooled

PROJECT_ROOT = Path(os.environ.get("MICROKIT_PROJECT_ROOT") or Path.cwd())
DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_ROOT / 'data' / '{{service}}.db'}"

db = DatabaseProxy()


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class {{model}}(Model):
    name = CharField(max_length=255)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        database = db
        table_name = "{{service}}"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "created_at": self.created_at.isoformat() + "Z"}


MODELS = [{{model}}]


def init_db(url: str | None = None) -> None:
    """Point the models at a pooled database. No connection is opened until a request needs one."""
    db.initialize(pooled.connect(url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL))


def create_tables() -> None:
    """Create missing tables (and an SQLite file's folder) when a worker starts. Workers that start at
    once take turns on a database lock: concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL."""
    if isinstance(db.obj, SqliteDatabase) and db.obj.database != ":memory:":
        Path(db.obj.database).parent.mkdir(parents=True, exist_ok=True)
    lock = zlib.crc32(b"microkit-schema:{{service}}")
    with db.connection_context():
        if isinstance(db.obj, PostgresqlDatabase):
            with db.atomic():  # PostgreSQL DDL is transactional: the lock is held until it commits
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (lock,))
                db.create_tables(MODELS, safe=True)
        elif isinstance(db.obj, MySQLDatabase):
            db.execute_sql("SELECT GET_LOCK(%s, 60)", (f"microkit-schema:{lock}",))
            try:
                db.create_tables(MODELS, safe=True)
            finally:
                db.execute_sql("SELECT RELEASE_LOCK(%s)", (f"microkit-schema:{lock}",))
        else:
            with db.atomic("IMMEDIATE"):  # SQLite: a write lock on the file from the start
                db.create_tables(MODELS, safe=True)
