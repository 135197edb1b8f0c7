"""Event metrics in the gateway's scrape, read back with prometheus_client's parser, and trace context
carried through events (issue 14), through the real `microkit up` on the embedded store."""

from __future__ import annotations

import json
import signal
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from microkit.metrics import events as meter
from microkit.metrics.exposition import document, render_tables
from support.cli import PROGRAMS
from support.events import Vhost
from support.metrics import samples, value
from support.servers import REDIS_URL, delete_namespace, require_redis
from support.up import Up, request
from microkit.testing import eventually

TOML = '''[project]
name = "{name}"
{events}
[gateway]
listen = "127.0.0.1:0"
metrics_allow = ["127.0.0.1"]

[services.shop]
app = "shop:app"
route = "/shop"
workers = 2

[services.billing]
events = "billing"
consumers = 2
'''

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def store(request):
    """(kind, [events] url or None, project name) on a store of the test's own."""
    kind, name = request.param, f"evm{uuid.uuid4().hex[:10]}"
    if kind == "embedded":
        yield kind, None, name
    elif kind == "redis":
        require_redis(REDIS_URL)
        yield kind, REDIS_URL, name
        delete_namespace(REDIS_URL, name)
    else:
        vhost = Vhost()
        yield kind, vhost.url, name
        vhost.delete()


