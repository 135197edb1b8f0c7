"""Publishes order.KIND for POST /shop/KIND (order.slow carries a 3 s sleep)."""

import json
from microkit import events


def app(environ, start_response):
    kind = environ["PATH_INFO"].rstrip("/").rsplit("/", 1)[-1]
    event = events.publish("order." + kind, {"sleep": 3} if kind == "slow" else {})
    body = json.dumps({"id": event.id, "traceparent": event.traceparent}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
