"""microkit.storage: connections by URL, per process and fork-safe, one 'store unavailable' error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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



def _open_shared(path: str, barrier) -> str:
    barrier.wait()
    try:
        db = storage.sqlite(Path(path), "CREATE TABLE IF NOT EXISTS a (k TEXT PRIMARY KEY); CREATE TABLE IF NOT EXISTS b (k TEXT);")
        db.execute("INSERT INTO a VALUES (?)", (str(os.getpid()),))
        return "ok"
    except Exception as exc:  # what the test reports
        return repr(exc)


def test_processes_opening_one_new_sqlite_file_at_once_all_get_it(tmp_path):
    """Switching a new file to WAL needs it to itself, and SQLite answers "database is locked" at once
    to the others (no busy handler): 8 processes starting together (an `up` whose workers all open the
    embedded registry) must each get the file, not that error (7 of 240 opens failed before)."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    failures = []
    with fork.Manager() as manager, fork.Pool(8) as pool:
        barrier = manager.Barrier(8)
        for attempt in range(30):
            results = pool.starmap(_open_shared, [(str(tmp_path / f"r{attempt}.db"), barrier)] * 8)
            failures += [result for result in results if result != "ok"]
    assert failures == []