@pytest.mark.parametrize("store", ["embedded", "redis", "amqp"], indirect=True)
def test_event_metrics_in_the_scrape_and_the_trace_through_two_hops(tmp_path, store):
    kind, url, name = store
    root = tmp_path / "proj"
    root.mkdir()
    (root / "shop.py").write_text((PROGRAMS / "events_shop.py").read_text())
    (root / "billing.py").write_text((PROGRAMS / "events_billing.py").read_text())
    (root / "microkit.toml").write_text(TOML.format(name=name, events=f'\n[events]\nurl = "{url}"\n' if url else ""))
    records = root / "records.jsonl"
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(30)["gateway"]
        sent = f"00-{TRACE}-00f067aa0ba902b7-01"
        answers = []
        for _ in range(3):
            status, _, body = request(gateway, "GET", "/shop/placed", {"traceparent": sent})
            assert status == 200, body
            answers.append(json.loads(body))
        assert request(gateway, "GET", "/shop/bad")[0] == 200

        def scraped():
            status, headers, text = request(gateway, "GET", "/__microkit/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
            return samples(text)

        def done(parsed):
            return (value(parsed, meter.HANDLED, service="billing", type="order.billed", outcome="ok") == 3
                    and value(parsed, meter.DEAD, service="billing", type="order.bad") == 1 and parsed)
        parsed = eventually(lambda: done(scraped()), 30, "events handled and counted")
        # published: by the shop's two workers (added up) and by billing's consumers
        assert value(parsed, meter.PUBLISHED, service="shop", type="order.placed") == 3
        assert value(parsed, meter.PUBLISHED, service="shop", type="order.bad") == 1
        assert value(parsed, meter.PUBLISHED, service="billing", type="order.billed") == 3
        assert value(parsed, meter.HANDLED, service="billing", type="order.placed", outcome="ok") == 3
        assert value(parsed, meter.HANDLED, service="billing", type="order.placed", outcome="error") == 0
        assert value(parsed, meter.HANDLED, service="billing", type="order.bad", outcome="error") == 3
        assert value(parsed, meter.RETRIED, service="billing", type="order.bad") == 2
        assert value(parsed, meter.RETRIED, service="billing", type="order.placed") == 0
        assert value(parsed, meter.DURATION + "_count", service="billing", type="order.placed") == 3
        assert value(parsed, meter.HANDLED, service="billing", type="order.slow", outcome="ok") == 0  # shown at 0
        assert (meter.LAG, (("group", "billing"), ("type", "order.placed"))) in parsed
        if kind == "amqp":  # RabbitMQ tells ready messages only: one published with no consumer reading waits
            up.signal(signal.SIGTERM)  # (the gateway goes too: read the queue as the scrape does)
            assert up.wait(20) == 0
        else:
            eventually(lambda: value(scraped(), meter.PENDING, group="billing", type="order.placed") == 0, 10,
                       "nothing pending")
            # an event being handled shows as pending; once handled, neither pending nor waiting
            assert request(gateway, "GET", "/shop/slow")[0] == 200
            eventually(lambda: value(scraped(), meter.PENDING, group="billing", type="order.slow") == 1, 10,
                       "one pending")
            eventually(lambda: (p := scraped()) and value(p, meter.HANDLED, type="order.slow", outcome="ok") == 1
                       and value(p, meter.PENDING, type="order.slow") == 0
                       and value(p, meter.LAG, type="order.slow") == 0, 15, "the slow one handled")

        # the trace: gateway -> shop's publish -> billing's handler -> its publish -> the next handler
        rows = [json.loads(line) for line in records.read_text().splitlines()]
        placed = [r for r in rows if r["type"] == "order.placed"]
        billed = [r for r in rows if r["type"] == "order.billed"]
        assert len(placed) == 3 and len(billed) == 3
        for answer in answers:
            trace, parent = answer["traceparent"].split("-")[1:3]
            assert trace == TRACE and parent != "00f067aa0ba902b7"  # the shop's publish: a parent id of its own
        for row in placed:
            assert row["traceparent"].split("-")[1] == TRACE and row["current"] == row["traceparent"]
            assert row["outgoing"].split("-")[1] == TRACE  # what microkit.client sends from the handler
            assert row["published"].split("-")[1] == TRACE and row["published"] != row["traceparent"]
        assert {r["traceparent"] for r in billed} == {r["published"] for r in placed}
        if kind == "amqp":
            from microkit import events
            from microkit.events.backends import connect
            backend = connect(url, name)
            events.configure(events.Settings(url=url, namespace=name, source="test"))
            try:
                events.publish("order.placed", {})
                lag = eventually(lambda: (found := backend.lag([("billing", "order.placed")]))
                                 and found[("billing", "order.placed")][0] == 1 and found, 10, "one ready")
                assert lag == {("billing", "order.placed"): (1, None)}
                assert backend.lag([("billing", "order.nothing")]) == {}
            finally:
                events.backend().close()
                events._settings = None
        else:
            up.signal(signal.SIGTERM)
            assert up.wait(20) == 0
    finally:
        up.close()


def test_described_event_tables_are_read_back_and_added_up(tmp_path, monkeypatch):
    """Two slots' rows of one published table and a handler table, read through their `.layout` files."""
    from microkit.metrics.events import EventMeter

    monkeypatch.setenv(meter.ROOT, str(tmp_path))
    monkeypatch.delenv(meter.CONSUMER_SLOT, raising=False)
    for slot, count in ((1, 2), (2, 3)):
        monkeypatch.setenv(meter.WORKER_SLOT, str(slot))
        one = EventMeter()
        for _ in range(count):
            one.published("shop", "order.placed")
        cells = one.handled("shop", "order.x")
        cells.attempt(False, 0.01)
        cells.count(cells.retried)
    parsed = samples(document([render_tables(meter.tables_of(tmp_path))]).decode())
    assert value(parsed, meter.PUBLISHED, service="shop", type="order.placed") == 5
    assert value(parsed, meter.HANDLED, service="shop", type="order.x", outcome="error") == 2
    assert value(parsed, meter.RETRIED, service="shop", type="order.x") == 2
    families = {f.name: f.type for f in text_string_to_metric_families(
        document([render_tables(meter.tables_of(tmp_path))]).decode())}
    assert families["microkit_events_published"] == "counter"
    assert families["microkit_events_handler_duration_seconds"] == "histogram"
    monkeypatch.delenv(meter.WORKER_SLOT)
    unslotted = EventMeter()
    unslotted.published("cli", "order.placed")  # a script outside `up`: not counted, nothing written
    assert not list((tmp_path / ".microkit" / "metrics").glob("events_wp_cli*"))


def test_a_dead_supervisors_event_table_goes_with_its_layout(tmp_path):
    from microkit.metrics.table import tables

    layout = meter.published_layout("shop", "order.placed")
    folder = tmp_path / ".microkit" / "metrics"
    table = meter.open_table(tmp_path, "events_wp_shop", layout, 1)
    live = table.path
    gone = folder / live.name.replace(f"-{table.owner}.table", "-999999999.table")
    gone.write_bytes(live.read_bytes())
    gone.with_suffix(".layout").write_text(live.with_suffix(".layout").read_text())
    assert [path for _, path in tables(folder)] == [live]
    assert not gone.exists() and not gone.with_suffix(".layout").exists()
    assert live.with_suffix(".layout").exists()


def test_publish_carries_the_current_trace_with_a_parent_id_of_its_own_else_starts_one(tmp_path):
    from microkit import events, tracing
    from microkit.events.settings import embedded_url

    events.configure(events.Settings(url=embedded_url(tmp_path), namespace="t", source="test"))
    try:
        parent = f"00-{TRACE}-00f067aa0ba902b7-01"
        token = tracing.handling(parent)
        try:
            inside = events.publish("order.placed", {}).traceparent
        finally:
            tracing.restore(token)
        outside = events.publish("order.placed", {}).traceparent
    finally:
        events.backend().close()
        events._settings = None
    assert tracing.parse(inside.encode())[0].decode() == TRACE and inside != parent
    assert tracing.parse(outside.encode()) is not None and TRACE not in outside
