"""OpenAPI (issue 14): a document from any Bottle app's routes, served by its workers; the gateway's
merged document; schemathesis against it on the demo shop finds no server error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import bottle

from microkit.gateway.policy import Policy
from microkit.gateway.security import Rate
from microkit.openapi import document_for, merge, with_openapi
from support.cli import run_cli
from support.up import Up, demo_shop, request

REPO = Path(__file__).resolve().parents[2]


def sample_app() -> bottle.Bottle:
    app = bottle.Bottle()

    @app.get("/items/<item_id:int>/<ratio:float>/<code:re:[a-z]{2}>/<name>")
    def read(item_id, ratio, code, name):
        """Read one item."""

    @app.route("/items", method=["POST", "PUT"])
    def write():
        pass
    return app


def test_a_bottle_apps_routes_become_typed_operations():
    doc = document_for(sample_app(), "items")
    [path] = [p for p in doc["paths"] if p.startswith("/items/")]
    assert path == "/items/{item_id}/{ratio}/{code}/{name}"
    operation = doc["paths"][path]["get"]
    assert operation["summary"] == "Read one item."
    types = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert types == {"item_id": {"type": "integer"}, "ratio": {"type": "number"},
                     "code": {"type": "string", "pattern": "^[a-z]{2}$"}, "name": {"type": "string"}}
    assert set(doc["paths"]["/items"]) == {"post", "put"}
    assert "requestBody" in doc["paths"]["/items"]["post"]


def test_a_worker_serves_the_document_unless_the_app_routes_the_path():
    app = with_openapi(sample_app(), "items")
    seen = []
    body = b"".join(app({"PATH_INFO": "/openapi.json", "REQUEST_METHOD": "GET"}, lambda s, h: seen.append(s)))
    assert seen == ["200 OK"] and "/items" in json.loads(body)["paths"]
    own = bottle.Bottle()
    own.get("/openapi.json", callback=lambda: "mine")
    environ = {}
    from wsgiref.util import setup_testing_defaults
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/openapi.json"
    assert b"".join(with_openapi(own, "x")(environ, lambda *args: None)) == b"mine"


def route(prefix, service, strip=False, auth="none", rate=None):
    return SimpleNamespace(prefix=prefix, service=service, strip_prefix=strip,
                           policy=Policy(auth=auth, rate=Rate.parse(rate) if rate else None))


def test_the_merged_document_prefixes_deduplicates_and_adds_the_gateways_answers():
    user = {"type": "object", "properties": {"name": {"type": "string"}}}
    other = {"type": "object", "properties": {"id": {"type": "integer"}}}
    ref = {"$ref": "#/components/schemas/User"}
    ok = {"200": {"description": "ok", "content": {"application/json": {"schema": ref}}}}
    users = {"paths": {"/users/{id}": {"get": {"operationId": "read", "responses": ok}},
                       "/healthz": {"get": {"responses": {}}}},
             "components": {"schemas": {"User": user, "Error": {"type": "string"}}}}
    orders = {"paths": {"/{id}": {"get": {"operationId": "read", "responses": ok}}},
              "components": {"schemas": {"User": other, "Error": {"type": "string"}}}}
    doc = merge([(route("/users", "users", auth="apikey"), users),
                 (route("/orders", "orders", strip=True, rate="5/min"), orders)], "http://gw:8000")
    assert doc["servers"] == [{"url": "http://gw:8000"}]
    assert set(doc["paths"]) == {"/users/{id}", "/orders/{id}"}, "unreachable paths (/healthz) are left out"
    schemas = doc["components"]["schemas"]
    assert schemas["User"] == user and schemas["orders.User"] == other and "orders.Error" not in schemas
    orders_ok = doc["paths"]["/orders/{id}"]["get"]["responses"]
    assert orders_ok["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/orders.User"}
    assert {"413", "429", "502", "503", "504"} <= set(orders_ok) and "401" not in orders_ok
    users_ok = doc["paths"]["/users/{id}"]["get"]["responses"]
    assert {"401", "403", "413", "502", "503", "504"} <= set(users_ok) and "429" not in users_ok
    assert doc["paths"]["/users/{id}"]["get"]["operationId"] == "users.read"
    assert doc["components"]["responses"]["Gateway503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GatewayError"}


def test_schemathesis_finds_no_server_error_through_the_merged_document(tmp_path):
    root = demo_shop(tmp_path)
    admin = run_cli("keys", "create", "ops", "--scope", "microkit:admin", cwd=root)
    assert admin.returncode == 0, admin.stderr
    key = admin.stdout.strip()
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(40)["gateway"]
        assert request(gateway, "GET", "/__microkit/openapi.json")[0] == 401
        status, headers, body = request(gateway, "GET", "/__microkit/openapi.json", {"X-API-Key": key})
        assert status == 200 and headers["content-type"].startswith("application/json")
        doc = json.loads(body)
        assert {"/users/{item_id}", "/orders/{order_id}", "/payments/{payment_id}"} <= set(doc["paths"])
        assert doc["servers"] == [{"url": gateway}]
        (tmp_path / "openapi.json").write_text(body)
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", str(tmp_path / "openapi.json"),
             "--url", gateway, "--checks", "not_a_server_error", "--max-examples", "15", "--phases",
             "examples,coverage,fuzzing", "--seed", "14", "--request-timeout", "10", "--no-color"],
            capture_output=True, text=True, timeout=400, cwd=tmp_path)
        print(run.stdout[-3000:])
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    finally:
        up.close()
