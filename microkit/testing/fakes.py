"""Fakes: a WSGI app or a function registered under a service's name, in that service's place."""

from __future__ import annotations

import inspect
import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs

from microkit.testing.servers import Running, ThreadedApp

if TYPE_CHECKING:
    from microkit.testing.project import TestProject


class FakeRequest:
    """What a fake function is called with."""

    def __init__(self, environ: dict) -> None:
        self.method = environ["REQUEST_METHOD"]
        self.path = environ.get("PATH_INFO", "/")
        self.query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self.headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            self.headers["Content-Type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.body = environ["wsgi.input"].read(length) if length else b""

    def __repr__(self) -> str:
        return f"<FakeRequest {self.method} {self.path}>"

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def function_app(handler: Callable[[FakeRequest], Any], calls: list) -> Callable:
    """A WSGI app around `handler(request)`, which returns a body (dict/list: JSON, str, bytes or None),
    or `(status, body)`, or `(status, body, headers)`."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        request = FakeRequest(environ)
        calls.append(request)
        result = handler(request)
        status, headers = 200, {}
        if isinstance(result, tuple):
            status, result, *rest = result
            headers = dict(rest[0]) if rest else {}
        if isinstance(result, (dict, list)):
            body = json.dumps(result).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(result, str):
            body = result.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            body = result or b""
        start_response(f"{status} {reason(status)}", list(headers.items()))
        return [body]

    return app


def is_wsgi_app(target: Callable) -> bool:
    """WSGI apps take (environ, start_response); fake functions take one request."""
    try:
        parameters = [p for p in inspect.signature(target).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return True
    if len(parameters) not in (1, 2):
        raise TypeError(f"a fake is a WSGI app (environ, start_response) or a function (request), "
                        f"got {target!r} taking {len(parameters)} arguments")
    return len(parameters) == 2


class FakeService(Running):
    """A WSGI app or a function registered in the test's registry under a service's name: the gateway
    routes that service's route to it, so whatever calls the service reaches the fake instead.
    `calls` lists the requests a function fake received."""

    def __init__(self, project: TestProject, name: str, target: Callable) -> None:
        from microkit import registry

        self.calls: list[FakeRequest] = []
        app = target if is_wsgi_app(target) else function_app(target, self.calls)
        self._server = ThreadedApp(app)
        super().__init__(name, f"http://127.0.0.1:{self._server.port}")
        self.project = project
        self.instances = [registry.Instance(service=name, host="127.0.0.1", port=self._server.port,
                                            meta={"testing": "fake"})]
        project.register(self.instances)

    def stop(self) -> None:
        self.project.deregister(self.instances)
        self._server.stop()
