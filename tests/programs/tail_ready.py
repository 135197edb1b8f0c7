"""Tails t.pool in the project of the current folder and publishes one event the moment the tail says it
is ready; prints the ids published and shown, as JSON. The tail must show it: `microkit events tail`
prints its "tailing" line at that moment, and a test publishes right after reading that line.

    python tail_ready.py
"""

import json
import time

from microkit.events.commands import _configure

events, _ = _configure(None, "test")
published, shown = [], []
deadline = time.monotonic() + 20
try:
    events.backend().tail(["t.pool"], lambda event: shown.append(event.id),
                          lambda: bool(shown) or time.monotonic() > deadline,
                          lambda: published.append(events.publish("t.pool", {"n": 1}).id))
finally:
    events.backend().close()
print(json.dumps({"published": published, "shown": shown}))
