"""The {{service}} service: a JSON resource at its route, stored through peewee.

    POST   ROUTE/        create       201 {"id": ..., "name": ..., "created_at": ...}
    GET    ROUTE/        list         200 [...]
    GET    ROUTE/<id>    read         200, or 404
    PUT    ROUTE/<id>    replace      200, or 404
    PATCH  ROUTE/<id>    update       200, or 404
    DELETE ROUTE/<id>    delete       204, or 404
    GET    /healthz      health       200
ROUTE is the service's route in microkit.toml, which microkit passes in MICROKIT_ROUTE (so it is
written in one place); without it (run by hand) the resource is at /. Bad JSON or a missing "name"
gets 400; errors are JSON: {"error": "..."}.
"""

import json
import os
import sys

import bottle
from peewee import OperationalError

from .models import {{model}}, create_tables, db, init_db

_tables_pending = False  # True while the database could not be reached to create the tables


def _error(status: int, message: str) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps({"error": message})


def _json_error(err: bottle.HTTPError) -> str:
    if err.status_code >= 500 and err.exception is not None:
        return _error(err.status_code, "internal server error")
    return _error(err.status_code, err.body if isinstance(err.body, str) and err.body else err.status_line)


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


def _get(item_id: int) -> {{model}}:
    item = {{model}}.get_or_none({{model}}.id == item_id)
    if item is None:
        raise bottle.HTTPError(404, f"{{service}} {item_id} not found")
    return item


def create_app(route: str = "") -> bottle.Bottle:
    """The service with its resource at `route` (a prefix such as "/{{service}}", or "" for /)."""
    base = route.rstrip("/")
    collection = [base + "/"] + ([base] if base else [])
    app = bottle.Bottle()
    for code in (400, 404, 405, 500):
        app.error(code)(_json_error)

    @app.hook("before_request")
    def _open_connection() -> None:
        global _tables_pending
        if bottle.request.path == "/healthz":
            return  # health says the worker serves, without the database: a database outage gets JSON errors
        if _tables_pending:
            create_tables()
            _tables_pending = False
        db.connect(reuse_if_open=True)

    @app.hook("after_request")
    def _close_connection() -> None:
        if not db.is_closed():
            db.close()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post(collection)
    def create() -> dict:
        item = {{model}}.create(name=_body()["name"])
        bottle.response.status = 201
        bottle.response.set_header("Location", f"{base}/{item.id}")
        return item.to_dict()

    @app.get(collection)
    def list_all() -> str:
        bottle.response.content_type = "application/json"
        return json.dumps([item.to_dict() for item in {{model}}.select().order_by({{model}}.id)])

    @app.get(base + "/<item_id:int>")
    def read(item_id: int) -> dict:
        return _get(item_id).to_dict()

    @app.route(base + "/<item_id:int>", method=["PUT", "PATCH"])
    def update(item_id: int) -> dict:
        data = _body(partial=bottle.request.method == "PATCH")
        item = _get(item_id)
        if "name" in data:
            item.name = data["name"]
            item.save()
        return item.to_dict()

    @app.delete(base + "/<item_id:int>")
    def delete(item_id: int) -> None:
        _get(item_id).delete_instance()
        bottle.response.status = 204

    return app


init_db()
try:
    create_tables()  # once per worker as it starts, before it serves; a database lock orders simultaneous starts
except OperationalError as exc:  # the database is down: start anyway, and create them on a later request
    print(f"{{service}}: cannot reach the database to create tables ({exc}); retrying on requests",
          file=sys.stderr, flush=True)
    _tables_pending = True
app = create_app(os.environ.get("MICROKIT_ROUTE", ""))
