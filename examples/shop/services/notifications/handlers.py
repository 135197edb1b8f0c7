"""The notifications service: consumers only, no HTTP. Every running consumer hears of every paid order
(broadcast mode) and logs it, as a stand-in for sending a mail or a push message."""

import logging

from microkit import events

log = logging.getLogger(__name__)


@events.handler("orders.paid", mode="broadcast", retries=1, retry_delay=0.5)
def order_paid(event: events.Event) -> None:
    if not events.once(event):
        return  # a redelivery of one already announced by this consumer's service
    log.info("notify user %s: order %s is paid (request %s)", event.payload.get("user_id"),
             event.payload["order_id"], event.request_id or "-")
