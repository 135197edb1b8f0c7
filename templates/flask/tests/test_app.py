"""The {{service}} service's endpoints, in-process with Flask's test client.

Runs on a throwaway SQLite file, or on the database DATABASE_URL names (see conftest.py).
"""

import pytest

from services.{{service}}.app import create_app
from services.{{service}}.models import Base, create_tables

ROUTE = "/{{service}}"  # any prefix: microkit passes the one in microkit.toml as MICROKIT_ROUTE


@pytest.fixture
def app():
    app = create_app(ROUTE)
    engine = app.extensions["{{service}}.engine"]
    Base.metadata.drop_all(engine)
    create_tables(engine)
    yield app
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_create_returns_201_with_id(client):
    response = client.post(ROUTE + "/", json={"name": "first"})
    assert response.status_code == 201
    item = response.json
    assert item["name"] == "first" and isinstance(item["id"], int) and item["created_at"]
    assert response.headers["Location"].endswith(f"{ROUTE}/{item['id']}")


def test_list_and_read(client):
    ids = [client.post(ROUTE, json={"name": n}).json["id"] for n in ("a", "b")]
    assert [i["id"] for i in client.get(ROUTE + "/").json] == ids
    assert client.get(f"{ROUTE}/{ids[1]}").json["name"] == "b"


def test_put_patch_delete(client):
    item_id = client.post(ROUTE, json={"name": "old"}).json["id"]
    assert client.put(f"{ROUTE}/{item_id}", json={"name": "new"}).json["name"] == "new"
    assert client.patch(f"{ROUTE}/{item_id}", json={}).json["name"] == "new"
    assert client.patch(f"{ROUTE}/{item_id}", json={"name": "newer"}).json["name"] == "newer"
    assert client.delete(f"{ROUTE}/{item_id}").status_code == 204
    assert client.get(f"{ROUTE}/{item_id}").status_code == 404


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"{}", b'{"name": ""}', b'{"name": 5}'])
def test_bad_body_is_400_json(client, body):
    response = client.post(ROUTE, data=body, content_type="application/json")
    assert response.status_code == 400 and "error" in response.json
    assert client.get(ROUTE).json == []


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_absent_is_404_json(client, method):
    response = getattr(client, method)(f"{ROUTE}/999999", json={"name": "x"})
    assert response.status_code == 404 and "error" in response.json


def test_wrong_method_is_405(client):
    response = client.delete(ROUTE)
    assert response.status_code == 405 and "error" in response.json and "POST" in response.headers["Allow"]


def test_the_resource_follows_the_route_it_is_given(app):
    client = create_app("/renamed").test_client()
    assert client.post("/renamed/", json={"name": "moved"}).status_code == 201
    assert [i["name"] for i in client.get("/renamed").json] == ["moved"]
    assert client.get(ROUTE + "/").status_code == 404


def test_pooled_connections_are_reused_and_checked(app, client):
    engine = app.extensions["{{service}}.engine"]
    for _ in range(5):
        client.get(ROUTE)
    assert engine.pool.checkedout() == 0, "every request gave its connection back"
    assert engine.pool.size() >= 1 and engine.pool._pre_ping


def test_an_unreachable_database_is_503_json(app, client):
    from sqlalchemy import create_engine

    app.extensions["{{service}}.engine"] = create_engine("sqlite:////nonexistent-folder/{{service}}.db")
    response = client.get(ROUTE)
    assert response.status_code == 503 and response.json == {"error": "database unavailable"}
