"""The users service's data: one peewee model, in the service's own database.

DATABASE_URL picks the database (sqlite:///..., postgresql://..., mysql://...); without it the
service keeps an SQLite file under the project's data/ folder. Connections are pooled per worker
process (microkit.db): a request takes an idle one instead of connecting, and while the database is
down or restarting requests get 503 JSON, then work again by themselves.
"""

import datetime
import os
from pathlib import Path

from peewee import CharField, DatabaseProxy, DateTimeField, Model, SqliteDatabase

from microkit import db as pooled

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_ROOT / 'data' / 'users.db'}"

db = DatabaseProxy()


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class User(Model):
    name = CharField(max_length=255)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        database = db
        table_name = "users"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "created_at": self.created_at.isoformat() + "Z"}


MODELS = [User]


def init_db(url: str | None = None) -> None:
    """Point the models at a pooled database. No connection is opened until a request needs one."""
    db.initialize(pooled.connect(url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL))


def create_tables() -> None:
    """Create missing tables (and an SQLite file's folder): run on the first request of a process."""
    if isinstance(db.obj, SqliteDatabase) and db.obj.database != ":memory:":
        Path(db.obj.database).parent.mkdir(parents=True, exist_ok=True)
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
