"""The users service: a JSON resource at /users, stored through peewee.

    POST   /users/        create       201 {"id": ..., "name": ..., "created_at": ...}
    GET    /users/        list         200 [...]
    GET    /users/<id>    read         200, or 404
    PUT    /users/<id>    replace      200, or 404
    PATCH  /users/<id>    update       200, or 404
    DELETE /users/<id>    delete       204, or 404
    GET    /healthz          health       200
Bad JSON or a missing "name" gets 400; errors are JSON: {"error": "..."}.
"""

import json

import bottle

from .models import User, create_tables, db, init_db

ROUTE = "/users"

ID_MIN, ID_MAX = -2 ** 63, 2 ** 63 - 1  # what the database can store: other ids are simply absent
app = bottle.Bottle()
init_db()
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


for _code in (400, 404, 405, 500):
    app.error(_code)(_json_error)


def _body(partial: bool = False) -> dict:
    """The request's JSON object with a valid "name" (optional when partial), or a 400."""
    try:
        data = json.loads(bottle.request.body.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bottle.HTTPError(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        raise bottle.HTTPError(400, "request body must be a JSON object")
    if "name" in data or not partial:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bottle.HTTPError(400, '"name" is required and must be a non-empty string')
        if len(name) > 255:
            raise bottle.HTTPError(400, '"name" must be at most 255 characters')
    return data


def _get(item_id: int) -> User:
    item = User.get_or_none(User.id == item_id) if ID_MIN <= item_id <= ID_MAX else None  # beyond int64: none
    if item is None:
        raise bottle.HTTPError(404, f"users {item_id} not found")
    return item


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post(ROUTE)
@app.post(ROUTE + "/")
def create() -> dict:
    item = User.create(name=_body()["name"])
    bottle.response.status = 201
    bottle.response.set_header("Location", f"{ROUTE}/{item.id}")
    return item.to_dict()


@app.get(ROUTE)
@app.get(ROUTE + "/")
def list_all() -> str:
    bottle.response.content_type = "application/json"
    return json.dumps([item.to_dict() for item in User.select().order_by(User.id)])


@app.get(ROUTE + "/<item_id:int>")
def read(item_id: int) -> dict:
    return _get(item_id).to_dict()


@app.route(ROUTE + "/<item_id:int>", method=["PUT", "PATCH"])
def update(item_id: int) -> dict:
    data = _body(partial=bottle.request.method == "PATCH")
    item = _get(item_id)
    if "name" in data:
        item.name = data["name"]
        item.save()
    return item.to_dict()


@app.delete(ROUTE + "/<item_id:int>")
def delete(item_id: int) -> None:
    _get(item_id).delete_instance()
    bottle.response.status = 204
