"""The {{service}} service's endpoints, served in-process by microkit.testing's `service` fixture (the
pytest plugin installed with microkit) and called over HTTP with its JSON client.

Every test gets a database of its own: an SQLite file, or one created on the PostgreSQL or MariaDB
server that `pytest --microkit-database postgresql://user@host/postgres` names (dropped after the test).
"""

import pytest

ROUTE = "/{{service}}"  # the route microkit.toml gives it (microkit passes it as MICROKIT_ROUTE)


@pytest.fixture
def client(service):
    return service("{{service}}")


def test_healthz(client):
    assert client.get("/healthz", expect=200).json() == {"status": "ok"}


def test_create_returns_201_with_id(client):
    response = client.post(ROUTE + "/", json={"name": "first"}, expect=201)
    item = response.json()
    assert item["name"] == "first" and isinstance(item["id"], int) and item["created_at"]
    assert response.headers["Location"].endswith(f"{ROUTE}/{item['id']}")


def test_list_and_read(client):
    ids = [client.post(ROUTE, json={"name": n}, expect=201).json()["id"] for n in ("a", "b")]
    assert [i["id"] for i in client.get(ROUTE + "/", expect=200).json()] == ids
    assert client.get(f"{ROUTE}/{ids[1]}", expect=200).json()["name"] == "b"


def test_put_patch_delete(client):
    item_id = client.post(ROUTE, json={"name": "old"}, expect=201).json()["id"]
    assert client.put(f"{ROUTE}/{item_id}", json={"name": "new"}, expect=200).json()["name"] == "new"
    assert client.patch(f"{ROUTE}/{item_id}", json={}, expect=200).json()["name"] == "new"
    assert client.patch(f"{ROUTE}/{item_id}", json={"name": "newer"}, expect=200).json()["name"] == "newer"
    client.delete(f"{ROUTE}/{item_id}", expect=204)
    client.get(f"{ROUTE}/{item_id}", expect=404)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"{}", b'{"name": ""}', b'{"name": 5}'])
def test_bad_body_is_400_json(client, body):
    response = client.post(ROUTE, data=body, headers={"Content-Type": "application/json"}, expect=400)
    assert "error" in response.json()
    assert client.get(ROUTE, expect=200).json() == []


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_absent_is_404_json(client, method):
    body = {} if method == "get" else {"json": {"name": "x"}}
    response = getattr(client, method)(f"{ROUTE}/999999", **body, expect=404)
    assert "error" in response.json()


def test_wrong_method_is_405(client):
    response = client.delete(ROUTE, expect=405)
    assert "error" in response.json() and "POST" in response.headers["Allow"]


def test_the_resource_follows_the_route_it_is_given(service):
    elsewhere = service("{{service}}", env={"MICROKIT_ROUTE": "/renamed"})
    elsewhere.post("/renamed/", json={"name": "moved"}, expect=201)
    assert [i["name"] for i in elsewhere.get("/renamed", expect=200).json()] == ["moved"]
    elsewhere.get(ROUTE + "/", expect=404)
