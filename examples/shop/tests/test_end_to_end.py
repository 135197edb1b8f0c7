"""The shop end to end: users, orders and payments as real worker processes behind the project's own
gateway, registered in a real Redis registry (a key prefix of this test's own, deleted after it), where
their events go too. The order is paid a moment after the payment, by the orders service's consumer of
payments.completed, which announces orders.paid."""

import os

import pytest

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def microkit_registry_url(request):
    """Redis for this module: --microkit-registry or MICROKIT_TEST_REGISTRY_URL, else the local server."""
    url = request.config.getoption("--microkit-registry") or os.environ.get("MICROKIT_TEST_REGISTRY_URL") or REDIS
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} is needed: {exc}", pytrace=False)
        pytest.skip(f"Redis at {url} is not running: {exc}")
    return url


def test_a_user_orders_and_pays_and_the_order_is_paid(service, gateway, events, microkit_test):
    import redis

    project = microkit_test.project
    service("users", mode="process")
    service("orders", mode="process", workers=2)
    service("payments", mode="process")
    keys = redis.Redis.from_url(project.registry_url).keys(f"{project.namespace}:instance:*")
    assert len(keys) == 4 and len(project.registry.instances("orders")) == 2, "on Redis, in this test's prefix"
    ada = gateway.post("/users/", json={"name": "ada"}, expect=201).json()
    order = gateway.post("/orders/", json={"user_id": ada["id"], "item": "book", "quantity": 2}, expect=201).json()
    assert order["status"] == "new"
    payment = gateway.post("/payments/", json={"order_id": order["id"], "amount_cents": 1250}, expect=201).json()
    paid = events.wait_for("orders.paid", timeout=20)
    assert paid.payload == {"order_id": order["id"], "user_id": ada["id"], "payment_id": payment["id"]}
    assert gateway.get(f"/orders/{order['id']}", expect=200).json()["status"] == "paid"
    assert [e.type for e in events.published()] == ["payments.completed", "orders.paid"]
    assert events.url.startswith("redis://"), "on the registry's Redis, in this test's prefix"
    gateway.post("/payments/", json={"order_id": order["id"], "amount_cents": 1250}, expect=409)
    gateway.post("/orders/", json={"user_id": ada["id"] + 1000, "item": "book", "quantity": 1}, expect=400)
