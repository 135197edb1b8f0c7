"""The orders service's event handlers, called in-process with real events on a throwaway store (microkit.testing
has no events fixtures yet: the store is configured here), on a per-test database from its `database` fixture."""

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
def orders_database(database):
    """A database of the test's own from microkit.testing (an SQLite file, or one on --microkit-database)."""
    models.init_db(database().url)
    with models.db.connection_context():
        models.db.create_tables(models.MODELS)
    yield
    models.db.close_all()  # the pooled connections, before the database is dropped


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
