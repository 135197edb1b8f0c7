"""The orders service's endpoints, served in-process by microkit.testing's `service` fixture and called
over HTTP with its JSON client; each test on a database of its own. The users service it calls (through
the gateway) is a fake from `fake_service`: users 1 and 2 exist."""

import pytest

ROUTE = "/orders"


def known_users(request):
    if request.path in ("/users/1", "/users/2"):
        return {"id": int(request.path.rsplit("/", 1)[1]), "name": "someone"}
    return 404, {"error": "no such user"}


@pytest.fixture
def users(fake_service):
    """The users service as a fake behind the test's gateway (which starts before the orders service)."""
    return fake_service("users", known_users)


@pytest.fixture
def orders(service):
    return service("orders")


def test_healthz(orders):
    orders.get("/healthz", expect=200)


def test_create_checks_the_user_and_returns_201(users, orders):
    response = orders.post(ROUTE + "/", json={"user_id": 1, "item": "book", "quantity": 2},
                           headers={"X-Request-Id": "r-1"}, expect=201)
    order = response.json()
    assert response.headers["Location"] == f"{ROUTE}/{order['id']}"
    assert (order["user_id"], order["item"], order["quantity"], order["status"]) == (1, "book", 2, "new")
    assert [(c.method, c.path) for c in users.calls] == [("GET", "/users/1")]
    assert users.calls[0].headers["X-Request-Id"] == "r-1", "the request id travels with the call"


def test_unknown_user_is_400_and_nothing_is_stored(users, orders):
    error = orders.post(ROUTE, json={"user_id": 9, "item": "book"}, expect=400).json()
    assert error["error"] == "user 9 does not exist"
    assert orders.get(ROUTE, expect=200).json() == []


def test_users_service_down_is_503(orders):
    """Without a gateway in the test the call to users fails at once, as when the gateway is down."""
    error = orders.post(ROUTE, json={"user_id": 1, "item": "book"}, expect=503).json()
    assert "users service unreachable" in error["error"]


def test_users_service_answering_503_is_503(fake_service, orders):
    fake_service("users", lambda request: (503, {"error": "down"}))
    error = orders.post(ROUTE, json={"user_id": 1, "item": "book"}, expect=503).json()
    assert error["error"] == "users service answered 503"


def test_list_filters_by_user_and_reads_one(users, orders):
    first = orders.post(ROUTE, json={"user_id": 1, "item": "a"}, expect=201).json()
    orders.post(ROUTE, json={"user_id": 2, "item": "b"}, expect=201)
    assert [o["item"] for o in orders.get(ROUTE + "/", expect=200).json()] == ["a", "b"]
    assert [o["item"] for o in orders.get(ROUTE, params={"user_id": 2}, expect=200).json()] == ["b"]
    assert orders.get(f"{ROUTE}/{first['id']}", expect=200).json()["item"] == "a"
    orders.get(ROUTE + "?user_id=x", expect=400)


def test_patch_status_and_delete(users, orders):
    order_id = orders.post(ROUTE, json={"user_id": 1, "item": "a"}, expect=201).json()["id"]
    assert orders.patch(f"{ROUTE}/{order_id}", json={"status": "paid"}, expect=200).json()["status"] == "paid"
    orders.patch(f"{ROUTE}/{order_id}", json={"status": "lost"}, expect=400)
    orders.delete(f"{ROUTE}/{order_id}", expect=204)
    orders.get(f"{ROUTE}/{order_id}", expect=404)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"{}", b'{"user_id": 1}', b'{"user_id": 0, "item": "a"}',
                                  b'{"user_id": 1, "item": "a", "quantity": "2"}', b'{"user_id": true, "item": "a"}'])
def test_bad_body_is_400_json(orders, body):
    response = orders.post(ROUTE, data=body, headers={"Content-Type": "application/json"}, expect=400)
    assert "error" in response.json()


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_absent_is_404_json(orders, method):
    assert "error" in getattr(orders, method)(f"{ROUTE}/999999", json={"status": "paid"}, expect=404).json()


def test_wrong_method_is_405(orders):
    assert "error" in orders.put(f"{ROUTE}/1", json={}, expect=405).json()
