"""The notifications handler, called here as its consumer calls it, on the test's own events bus."""

import logging

from microkit.events import Event
from services.notifications import handlers


def test_a_paid_order_is_logged_once(events, caplog):
    caplog.set_level(logging.INFO)
    event = Event("orders.paid", {"order_id": 4, "user_id": 2}, source="orders", request_id="r-1")
    events.deliver(handlers.order_paid, event)
    events.deliver(handlers.order_paid, event)  # the same event again: already announced
    lines = [r.getMessage() for r in caplog.records if r.name == handlers.__name__]
    assert lines == ["notify user 2: order 4 is paid (request r-1)"]
