"""The {{service}} service's event handlers. `microkit up` runs them in `consumers` supervised processes.

Publish one to try it: `microkit events publish {{service}}.requested '{"name": "ada"}'`, and watch
the answers with `microkit events tail {{service}}.done`.

Delivery is at least once: a handler's ack comes after it returns, an exception retries it (`retries`,
`retry_delay`, doubling), and after the last try the event goes to the dead letters
(`microkit events dead {{service}}`, `microkit events replay ID`). Use `events.once(event)` where running
twice would do harm.
"""

import logging

from microkit import events

log = logging.getLogger(__name__)


@events.handler("{{service}}.requested", mode="pool", retries=3, retry_delay=1.0)
def requested(event: events.Event) -> None:
    """Each `{{service}}.requested` event reaches one consumer of this service."""
    name = (event.payload or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f'{event.type} {event.id}: the payload needs a "name" string, got {event.payload!r}')
    if not events.once(event):
        return  # handled already: a redelivery
    log.info("%s requested by %s (request %s)", name, event.source or "-", event.request_id or "-")
    events.publish("{{service}}.done", {"name": name, "for": event.id})
