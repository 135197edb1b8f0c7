"""Apps written for a mount point (werkzeug's DispatcherMiddleware): with `strip_prefix = true` they
give the same answers split behind the gateway and under `--monolith` as under DispatcherMiddleware."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

import pytest
import requests

from microkit.testing import eventually

from support.cli import PROGRAMS
from support.up import Up, make_project

PATHS = ["/", "/3", "/order/", "/order/5", "/payment/", "/payment/9", "/order/x"]
SERVICES = {
    "site": {"app": "services.site.app:app", "route": "/"},
    "order": {"app": "services.order.app:app", "route": "/order", "strip_prefix": True},
    "payment": {"app": "services.payment.app:app", "route": "/payment", "strip_prefix": True},
}


def _flask_app(name: str):
    os.environ["MOUNT_NAME"] = name
    try:
        spec = importlib.util.spec_from_file_location(f"mount_{name}", PROGRAMS / "flask_mount_app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del os.environ["MOUNT_NAME"]
    return module.app


def _answers(base: str) -> list[tuple[int, object]]:
    out = []
    for path in PATHS:
        response = requests.get(base + path, timeout=10, allow_redirects=False)
        kind = response.headers.get("Content-Type", "")
        out.append((response.status_code, response.json() if kind.startswith("application/json") else None))
    return out


@pytest.fixture(scope="module")
def reference():
    """The three apps under werkzeug's own server and DispatcherMiddleware."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    app = DispatcherMiddleware(_flask_app("site"), {"/order": _flask_app("order"), "/payment": _flask_app("payment")})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _answers(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


def _project(tmp_path):
    root = make_project(tmp_path / "proj", SERVICES, {name: "flask_mount_app.py" for name in SERVICES})
    config = root / "microkit.toml"
    text = config.read_text()
    for name in SERVICES:
        text = text.replace(f"[services.{name}]\n", f'[services.{name}]\nenv = {{ MOUNT_NAME = "{name}" }}\n')
    config.write_text(text)
    return root


@pytest.mark.parametrize("mode", ["split", "monolith"])
def test_dispatcher_style_apps_answer_the_same_split_and_monolith(tmp_path, reference, mode):
    root = _project(tmp_path)
    up = Up(root, *(["--monolith"] if mode == "monolith" else []), gateway=True)
    try:
        gateway = up.wait_for(r"^ready: gateway (http://[\d.:]+)", 30).group(1)
        answers = _answers(gateway)
    finally:
        up.close()
    assert answers == reference
    assert reference[3] == (200, {"app": "order", "number": 5, "script_root": "/order", "path": "/5",
                                  "here": "/order/5", "index": "/order/"})


@pytest.mark.parametrize("mode", ["split", "monolith"])
def test_a_client_cannot_claim_a_mount_point(tmp_path, mode):
    root = _project(tmp_path)
    up = Up(root, *(["--monolith"] if mode == "monolith" else []), gateway=True)
    try:
        gateway = up.wait_for(r"^ready: gateway (http://[\d.:]+)", 30).group(1)
        answer = requests.get(f"{gateway}/3", headers={"X-Forwarded-Prefix": "/evil"}, timeout=10).json()
        assert answer["script_root"] == "" and answer["here"] == "/3"
        answer = requests.get(f"{gateway}/order/", headers={"X-Forwarded-Prefix": "/evil"}, timeout=10).json()
        assert answer["script_root"] == "/order"
    finally:
        up.close()


def test_an_aiohttp_app_with_only_a_root_route_works_behind_a_stripped_prefix(tmp_path):
    root = make_project(tmp_path / "proj", {"chat": {"command": f"{sys.executable} services/chat/aiohttp_root.py",
                                                     "route": "/chat", "strip_prefix": True, "health": "/"}},
                        {"chat": "aiohttp_root.py"})
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(30)["gateway"]
        eventually(lambda: requests.get(f"{gateway}/chat", timeout=5).status_code != 503, 15)
        for path in ("/chat", "/chat/"):
            response = requests.get(gateway + path, timeout=10)
            assert (response.status_code, response.text) == (200, "aiohttp root path=/ prefix=/chat")
        assert requests.get(f"{gateway}/chat/other", timeout=10).status_code == 404
    finally:
        up.close()
