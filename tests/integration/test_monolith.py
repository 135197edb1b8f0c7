"""Monolith mode: every service's app in one process, at the gateway's address and the same URLs."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest

from microkit import config
from microkit.monolith import Monolith
from microkit.testing import eventually
from support.cli import PROGRAMS
from support.up import Up, get, make_project

@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name in ("users", "orders"):
        (tmp_path / "pkg" / f"{name}.py").write_text((PROGRAMS / "who_app.py").read_text())
    (tmp_path / "microkit.toml").write_text(
        '[project]\nname = "mono"\n'
        '[services.users]\napp = "pkg.users:app"\nroute = "/users"\nenv = { WHO = "users-env" }\n'
        '[services.orders]\napp = "pkg.orders:app"\nroute = "/orders"\n'
        '[services.clock]\ncommand = "python clock.py"\n')
    monkeypatch.delenv("WHO", raising=False)
    yield config.load(tmp_path / "microkit.toml")
    for name in ("pkg", "pkg.users", "pkg.orders"):
        sys.modules.pop(name, None)


def call(app, path: str) -> tuple[str, bytes]:
    started = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "RAW_URI": path, "wsgi.input": io.BytesIO()}
    body = b"".join(app(environ, lambda status, headers, exc=None: started.setdefault("status", status)))
    return started["status"], body


def test_each_app_is_mounted_at_its_route_with_its_own_env(project):
    monolith = Monolith(project)
    assert call(monolith, "/users/1") == ("200 OK", b"users-env /users/1")
    assert call(monolith, "/orders") == ("200 OK", b"nobody /orders")
    assert "WHO" not in os.environ, "a service's env is applied while it loads, then restored"
    assert monolith.skipped == ["clock"]


def test_unrouted_unsafe_and_health(project):
    monolith = Monolith(project)
    status, body = call(monolith, "/nothing")
    assert status.startswith("404") and json.loads(body)["status"] == 404
    assert call(monolith, "/users%2F..%2Forders")[0].startswith("400")
    assert call(monolith, "/users/../orders/2") == ("200 OK", b"nobody /orders/2")
    status, body = call(monolith, "/__microkit/health")
    assert status == "200 OK" and json.loads(body)["monolith"] == ["users", "orders"]


def test_up_monolith_serves_every_service_from_one_process(tmp_path):
    services = {name: {"app": f"services.{name}.app:app", "route": f"/{name}"} for name in ("users", "orders")}
    root = make_project(tmp_path / "proj", services, {"users": "routed_app.py", "orders": "routed_app.py"})
    up = Up(root, "--monolith", gateway=True)
    try:
        url = up.wait_for(r"^ready: gateway (http://\S+) \(monolith\)$", 20).group(1)
        users_pid = eventually(lambda: get(url + "/users/pid"), 5)[1]
        assert get(url + "/orders/pid") == (200, users_pid), "one process serves both"
        assert get(url + "/nothing")[0] == 404
    finally:
        up.close()


def test_routes_governed_by_the_gateway_are_refused_and_identity_headers_never_pass(tmp_path, project):
    from microkit.errors import UsageError
    from microkit.monolith import check

    governed = tmp_path / "governed.toml"
    governed.write_text(project.path.read_text().replace('route = "/orders"', 'route = "/orders"\nrate_limit = "5/min"'))
    with pytest.raises(UsageError, match="services orders set: run them behind the gateway"):
        check(config.load(governed))
    monolith = Monolith(project)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/users", "RAW_URI": "/users", "wsgi.input": io.BytesIO(),
               "HTTP_X_AUTH_SUBJECT": "root", "HTTP_X_AUTH_SCOPES": "admin"}
    monolith(environ, lambda *a: None)
    assert not [k for k in environ if k.startswith("HTTP_X_AUTH_")]
