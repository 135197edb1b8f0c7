"""The payments service: paying orders, at /payments.

    POST   /payments/        {"order_id": 1, "amount_cents": 1250}   201; 400 (no such order), 409 (already paid)
    GET    /payments/        list                                    200 [...]
    GET    /payments/<id>    read                                    200, or 404
    GET    /healthz          health                                  200
A payment checks the order with the orders service (through the gateway), then publishes
`payments.completed`; the orders service consumes it and marks the order paid. If the event cannot be
published (the events store is down), the payment is removed again and the answer is 503.
Errors are JSON: {"error": "..."}.
"""

import json

import bottle

from microkit import events
from microkit.client import ServiceClient, ServiceUnavailable

from .models import Payment, create_tables, db, init_db

ROUTE = "/payments"

ID_MIN, ID_MAX = -2 ** 63, 2 ** 63 - 1  # what the database can store: other ids are simply absent
app = bottle.Bottle()
init_db()
services = ServiceClient()
_tables_ready = False


@app.hook("before_request")
def _open_connection() -> None:
    global _tables_ready
    if not _tables_ready:
        create_tables()
        _tables_ready = True
    db.connect(reuse_if_open=True)


@app.hook("after_request")
def _close_connection() -> None:
    if not db.is_closed():
        db.close()


def _error(status: int, message: str) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps({"error": message})


def _json_error(err: bottle.HTTPError) -> str:
    if err.status_code >= 500 and err.exception is not None:
        return _error(err.status_code, "internal server error")
    return _error(err.status_code, err.body if isinstance(err.body, str) and err.body else err.status_line)


for _code in (400, 404, 405, 409, 500, 503):
    app.error(_code)(_json_error)


def _body() -> dict:
    try:
        data = json.loads(bottle.request.body.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bottle.HTTPError(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        raise bottle.HTTPError(400, "request body must be a JSON object")
    for key in ("order_id", "amount_cents"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bottle.HTTPError(400, f'"{key}" must be an integer >= 1')
    return data


def _call(method: str, path: str, body: dict | None = None):
    try:
        return services.request(method, path, body, request_id=bottle.request.get_header("X-Request-Id"))
    except ServiceUnavailable as exc:
        raise bottle.HTTPError(503, f"orders service unreachable: {exc}")


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post(ROUTE)
@app.post(ROUTE + "/")
def pay() -> dict:
    data = _body()
    order_id = data["order_id"]
    reply = _call("GET", f"/orders/{order_id}")
    if reply.status == 404:
        raise bottle.HTTPError(400, f"order {order_id} does not exist")
    if reply.status != 200:
        raise bottle.HTTPError(503, f"orders service answered {reply.status}")
    if reply.json()["status"] == "paid" or Payment.get_or_none(Payment.order_id == order_id):
        raise bottle.HTTPError(409, f"order {order_id} is already paid")
    payment = Payment.create(order_id=order_id, amount_cents=data["amount_cents"])
    try:
        events.publish("payments.completed", {"order_id": order_id, "payment_id": payment.id,
                                              "amount_cents": payment.amount_cents})
    except events.EventsUnavailable as exc:
        payment.delete_instance()
        raise bottle.HTTPError(503, f"payment not recorded: {exc}")
    bottle.response.status = 201
    bottle.response.set_header("Location", f"{ROUTE}/{payment.id}")
    return payment.to_dict()


@app.get(ROUTE)
@app.get(ROUTE + "/")
def list_all() -> str:
    bottle.response.content_type = "application/json"
    return json.dumps([p.to_dict() for p in Payment.select().order_by(Payment.id)])


@app.get(ROUTE + "/<payment_id:int>")
def read(payment_id: int) -> dict:
    payment = Payment.get_or_none(Payment.id == payment_id) if ID_MIN <= payment_id <= ID_MAX else None  # beyond int64: none
    if payment is None:
        raise bottle.HTTPError(404, f"payment {payment_id} not found")
    return payment.to_dict()
