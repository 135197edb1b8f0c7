"""Shared fixtures: real servers chosen by URL, a fresh database per test.

Servers default to the local ones (override with MICROKIT_TEST_POSTGRES / _MYSQL / _REDIS). When one
is missing, a test that needs it is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from support.servers import MYSQL, POSTGRES, PrivatePostgres, PrivateRedis, server_missing

pytest_plugins = ["pytester"]  # the plugin tests run pytest inside pytest


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def postgres_url():
    """A PostgreSQL database of this test's own, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"mk_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(POSTGRES, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        server_missing(f"PostgreSQL at {POSTGRES}", exc)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(POSTGRES, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def mysql_url():
    """A MariaDB/MySQL database of this test's own, dropped afterwards."""
    pymysql = pytest.importorskip("pymysql")
    parts = urlparse(MYSQL)
    name = f"mk_{uuid.uuid4().hex[:12]}"
    try:
        admin = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                                password=parts.password or "", connect_timeout=3, autocommit=True)
    except pymysql.err.OperationalError as exc:
        server_missing(f"MariaDB at {MYSQL}", exc)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield _with_database(MYSQL, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def private_redis():
    """A redis-server of this test's own (see helpers.PrivateRedis), killed afterwards."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own (see helpers.PrivatePostgres), running; stopped and removed
    afterwards. Its folder is directly under the temp dir: pytest's own are closed to the postgres user."""
    pytest.importorskip("psycopg2")
    folder = Path(tempfile.mkdtemp(prefix="microkit-pg-"))
    try:
        server = PrivatePostgres(folder)
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
