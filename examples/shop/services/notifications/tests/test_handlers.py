"""The notifications handler, called in-process with real events on a throwaway store."""

import logging

import pytest

from microkit import events
from microkit.events.settings import Settings
from services.notifications import handlers


@pytest.fixture(autouse=True)
def store(tmp_path):
    events.configure(Settings(url=f"sqlite:///{tmp_path / 'events.db'}", namespace="test", source="notifications",
                              once_url=f"sqlite:///{tmp_path / 'events.db'}"))
    yield
    events.backend().close()


def test_a_paid_order_is_logged_once(caplog):
    caplog.set_level(logging.INFO)
    event = events.Event("orders.paid", {"order_id": 4, "user_id": 2}, source="orders", request_id="r-1")
    handlers.order_paid(event)
    handlers.order_paid(event)  # the same event again: already announced
    lines = [r.getMessage() for r in caplog.records if r.name == handlers.__name__]
    assert lines == ["notify user 2: order 4 is paid (request r-1)"]
