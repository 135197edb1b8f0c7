"""Handlers for the events metrics tests: each records what it saw in records.jsonl beside this file."""

import json, os, time
from microkit import events, tracing

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records.jsonl")


def record(event, **extra):
    line = json.dumps({"type": event.type, "id": event.id, "traceparent": event.traceparent,
                       "current": tracing.current(), "outgoing": tracing.outgoing(), **extra})
    with open(RECORDS, "a") as out:
        out.write(line + "\n")


@events.handler("order.placed", retries=0)
def placed(event):
    billed = events.publish("order.billed", {"from": event.id})
    record(event, published=billed.traceparent)


@events.handler("order.billed", retries=0)
def billed(event):
    record(event)


@events.handler("order.bad", retries=2, retry_delay=0.01)
def bad(event):
    raise RuntimeError("failing on purpose")


@events.handler("order.slow", retries=0)
def slow(event):
    time.sleep(event.payload["sleep"])
    record(event)
