"""The {{service}} service: a Flask app serving a JSON resource at its route, stored through SQLAlchemy.

    POST   ROUTE/        create       201 {"id": ..., "name": ..., "created_at": ...}
    GET    ROUTE/        list         200 [...]
    GET    ROUTE/<id>    read         200, or 404
    PUT    ROUTE/<id>    replace      200, or 404
    PATCH  ROUTE/<id>    update       200, or 404
    DELETE ROUTE/<id>    delete       204, or 404
    GET    /healthz      health       200
ROUTE is the service's route in microkit.toml, which microkit passes in MICROKIT_ROUTE ("" when run
by hand). Errors are JSON: {"error": "..."}; a database that cannot be reached gives 503.
"""

import json
import os

from flask import Blueprint, Flask, abort, current_app, g, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from .models import {{model}}, create_tables, make_engine

api = Blueprint("{{service}}", __name__)


def session() -> Session:
    """This request's session; its connection goes back to the pool when the request ends."""
    if "session" not in g:
        g.session = Session(current_app.extensions["{{service}}.engine"], expire_on_commit=False)
    return g.session


def _body(partial: bool = False) -> dict:
    try:
        data = json.loads(request.get_data() or b"null")
    except (ValueError, UnicodeDecodeError):
        abort(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        abort(400, "request body must be a JSON object")
    if "name" in data or not partial:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            abort(400, '"name" is required and must be a non-empty string')
        if len(name) > 255:
            abort(400, '"name" must be at most 255 characters')
    return data


def _get(item_id: int) -> {{model}}:
    item = session().get({{model}}, item_id)
    if item is None:
        abort(404, f"{{service}} {item_id} not found")
    return item


@api.post("")
@api.post("/")
def create():
    item = {{model}}(name=_body()["name"])
    session().add(item)
    session().commit()
    return jsonify(item.to_dict()), 201, {"Location": url_for(".read", item_id=item.id)}


@api.get("")
@api.get("/")
def list_all():
    items = session().scalars(select({{model}}).order_by({{model}}.id))
    return jsonify([item.to_dict() for item in items])


@api.get("/<int:item_id>")
def read(item_id: int):
    return jsonify(_get(item_id).to_dict())


@api.route("/<int:item_id>", methods=["PUT", "PATCH"])
def update(item_id: int):
    data = _body(partial=request.method == "PATCH")
    item = _get(item_id)
    if "name" in data:
        item.name = data["name"]
        session().commit()
    return jsonify(item.to_dict())


@api.delete("/<int:item_id>")
def delete(item_id: int):
    session().delete(_get(item_id))
    session().commit()
    return "", 204


def create_app(route: str = "", database_url: str | None = None) -> Flask:
    """The service with its resource at `route` (a prefix such as "/{{service}}", or "" for /)."""
    app = Flask(__name__)
    base = route.rstrip("/")
    engine = make_engine(database_url)
    app.extensions["{{service}}.engine"] = engine
    try:
        create_tables(engine)  # once per worker as it starts, before it serves
        tables_pending = False
    except OperationalError as exc:  # the database is down: start anyway, and create them on a later request
        app.logger.warning("cannot reach the database to create tables (%s); retrying on requests", exc.orig)
        tables_pending = True

    @app.before_request
    def _create_tables_if_pending() -> None:
        nonlocal tables_pending
        if tables_pending and request.endpoint != "healthz":
            create_tables(engine)
            tables_pending = False
    app.register_blueprint(api, url_prefix=base or "/")

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.teardown_appcontext
    def _end_session(error: BaseException | None) -> None:
        found = g.pop("session", None)
        if found is not None:
            found.close()

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        response = jsonify(error=err.description if err.code and err.code < 500 else "internal server error")
        response.status_code = err.code or 500
        if err.code == 405 and err.valid_methods:
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    @app.errorhandler(OperationalError)
    def _database_down(err: OperationalError):
        return jsonify(error="database unavailable"), 503, {"Retry-After": "1"}

    return app


app = create_app(os.environ.get("MICROKIT_ROUTE", ""))
