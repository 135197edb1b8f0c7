"""Test settings applied before the app is imported: a throwaway SQLite file, unless DATABASE_URL
names a database meant for tests (its tables are dropped after each test)."""

import os
import shutil
import tempfile

import pytest

_folder = tempfile.mkdtemp(prefix="{{service}}-tests-")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{_folder}/test.db")


@pytest.fixture(scope="session", autouse=True)
def _throwaway_folder():
    yield
    shutil.rmtree(_folder, ignore_errors=True)
