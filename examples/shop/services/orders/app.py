"""The orders service: a user's orders at /orders.

    POST   /orders/        {"user_id": 1, "item": "book", "quantity": 2}   201, or 400 (unknown user)
    GET    /orders/        list, ?user_id=N filters                        200 [...]
    GET    /orders/<id>    read                                            200, or 404
    PATCH  /orders/<id>    {"status": "paid"} (payments does this)         200, 400 or 404
    DELETE /orders/<id>    delete                                          204, or 404
    GET    /healthz        health                                          200
The user is checked with the users service, through the gateway. Errors are JSON: {"error": "..."}.
"""

import json

import bottle

from microkit.client import ServiceClient, ServiceUnavailable

from .models import STATUSES, Order, create_tables, db, init_db

ROUTE = "/orders"

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


for _code in (400, 404, 405, 500, 503):
    app.error(_code)(_json_error)


def _body() -> dict:
    try:
        data = json.loads(bottle.request.body.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bottle.HTTPError(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        raise bottle.HTTPError(400, "request body must be a JSON object")
    return data


def _positive_int(data: dict, key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bottle.HTTPError(400, f'"{key}" must be an integer >= 1')
    return value


def _check_user(user_id: int) -> None:
    """The user must exist: asked of the users service through the gateway."""
    try:
        reply = services.get(f"/users/{user_id}", request_id=bottle.request.get_header("X-Request-Id"))
    except ServiceUnavailable as exc:
        raise bottle.HTTPError(503, f"users service unreachable: {exc}")
    if reply.status == 404:
        raise bottle.HTTPError(400, f"user {user_id} does not exist")
    if reply.status != 200:
        raise bottle.HTTPError(503, f"users service answered {reply.status}")


def _get(order_id: int) -> Order:
    order = Order.get_or_none(Order.id == order_id) if ID_MIN <= order_id <= ID_MAX else None  # beyond int64: none
    if order is None:
        raise bottle.HTTPError(404, f"order {order_id} not found")
    return order


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post(ROUTE)
@app.post(ROUTE + "/")
def create() -> dict:
    data = _body()
    user_id = _positive_int(data, "user_id")
    quantity = _positive_int(data, "quantity", 1)
    item = data.get("item")
    if not isinstance(item, str) or not item.strip() or len(item) > 255:
        raise bottle.HTTPError(400, '"item" is required: a non-empty string of at most 255 characters')
    _check_user(user_id)
    order = Order.create(user_id=user_id, item=item, quantity=quantity)
    bottle.response.status = 201
    bottle.response.set_header("Location", f"{ROUTE}/{order.id}")
    return order.to_dict()


@app.get(ROUTE)
@app.get(ROUTE + "/")
def list_all() -> str:
    query = Order.select().order_by(Order.id)
    user_id = bottle.request.query.get("user_id")
    if user_id is not None:
        if not user_id.isdigit():
            raise bottle.HTTPError(400, "user_id must be an integer")
        query = query.where(Order.user_id == int(user_id))
    bottle.response.content_type = "application/json"
    return json.dumps([order.to_dict() for order in query])


@app.get(ROUTE + "/<order_id:int>")
def read(order_id: int) -> dict:
    return _get(order_id).to_dict()


@app.route(ROUTE + "/<order_id:int>", method="PATCH")
def update(order_id: int) -> dict:
    data = _body()
    status = data.get("status")
    if status not in STATUSES:
        raise bottle.HTTPError(400, f'"status" must be one of {", ".join(STATUSES)}')
    order = _get(order_id)
    order.status = status
    order.save()
    return order.to_dict()


@app.delete(ROUTE + "/<order_id:int>")
def delete(order_id: int) -> None:
    _get(order_id).delete_instance()
    bottle.response.status = 204
