"""The {{service}} service: an asyncio (aiohttp) server that microkit runs as a command service.

    POST   ROUTE/         create   201 {"id": ..., "name": ...}
    GET    ROUTE/         list     200 [...]
    GET    ROUTE/<id>     read     200, or 404
    DELETE ROUTE/<id>     delete   204, or 404
    GET    ROUTE/wait?seconds=S  answers after S seconds (how many wait: /healthz)
    GET    /healthz       health   200 {"status": "ok", "waiting": N}
ROUTE is the service's route in microkit.toml, which microkit passes in MICROKIT_ROUTE ("" when run
by hand). microkit starts one process per instance with PORT and HOST in its environment; SIGTERM
stops it gracefully: it stops accepting, lets in-flight requests finish (up to GRACE seconds), and
exits 0. Items live in the process's memory: replace `Store` with your database of choice.
"""

import asyncio
import itertools
import json
import os

from aiohttp import web

GRACE = float(os.environ.get("GRACEFUL_TIMEOUT", "10"))


class Store:
    """Items in memory, one store per process."""

    def __init__(self) -> None:
        self.items: dict[int, dict] = {}
        self.ids = itertools.count(1)
        self.waiting = 0

    def add(self, name: str) -> dict:
        item = {"id": next(self.ids), "name": name}
        self.items[item["id"]] = item
        return item


STORE = web.AppKey("store", Store)
PREFIX = web.AppKey("prefix", str)


def _error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


async def _name(request: web.Request) -> str:
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _error(web.HTTPBadRequest, "request body is not valid JSON")
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise _error(web.HTTPBadRequest, '"name" is required and must be a non-empty string')
    return name


def _item_id(request: web.Request) -> int:
    item_id = int(request.match_info["item_id"])
    if item_id not in request.app[STORE].items:
        raise _error(web.HTTPNotFound, f"{{service}} {item_id} not found")
    return item_id


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "waiting": request.app[STORE].waiting})


async def create(request: web.Request) -> web.Response:
    item = request.app[STORE].add(await _name(request))
    base = request.app[PREFIX]
    return web.json_response(item, status=201, headers={"Location": f"{base}/{item['id']}"})


async def list_all(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STORE].items.values()))


async def read(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].items[_item_id(request)])


async def delete(request: web.Request) -> web.Response:
    del request.app[STORE].items[_item_id(request)]
    return web.Response(status=204)


async def wait(request: web.Request) -> web.Response:
    """Answer after `seconds` (at most 30): shows that one process serves many waiting requests at once."""
    try:
        seconds = min(max(float(request.query.get("seconds", "0")), 0.0), 30.0)
    except ValueError:
        raise _error(web.HTTPBadRequest, '"seconds" must be a number')
    request.app[STORE].waiting += 1
    try:
        await asyncio.sleep(seconds)
    finally:
        request.app[STORE].waiting -= 1
    return web.json_response({"waited": seconds})


def create_app(route: str = "") -> web.Application:
    """The service with its resource at `route` (a prefix such as "/{{service}}", or "" for /)."""
    base = route.rstrip("/")
    app = web.Application()
    app[STORE] = Store()
    app[PREFIX] = base
    app.router.add_get("/healthz", healthz)
    for path in [base + "/"] + ([base] if base else []):
        app.router.add_post(path, create)
        app.router.add_get(path, list_all)
    app.router.add_get(base + "/wait", wait)
    app.router.add_get(base + r"/{item_id:\d+}", read)
    app.router.add_delete(base + r"/{item_id:\d+}", delete)
    return app


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    print(f"{{service}}: serving on http://{host}:{port} (pid {os.getpid()})", flush=True)
    # run_app turns SIGTERM and SIGINT into a graceful shutdown that waits up to GRACE seconds
    web.run_app(create_app(os.environ.get("MICROKIT_ROUTE", "")), host=host, port=port,
                shutdown_timeout=GRACE, access_log=None, print=None)


if __name__ == "__main__":
    main()
