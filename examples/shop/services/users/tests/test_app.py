"""The users service's endpoints, called in-process through its WSGI app.

Runs on a throwaway SQLite file, or on the database DATABASE_URL names (its table is dropped after
each test, so point it at a database meant for tests).
"""

import io
import json
import os
from wsgiref.util import setup_testing_defaults

import pytest

from services.users import models
from services.users.app import ROUTE, app


@pytest.fixture(autouse=True)
def database(tmp_path):
    models.init_db(os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path / 'test.db'}")
    with models.db.connection_context():
        models.db.drop_tables(models.MODELS, safe=True)
        models.db.create_tables(models.MODELS)
    yield
    with models.db.connection_context():
        models.db.drop_tables(models.MODELS, safe=True)


def call(method, path, body=None):
    """One request through the WSGI app: returns (status code, headers, parsed JSON or None)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_LENGTH": str(len(raw)),
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(raw)}
    setup_testing_defaults(environ)
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = int(status.split()[0]), dict(headers)

    chunks = app(environ, start_response)
    try:
        data = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return started["status"], started["headers"], json.loads(data) if data else None


def test_healthz():
    assert call("GET", "/healthz")[0] == 200


def test_create_returns_201_with_id():
    status, headers, item = call("POST", ROUTE + "/", {"name": "first"})
    assert status == 201
    assert item["name"] == "first" and isinstance(item["id"], int) and item["created_at"]
    assert headers["Location"] == f"{ROUTE}/{item['id']}"


def test_list_and_read():
    ids = [call("POST", ROUTE, {"name": n})[2]["id"] for n in ("a", "b")]
    status, _, items = call("GET", ROUTE + "/")
    assert status == 200 and [i["id"] for i in items] == ids
    status, _, item = call("GET", f"{ROUTE}/{ids[1]}")
    assert status == 200 and item["name"] == "b"


def test_put_patch_delete():
    item_id = call("POST", ROUTE, {"name": "old"})[2]["id"]
    assert call("PUT", f"{ROUTE}/{item_id}", {"name": "new"})[2]["name"] == "new"
    assert call("PATCH", f"{ROUTE}/{item_id}", {})[2]["name"] == "new"
    assert call("PATCH", f"{ROUTE}/{item_id}", {"name": "newer"})[2]["name"] == "newer"
    assert call("DELETE", f"{ROUTE}/{item_id}")[0] == 204
    assert call("GET", f"{ROUTE}/{item_id}")[0] == 404


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", {}, {"name": ""}, {"name": 5}])
def test_bad_body_is_400_json(body):
    status, _, error = call("POST", ROUTE, body)
    assert status == 400 and "error" in error
    assert call("GET", ROUTE)[2] == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_absent_is_404_json(method):
    status, _, error = call(method, f"{ROUTE}/999999", {"name": "x"})
    assert status == 404 and "error" in error


def test_wrong_method_is_405():
    status, headers, error = call("DELETE", ROUTE)
    assert status == 405 and "error" in error and "POST" in headers["Allow"]
