"""The users service's endpoints, served in-process by microkit.testing's `service` fixture and called
over HTTP with its JSON client; each test on a database of its own (an SQLite file, or one created on
the server `--microkit-database` names)."""

import pytest

ROUTE = "/users"


@pytest.fixture
def users(service):
    return service("users")


def test_healthz(users):
    users.get("/healthz", expect=200)


def test_create_returns_201_with_id(users):
    response = users.post(ROUTE + "/", json={"name": "first"}, expect=201)
    item = response.json()
    assert item["name"] == "first" and isinstance(item["id"], int) and item["created_at"]
    assert response.headers["Location"] == f"{ROUTE}/{item['id']}"


def test_list_and_read(users):
    ids = [users.post(ROUTE, json={"name": n}, expect=201).json()["id"] for n in ("a", "b")]
    assert [i["id"] for i in users.get(ROUTE + "/", expect=200).json()] == ids
    assert users.get(f"{ROUTE}/{ids[1]}", expect=200).json()["name"] == "b"


def test_put_patch_delete(users):
    item_id = users.post(ROUTE, json={"name": "old"}, expect=201).json()["id"]
    assert users.put(f"{ROUTE}/{item_id}", json={"name": "new"}, expect=200).json()["name"] == "new"
    assert users.patch(f"{ROUTE}/{item_id}", json={}, expect=200).json()["name"] == "new"
    assert users.patch(f"{ROUTE}/{item_id}", json={"name": "newer"}, expect=200).json()["name"] == "newer"
    users.delete(f"{ROUTE}/{item_id}", expect=204)
    users.get(f"{ROUTE}/{item_id}", expect=404)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"{}", b'{"name": ""}', b'{"name": 5}'])
def test_bad_body_is_400_json(users, body):
    error = users.post(ROUTE, data=body, headers={"Content-Type": "application/json"}, expect=400).json()
    assert "error" in error
    assert users.get(ROUTE, expect=200).json() == []


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_absent_is_404_json(users, method):
    assert "error" in getattr(users, method)(f"{ROUTE}/999999", json={"name": "x"}, expect=404).json()


def test_wrong_method_is_405(users):
    response = users.delete(ROUTE, expect=405)
    assert "error" in response.json() and "POST" in response.headers["Allow"]
