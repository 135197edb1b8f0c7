"""The {{service}} service's endpoints, called in-process through its WSGI app with WebTest.

Runs on a throwaway SQLite file, or on the database DATABASE_URL names (see conftest.py).
"""

import pytest
import webtest

from services.{{service}} import models
from services.{{service}}.app import create_app

ROUTE = "/{{service}}"  # any prefix: microkit passes the one in microkit.toml as MICROKIT_ROUTE


@pytest.fixture(autouse=True)
def database():
    with models.db.connection_context():
        models.db.drop_tables(models.MODELS, safe=True)
    models.create_tables()
    yield
    with models.db.connection_context():
        models.db.drop_tables(models.MODELS, safe=True)


@pytest.fixture
def client():
    return webtest.TestApp(create_app(ROUTE))


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_create_returns_201_with_id(client):
    response = client.post_json(ROUTE + "/", {"name": "first"}, status=201)
    item = response.json
    assert item["name"] == "first" and isinstance(item["id"], int) and item["created_at"]
    assert response.headers["Location"].endswith(f"{ROUTE}/{item['id']}")


def test_list_and_read(client):
    ids = [client.post_json(ROUTE, {"name": n}, status=201).json["id"] for n in ("a", "b")]
    assert [i["id"] for i in client.get(ROUTE + "/").json] == ids
    assert client.get(f"{ROUTE}/{ids[1]}").json["name"] == "b"


def test_put_patch_delete(client):
    item_id = client.post_json(ROUTE, {"name": "old"}).json["id"]
    assert client.put_json(f"{ROUTE}/{item_id}", {"name": "new"}).json["name"] == "new"
    assert client.patch_json(f"{ROUTE}/{item_id}", {}).json["name"] == "new"
    assert client.patch_json(f"{ROUTE}/{item_id}", {"name": "newer"}).json["name"] == "newer"
    client.delete(f"{ROUTE}/{item_id}", status=204)
    client.get(f"{ROUTE}/{item_id}", status=404)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"{}", b'{"name": ""}', b'{"name": 5}'])
def test_bad_body_is_400_json(client, body):
    response = client.post(ROUTE, body, content_type="application/json", status=400)
    assert "error" in response.json
    assert client.get(ROUTE).json == []


@pytest.mark.parametrize("method", ["get", "put_json", "patch_json", "delete_json"])
def test_absent_is_404_json(client, method):
    response = getattr(client, method)(f"{ROUTE}/999999", *([{"name": "x"}] if method != "get" else []), status=404)
    assert "error" in response.json


def test_wrong_method_is_405(client):
    response = client.delete(ROUTE, status=405)
    assert "error" in response.json and "POST" in response.headers["Allow"]


def test_the_resource_follows_the_route_it_is_given():
    elsewhere = webtest.TestApp(create_app("/renamed"))
    elsewhere.post_json("/renamed/", {"name": "moved"}, status=201)
    assert [i["name"] for i in elsewhere.get("/renamed").json] == ["moved"]
    elsewhere.get(ROUTE + "/", status=404)
