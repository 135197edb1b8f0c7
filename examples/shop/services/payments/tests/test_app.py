"""The payments service's endpoints, called in-process through its WSGI app.

Runs on a throwaway SQLite file, or on the database DATABASE_URL names (its table is dropped after
each test, so point it at a database meant for tests).
"""

import io
import json
import os
import socket
from wsgiref.util import setup_testing_defaults

import pytest

from microkit import events
from microkit.client import Reply, ServiceUnavailable
from microkit.events.settings import Settings
from services.payments import app as payments_app
from services.payments import models
from services.payments.app import ROUTE, app


class FakeOrders:
    """Stands in for the orders service behind the gateway: orders 1 and 2 exist, unpaid."""

    def __init__(self):
        self.orders = {1: "new", 2: "new"}
        self.down = False
        self.calls = []

    def request(self, method, path, body=None, request_id=None):
        self.calls.append((method, path, body))
        if self.down:
            raise ServiceUnavailable("gateway down")
        order_id = int(path.rsplit("/", 1)[1])
        if order_id not in self.orders:
            return Reply(404, {}, b'{"error": "not found"}')
        return Reply(200, {}, json.dumps({"id": order_id, "status": self.orders[order_id]}).encode())


@pytest.fixture(autouse=True)
def orders(monkeypatch):
    fake = FakeOrders()
    monkeypatch.setattr(payments_app, "services", fake)
    return fake


@pytest.fixture(autouse=True)
def published(tmp_path):
    """Events go to a real embedded store in tmp_path; `published()` returns those published since the last call."""
    events.configure(Settings(url=f"sqlite:///{tmp_path / 'events.db'}", namespace="test", source="payments"))
    store = events.backend().store()
    position: dict = {}
    store.tail(None, position, 0)

    def read():
        return [events.Event.from_json(entry.body) for entry in store.tail(None, position, 0.01)]
    yield read
    events.backend().close()


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


def test_paying_an_order_publishes_payments_completed(published):
    status, headers, payment = call("POST", ROUTE + "/", {"order_id": 1, "amount_cents": 1250})
    assert status == 201 and headers["Location"] == f"{ROUTE}/{payment['id']}"
    assert (payment["order_id"], payment["amount_cents"]) == (1, 1250)
    [event] = published()
    assert (event.type, event.source) == ("payments.completed", "payments")
    assert event.payload == {"order_id": 1, "payment_id": payment["id"], "amount_cents": 1250}
    assert call("GET", f"{ROUTE}/{payment['id']}")[2] == payment
    assert [p["id"] for p in call("GET", ROUTE)[2]] == [payment["id"]]


def test_an_order_is_paid_once():
    assert call("POST", ROUTE, {"order_id": 1, "amount_cents": 100})[0] == 201
    status, _, error = call("POST", ROUTE, {"order_id": 1, "amount_cents": 100})
    assert status == 409 and error["error"] == "order 1 is already paid"


def test_unknown_order_is_400():
    status, _, error = call("POST", ROUTE, {"order_id": 7, "amount_cents": 100})
    assert status == 400 and error["error"] == "order 7 does not exist"


def test_orders_down_is_503_and_an_unpublished_payment_is_removed(orders):
    orders.down = True
    assert call("POST", ROUTE, {"order_id": 1, "amount_cents": 100})[0] == 503
    orders.down = False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there: the events store is down
    events.configure(Settings(url=f"redis://127.0.0.1:{port}/0", namespace="test", source="payments",
                              publish_timeout=0.2))
    status, _, error = call("POST", ROUTE, {"order_id": 2, "amount_cents": 100})
    assert status == 503 and "cannot publish payments.completed" in error["error"]
    assert call("GET", ROUTE)[2] == []


@pytest.mark.parametrize("body", [b"not json", b"[1]", {}, {"order_id": 1}, {"order_id": 1, "amount_cents": 0},
                                  {"order_id": "1", "amount_cents": 5}])
def test_bad_body_is_400_json(body):
    status, _, error = call("POST", ROUTE, body)
    assert status == 400 and "error" in error


def test_absent_is_404_and_wrong_method_405():
    assert call("GET", f"{ROUTE}/999")[0] == 404
    assert call("DELETE", ROUTE)[0] == 405
