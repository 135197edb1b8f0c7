"""microkit.storage: connections by URL, per process and fork-safe, one 'store unavailable' error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.servers import free_port
from microkit import storage
from microkit.errors import ConfigError
from microkit.registry import RegistryUnavailable


def test_importing_storage_and_registry_loads_neither_redis_nor_peewee():
    code = ("import sys, microkit.storage, microkit.registry; "
            "print(sorted(m for m in ('redis', 'peewee') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_registry_unavailable_is_the_one_store_error():
    assert RegistryUnavailable is storage.StoreUnavailable


def test_unknown_scheme_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown events URL 'kafka://u:\*\*\*@h/': known schemes are redis://"):
        storage.backend_for("kafka://u:secret@h/", {"redis": 1}, what="events", default="none")
    with pytest.raises(ConfigError, match="not a Redis URL"):
        storage.redis_client("amqp://h/")


def test_a_dead_redis_is_store_unavailable_naming_what():
    client = storage.redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    with pytest.raises(storage.StoreUnavailable, match=r"^events redis://127\.0\.0\.1:\d+/0 unavailable: "):
        with storage.unavailable(f"events redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"):
            client.ping()


def test_per_process_connection_is_made_again_after_fork():
    made = []
    holder = storage.PerProcess(lambda: made.append(os.getpid()) or object())
    first = holder.get()
    assert holder.get() is first
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child = holder.get()
        os.write(write, b"new" if child is not first and holder.get() is child else b"same")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 8)
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert holder.drop() is first and holder.get() is not first and made == [os.getpid()] * 2


def test_sqlite_is_shared_in_wal_mode(tmp_path):
    db = storage.sqlite(tmp_path / "sub" / "x.db", "CREATE TABLE IF NOT EXISTS t (v INTEGER);")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("INSERT INTO t VALUES (1)")
    assert storage.sqlite(tmp_path / "sub" / "x.db").execute("SELECT v FROM t").fetchall() == [(1,)]
