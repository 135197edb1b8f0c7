"""The payments service's endpoints, served in-process by microkit.testing's `service` fixture and called
over HTTP with its JSON client; each test on a database of its own. The orders service it calls (through
the gateway) is a fake from `fake_service`: orders 1 and 2 exist, unpaid. Its events go to the test's own
bus (`events`)."""

import socket

import pytest

import microkit.events
from microkit.events.settings import Settings

ROUTE = "/payments"


def unpaid_orders(request):
    order_id = int(request.path.rsplit("/", 1)[1])
    if request.method == "GET" and order_id in (1, 2):
        return {"id": order_id, "status": "new"}
    return 404, {"error": "not found"}


@pytest.fixture
def orders(fake_service):
    """The orders service as a fake behind the test's gateway (which starts before the payments service)."""
    return fake_service("orders", unpaid_orders)


@pytest.fixture
def payments(service):
    return service("payments")


def test_healthz(payments):
    payments.get("/healthz", expect=200)


def test_paying_an_order_publishes_payments_completed(orders, payments, events):
    response = payments.post(ROUTE + "/", json={"order_id": 1, "amount_cents": 1250}, expect=201)
    payment = response.json()
    assert response.headers["Location"] == f"{ROUTE}/{payment['id']}"
    assert (payment["order_id"], payment["amount_cents"]) == (1, 1250)
    [event] = events.published()
    assert (event.type, event.source) == ("payments.completed", "payments")
    assert event.payload == {"order_id": 1, "payment_id": payment["id"], "amount_cents": 1250}
    assert payments.get(f"{ROUTE}/{payment['id']}", expect=200).json() == payment
    assert [p["id"] for p in payments.get(ROUTE, expect=200).json()] == [payment["id"]]
    assert [(c.method, c.path) for c in orders.calls] == [("GET", "/orders/1")]


def test_an_order_is_paid_once(orders, payments):
    payments.post(ROUTE, json={"order_id": 1, "amount_cents": 100}, expect=201)
    error = payments.post(ROUTE, json={"order_id": 1, "amount_cents": 100}, expect=409).json()
    assert error["error"] == "order 1 is already paid"


def test_unknown_order_is_400(orders, payments):
    error = payments.post(ROUTE, json={"order_id": 7, "amount_cents": 100}, expect=400).json()
    assert error["error"] == "order 7 does not exist"


def test_orders_down_is_503(payments):
    """Without a gateway in the test the call to orders fails at once, as when the gateway is down."""
    error = payments.post(ROUTE, json={"order_id": 1, "amount_cents": 100}, expect=503).json()
    assert "orders service unreachable" in error["error"]


def test_an_unpublished_payment_is_removed(orders, payments):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there: the events store is down
    microkit.events.configure(Settings(url=f"redis://127.0.0.1:{port}/0", namespace="test", source="payments",
                                       publish_timeout=0.2))  # until the test ends
    error = payments.post(ROUTE, json={"order_id": 2, "amount_cents": 100}, expect=503).json()
    assert "cannot publish payments.completed" in error["error"]
    assert payments.get(ROUTE, expect=200).json() == []


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"{}", b'{"order_id": 1}', b'{"order_id": 1, "amount_cents": 0}',
                                  b'{"order_id": "1", "amount_cents": 5}'])
def test_bad_body_is_400_json(payments, body):
    response = payments.post(ROUTE, data=body, headers={"Content-Type": "application/json"}, expect=400)
    assert "error" in response.json()


def test_absent_is_404_and_wrong_method_405(payments):
    payments.get(f"{ROUTE}/999", expect=404)
    payments.delete(ROUTE, expect=405)
