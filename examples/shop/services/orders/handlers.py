"""The orders service's event handlers, run by its consumer processes (`events = ...` in microkit.toml).

`payments.completed` marks the order paid and announces `orders.paid`. Delivery is at least once: an
order already paid is left as it is, and `orders.paid` is published again (its consumers dedupe by id).
"""

import logging

from microkit import events

from .models import Order, create_tables, db, init_db

log = logging.getLogger(__name__)
init_db()
_tables_ready = False


@events.handler("payments.completed", mode="pool", retries=3, retry_delay=0.5)
def mark_paid(event: events.Event) -> None:
    global _tables_ready
    if not _tables_ready:
        create_tables()
        _tables_ready = True
    order_id = event.payload["order_id"]
    with db.connection_context():
        order = Order.get_or_none(Order.id == order_id)
        if order is None:
            raise LookupError(f"order {order_id} does not exist")
        if order.status != "paid":
            order.status = "paid"
            order.save()
    log.info("order %s paid (payment %s)", order_id, event.payload.get("payment_id"))
    events.publish("orders.paid", {"order_id": order_id, "user_id": order.user_id,
                                   "payment_id": event.payload.get("payment_id")})
