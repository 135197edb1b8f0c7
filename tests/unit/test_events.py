"""Pure logic of microkit.events: envelopes, handler declarations, subscription groups, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from microkit import config, events
from microkit.errors import ConfigError, UsageError
from microkit.events.backends import connect
from microkit.events.backends.amqp import connection_options
from microkit.events.backends.base import Subscription
from microkit.events.consumer import subscriptions
from microkit.events.envelope import Event, make
from microkit.events.settings import embedded_url, environ, from_environ, resolve


def test_envelope_round_trips_and_is_serialized_once():
    event = make("payments.completed", {"order_id": 1}, source="payments", request_id="r-1")
    again = Event.from_json(event.to_json(), delivery=3)
    assert (again.id, again.type, again.source, again.request_id, again.payload, again.delivery) == (
        event.id, "payments.completed", "payments", "r-1", {"order_id": 1}, 3)
    assert event.to_json() is event.to_json()


@pytest.mark.parametrize("bad", ["", "has space", ".starts", "x" * 201, 5])
def test_bad_event_types_are_one_clear_error(bad):
    with pytest.raises(UsageError, match="bad event type"):
        make(bad, {}, source="s")


def test_a_payload_that_is_not_json_is_refused_at_publish_time():
    with pytest.raises(UsageError, match="^event t.x: the payload is not JSON-serializable: "):
        make("t.x", {"when": object()}, source="s")


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "fanout"}, "mode must be one of pool, broadcast, singleton, got 'fanout'"),
    ({"retries": -1}, "retries must be an integer >= 0, got -1"),
    ({"retry_delay": "1s"}, "retry_delay must be seconds >= 0, got '1s'"),
    ({"group": "g"}, 'group is for mode="singleton" only'),
])
def test_handler_declarations_are_checked(kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        events.handler("t.x", **kwargs)


def test_groups_per_mode_and_duplicate_handlers_are_refused():
    assert Subscription("orders", "t", "pool").group_name == "orders"
    assert Subscription("orders", "t", "broadcast", consumer="host.2").group_name == "orders.host.2"
    assert Subscription("orders", "t", "singleton", group="g").group_name == "singleton.g"
    assert Subscription("orders", "t", consumer="host.1").member == "orders.host.1"
    assert Subscription("orders", "t", retries=0).max_deliveries == 2
    handler = events.Handler("t.x", lambda e: None)
    with pytest.raises(UsageError, match="both handle 't.x' in mode 'pool': merge them"):
        subscriptions([handler, events.Handler("t.x", lambda e: None)], "orders", "h.1")
    assert len(subscriptions([handler, events.Handler("t.x", lambda e: None, mode="broadcast")], "orders", "h.1")) == 2


def project(tmp_path: Path, text: str) -> config.Config:
    (tmp_path / "microkit.toml").write_text('[project]\nname = "shop"\n' + text)
    return config.load(tmp_path / "microkit.toml", {})


def test_where_events_go_events_url_else_registry_redis_else_embedded(tmp_path):
    assert resolve(project(tmp_path, "")).url == embedded_url(tmp_path)
    registry = project(tmp_path, '[registry]\nurl = "redis://h:6379/1"\n')
    assert (resolve(registry).url, resolve(registry).once_url) == ("redis://h:6379/1", "redis://h:6379/1")
    own = project(tmp_path, '[registry]\nurl = "redis://h:6379/1"\n[events]\nurl = "amqp://u:p@r/"\nprefetch = 3\n')
    found = resolve(own, "orders")
    assert (found.url, found.once_url, found.prefetch, found.source) == ("amqp://u:p@r/", "redis://h:6379/1", 3, "orders")
    assert from_environ(environ(own, "orders")) == found


def test_amqp_urls_and_unknown_schemes():
    assert connection_options("amqp://guest:s%40cret@rabbit:5673/shop?heartbeat=3") == {
        "host": "rabbit:5673", "userid": "guest", "password": "s@cret", "virtual_host": "shop", "ssl": False,
        "heartbeat": 3}
    assert connection_options("amqp://rabbit/")["virtual_host"] == "/"
    with pytest.raises(ConfigError, match="unknown events URL 'kafka://h': known schemes are amqp://"):
        connect("kafka://h", "ns")


def test_a_bad_amqp_queue_type_is_a_config_error():
    with pytest.raises(ConfigError, match="queue_type must be classic or quorum, got 'stream'"):
        connect("amqp://guest:secret@h/?queue_type=stream", "ns")
    assert connect("amqp://h/?queue_type=quorum", "ns").queue_type == "quorum"
