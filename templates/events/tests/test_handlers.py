"""The {{service}} handlers, called in-process with real events on a throwaway embedded store."""

import pytest

from microkit import events
from microkit.events.settings import Settings
from services.{{service}} import handlers


@pytest.fixture(autouse=True)
def published(tmp_path):
    """Events go to an embedded store in tmp_path; `published()` returns those published since the last call."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    events.configure(Settings(url=url, namespace="test", source="{{service}}", once_url=url))
    store = events.backend().store()
    position: dict = {}
    store.tail(None, position, 0)

    def read():
        return [events.Event.from_json(entry.body) for entry in store.tail(None, position, 0.01)]
    yield read
    events.backend().close()


def test_a_request_is_handled_once_and_answered(published):
    event = events.Event("{{service}}.requested", {"name": "ada"}, source="tests")
    handlers.requested(event)
    handlers.requested(event)  # a redelivery of the same event
    [done] = published()
    assert (done.type, done.payload, done.source) == ("{{service}}.done", {"name": "ada", "for": event.id},
                                                      "{{service}}")


def test_a_bad_payload_raises_so_it_is_retried_then_dead_lettered():
    with pytest.raises(ValueError, match='needs a "name" string'):
        handlers.requested(events.Event("{{service}}.requested", {}))
