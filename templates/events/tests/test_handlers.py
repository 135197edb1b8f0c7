"""The {{service}} handlers on a throwaway events bus from microkit.testing (`events`): called here as a
consumer calls them (`events.deliver`), and run by the service's own consumer process (`service`)."""

import pytest

from services.{{service}} import handlers


def test_a_request_is_handled_once_and_answered(events):
    request = events.deliver(handlers.requested, {"name": "ada"})
    events.deliver(handlers.requested, request)  # a redelivery of the same event: answered once
    [done] = events.published("{{service}}.done")
    assert (done.payload, done.source) == ({"name": "ada", "for": request.id}, "{{service}}")


def test_a_bad_payload_raises_so_it_is_retried_then_dead_lettered(events):
    with pytest.raises(ValueError, match='needs a "name" string'):
        events.deliver(handlers.requested, {})
    assert events.published() == []


def test_its_consumer_answers_a_published_request(service, events):
    service("{{service}}")
    request = events.publish("{{service}}.requested", {"name": "ada"})
    assert events.wait_for("{{service}}.done").payload == {"name": "ada", "for": request.id}
