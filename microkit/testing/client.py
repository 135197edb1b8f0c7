"""A small HTTP client for tests: JSON in and out, and status assertions that show the answer.

    reply = users.post("/users/", json={"name": "ada"}, expect=201)
    users.get(f"/users/{reply.json()['id']}").assert_status(200)

Plain `http.client`, one connection per request, so it works against any server (an in-process
service, worker processes, the gateway) from any thread.
"""

from __future__ import annotations

import http.client
import json as jsonlib
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode, urlsplit

DEFAULT_TIMEOUT = 10.0
SHOWN_BODY = 500


class Response:
    """One answer: `status`, `headers` (case-insensitive), `body` (bytes), `text` and `json()`."""

    def __init__(self, method: str, url: str, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} for {self.method} {self.url}>"

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; an AssertionError that shows the body when it is not JSON."""
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            raise AssertionError(f"{self.method} {self.url} answered {self.status} with a body that is not "
                                 f"JSON: {self.shown()}") from None

    def shown(self) -> str:
        text = self.text
        return repr(text if len(text) <= SHOWN_BODY else text[:SHOWN_BODY] + "...")

    def assert_status(self, *expected: int) -> Response:
        """Fail (showing the body) unless the status is one of `expected`; returns the response for chaining."""
        if self.status not in expected:
            wanted = " or ".join(map(str, expected))
            raise AssertionError(f"{self.method} {self.url}: expected status {wanted}, got {self.status}: "
                                 f"{self.shown()}")
        return self


class Client:
    """Requests against one base URL (`http://HOST:PORT`), with default headers."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected a base URL like http://127.0.0.1:8000, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    def with_headers(self, headers: Mapping[str, str]) -> Client:
        """A client for the same URL that also sends `headers` (e.g. an Authorization header)."""
        return Client(self.base_url, {**self.headers, **headers}, self.timeout)

    def bearer(self, token: str) -> Client:
        """A client that sends `Authorization: Bearer TOKEN`."""
        return self.with_headers({"Authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, *, json: Any = None, data: bytes | str | None = None,
                headers: Mapping[str, str] | None = None, params: Mapping[str, Any] | Iterable | None = None,
                expect: int | Iterable[int] | None = None, timeout: float | None = None) -> Response:
        """Send one request; `json` is encoded (with its Content-Type), `expect` asserts the status."""
        if not path.startswith("/"):
            raise ValueError(f"expected a path starting with '/', got {path!r}")
        sent = {"Accept": "application/json", **self.headers, **(headers or {})}
        body = data.encode() if isinstance(data, str) else data
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent.setdefault("Content-Type", "application/json")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        factory = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = factory(self._host, self._port, timeout=self.timeout if timeout is None else timeout)
        try:
            conn.request(method, path, body=body, headers=sent)
            answer = conn.getresponse()
            response = Response(method, self.base_url + path, answer.status, answer.headers, answer.read())
        finally:
            conn.close()
        if expect is not None:
            response.assert_status(*((expect,) if isinstance(expect, int) else expect))
        return response

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> Response:
        return self.request("HEAD", path, **kw)

    def options(self, path: str, **kw: Any) -> Response:
        return self.request("OPTIONS", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)
