"""The migration store's contract, on both backends: the shared Redis (a namespace of the test's own,
deleted afterwards) and the embedded SQLite file."""

from __future__ import annotations

import uuid

import pytest

from microkit.gateway.migration_store import connect_migration_store
from support.servers import REDIS_URL, delete_namespace, require_redis


@pytest.fixture(params=["redis", "embedded"])
def store(request, tmp_path):
    namespace = f"mkmig{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        require_redis(REDIS_URL)
    url = REDIS_URL if request.param == "redis" else None
    made = connect_migration_store(url, project_root=tmp_path, namespace=namespace)
    other = connect_migration_store(url, project_root=tmp_path, namespace=namespace + "x")
    yield made, other
    made.close()
    other.close()
    if url:
        delete_namespace(url, namespace)
        delete_namespace(url, namespace + "x")


def test_splits_are_set_read_and_reset(store):
    mine, other = store
    assert mine.splits() == {}
    mine.set_split("users", 25)
    mine.set_split("orders", 0)
    assert {k: v["split"] for k, v in mine.splits().items()} == {"users": 25, "orders": 0}
    mine.set_split("users", None)
    assert list(mine.splits()) == ["orders"]
    assert other.splits() == {}


def test_counts_add_up_and_only_the_last_mismatches_are_kept(store):
    mine, other = store
    for batch in range(3):
        mine.add({"users": {"compared": 2, "mismatched": 1}},
                 {"users": [{"n": batch * 2}, {"n": batch * 2 + 1}]}, {"users": {"$.at"}}, {"users": 4})
    report = mine.report("users")
    assert report["counts"] == {"compared": 6, "mismatched": 3, "dropped": 0, "failed": 0}
    assert [m["n"] for m in report["mismatches"]] == [5, 4, 3, 2]
    assert report["noise"] == ["$.at"]
    assert other.report("users")["counts"]["compared"] == 0
    mine.clear("users")
    assert mine.report("users") == {"counts": {"compared": 0, "mismatched": 0, "dropped": 0, "failed": 0},
                                    "mismatches": [], "noise": []}
