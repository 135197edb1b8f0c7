"""The orders service's event handlers, called in-process with real events on a throwaway store."""

import os

import pytest

from microkit import events
from microkit.events.settings import Settings
from services.orders import handlers, models


@pytest.fixture(autouse=True)
def published(tmp_path):
    """Events go to a real embedded store in tmp_path; `published()` returns those published since the last call."""
    events.configure(Settings(url=f"sqlite:///{tmp_path / 'events.db'}", namespace="test", source="orders"))
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


def test_payments_completed_marks_the_order_paid_and_announces_it(published):
    with models.db.connection_context():
        order = models.Order.create(user_id=3, item="book")
    event = events.Event("payments.completed", {"order_id": order.id, "payment_id": 9}, source="payments")
    handlers.mark_paid(event)
    handlers.mark_paid(event)  # a redelivery changes nothing but announces again
    with models.db.connection_context():
        assert models.Order.get_by_id(order.id).status == "paid"
    announced = published()
    assert [e.type for e in announced] == ["orders.paid", "orders.paid"]
    assert announced[0].payload == {"order_id": order.id, "user_id": 3, "payment_id": 9}


def test_an_unknown_order_raises_so_the_event_is_retried_then_dead_lettered():
    with pytest.raises(LookupError, match="order 41 does not exist"):
        handlers.mark_paid(events.Event("payments.completed", {"order_id": 41}))
