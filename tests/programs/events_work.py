"""What the events tests' handlers do: record each step in records.jsonl beside this file, optionally
sleep, fail while a file exists, publish, or handle an event once only (the payload says which)."""

import json
import os
import time

from microkit import events

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records.jsonl")
SERVICE = os.environ["MICROKIT_SERVICE"]


def record(step, event, **extra):
    line = json.dumps({"step": step, "service": SERVICE, "id": event.id, "type": event.type, "pid": os.getpid(),
                       "payload": event.payload, "delivery": event.delivery, "source": event.source,
                       "request_id": event.request_id, "time": time.time(), **extra})
    fd = os.open(RECORDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


def work(event):
    payload = event.payload or {}
    if payload.get("once") and not events.once(event):
        record("duplicate", event)
        return
    record("start", event)
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    if payload.get("fail_while") and os.path.exists(payload["fail_while"]):
        record("fail", event)
        raise RuntimeError("failing on purpose")
    if payload.get("publish"):
        events.publish(payload["publish"], {"from": event.id})
    record("done", event)
