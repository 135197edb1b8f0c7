"""The orders service's event handlers on the test's own events bus (microkit.testing's `events`): called
here as a consumer calls them, on a per-test database from its `database` fixture, and run by the
service's consumer process beside the service served in-process."""

import pytest

from services.orders import handlers, models


@pytest.fixture
def orders_database(database):
    """A database of the test's own from microkit.testing (an SQLite file, or one on --microkit-database)."""
    models.init_db(database().url)
    with models.db.connection_context():
        models.db.create_tables(models.MODELS)
    yield
    models.db.close_all()  # the pooled connections, before the database is dropped


def test_payments_completed_marks_the_order_paid_and_announces_it(orders_database, events):
    with models.db.connection_context():
        order = models.Order.create(user_id=3, item="book")
    payment = events.deliver(handlers.mark_paid, {"order_id": order.id, "payment_id": 9})
    events.deliver(handlers.mark_paid, payment)  # a redelivery changes nothing but announces again
    with models.db.connection_context():
        assert models.Order.get_by_id(order.id).status == "paid"
    announced = events.published("orders.paid")
    assert [e.source for e in announced] == ["orders", "orders"]
    assert announced[0].payload == {"order_id": order.id, "user_id": 3, "payment_id": 9}


def test_an_unknown_order_raises_so_the_event_is_retried_then_dead_lettered(orders_database, events):
    with pytest.raises(LookupError, match="order 41 does not exist"):
        events.deliver(handlers.mark_paid, {"order_id": 41})


def test_an_order_is_paid_when_its_payment_completes(service, fake_service, events):
    fake_service("users", lambda request: {"id": 3, "name": "ada"})
    orders = service("orders")  # served here; its consumer of payments.completed is a process on the same database
    order = orders.post("/orders/", json={"user_id": 3, "item": "book", "quantity": 1}, expect=201).json()
    events.publish("payments.completed", {"order_id": order["id"], "payment_id": 9}, source="payments")
    paid = events.wait_for("orders.paid")
    assert paid.payload == {"order_id": order["id"], "user_id": 3, "payment_id": 9}
    assert orders.get(f"/orders/{order['id']}", expect=200).json()["status"] == "paid"


def test_a_handler_called_here_works_on_the_services_database(service, fake_service, events):
    fake_service("users", lambda request: {"id": 3, "name": "ada"})
    orders = service("orders", consumers=False)  # no consumer process: the handler runs here
    order = orders.post("/orders/", json={"user_id": 3, "item": "book", "quantity": 1}, expect=201).json()
    events.deliver("orders.mark_paid", {"order_id": order["id"], "payment_id": 5})
    assert orders.get(f"/orders/{order['id']}", expect=200).json()["status"] == "paid"
    assert [e.payload["payment_id"] for e in events.published("orders.paid")] == [5]
