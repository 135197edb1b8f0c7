"""The orders service's endpoints, called in-process through its WSGI app.

Runs on a throwaway SQLite file, or on the database DATABASE_URL names (its table is dropped after
each test, so point it at a database meant for tests).
"""

import io
import json
import os
from wsgiref.util import setup_testing_defaults

import pytest

from microkit.client import Reply, ServiceUnavailable
from services.orders import app as orders_app
from services.orders import models
from services.orders.app import ROUTE, app


class FakeUsers:
    """Stands in for the users service behind the gateway: users 1 and 2 exist."""

    def __init__(self):
        self.down = False
        self.asked = []

    def get(self, path, request_id=None):
        self.asked.append((path, request_id))
        if self.down:
            raise ServiceUnavailable("gateway down")
        found = path in ("/users/1", "/users/2")
        return Reply(200 if found else 404, {}, b"{}")


@pytest.fixture(autouse=True)
def users(monkeypatch):
    fake = FakeUsers()
    monkeypatch.setattr(orders_app, "services", fake)
    return fake


@pytest.fixture(autouse=True)
def database(tmp_path):
    models.init_db(os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path / 'test.db'}")
    with models.db.connection_context():
        models.db.drop_tables(models.MODELS, safe=True)
        models.db.create_tables(models.MODELS)
    yield
    with models.db.connection_context():
        models.db.drop_tables(models.MODELS, safe=True)


def call(method, path, body=None, headers=()):
    """One request through the WSGI app: returns (status code, headers, parsed JSON or None)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_LENGTH": str(len(raw)),
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(raw),
               **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers}}
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


def test_create_checks_the_user_and_returns_201(users):
    status, headers, order = call("POST", ROUTE + "/", {"user_id": 1, "item": "book", "quantity": 2},
                                  headers=[("X-Request-Id", "r-1")])
    assert status == 201 and headers["Location"] == f"{ROUTE}/{order['id']}"
    assert (order["user_id"], order["item"], order["quantity"], order["status"]) == (1, "book", 2, "new")
    assert users.asked == [("/users/1", "r-1")], "the request id travels with the call"


def test_unknown_user_is_400_and_nothing_is_stored():
    status, _, error = call("POST", ROUTE, {"user_id": 9, "item": "book"})
    assert status == 400 and error["error"] == "user 9 does not exist"
    assert call("GET", ROUTE)[2] == []


def test_users_service_down_is_503(users):
    users.down = True
    status, _, error = call("POST", ROUTE, {"user_id": 1, "item": "book"})
    assert status == 503 and "users service unreachable" in error["error"]


def test_list_filters_by_user_and_reads_one():
    first = call("POST", ROUTE, {"user_id": 1, "item": "a"})[2]
    call("POST", ROUTE, {"user_id": 2, "item": "b"})
    assert [o["item"] for o in call("GET", ROUTE + "/")[2]] == ["a", "b"]
    assert [o["item"] for o in call("GET", ROUTE + "?user_id=2")[2]] == ["b"]
    assert call("GET", f"{ROUTE}/{first['id']}")[2]["item"] == "a"
    assert call("GET", ROUTE + "?user_id=x")[0] == 400


def test_patch_status_and_delete():
    order_id = call("POST", ROUTE, {"user_id": 1, "item": "a"})[2]["id"]
    assert call("PATCH", f"{ROUTE}/{order_id}", {"status": "paid"})[2]["status"] == "paid"
    assert call("PATCH", f"{ROUTE}/{order_id}", {"status": "lost"})[0] == 400
    assert call("DELETE", f"{ROUTE}/{order_id}")[0] == 204
    assert call("GET", f"{ROUTE}/{order_id}")[0] == 404


@pytest.mark.parametrize("body", [b"not json", b"[1]", {}, {"user_id": 1}, {"user_id": 0, "item": "a"},
                                  {"user_id": 1, "item": "a", "quantity": "2"}, {"user_id": True, "item": "a"}])
def test_bad_body_is_400_json(body):
    status, _, error = call("POST", ROUTE, body)
    assert status == 400 and "error" in error


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_absent_is_404_json(method):
    status, _, error = call(method, f"{ROUTE}/999999", {"status": "paid"})
    assert status == 404 and "error" in error


def test_wrong_method_is_405():
    status, headers, error = call("PUT", f"{ROUTE}/1", {})
    assert status == 405 and "error" in error
