"""Calls from one service to another, through the gateway.

Services reach each other by route, never by instance address: the gateway picks the instance,
retries what is safe and applies the same auth and limits as for outside callers. The gateway's
address comes from MICROKIT_GATEWAY_URL, which `microkit up` sets for every service.
"""

from __future__ import annotations

import http.client
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from .errors import MicrokitError
from .tracing import outgoing

DEFAULT_GATEWAY = "http://127.0.0.1:8000"


class ServiceUnavailable(MicrokitError):
    """The gateway could not be reached, or did not answer in time."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ServiceClient:
    """A small JSON-over-HTTP client for the gateway; one connection per call, so it is safe in any greenlet."""

    def __init__(self, base_url: str | None = None, timeout: float = 5.0) -> None:
        url = urlsplit(base_url or os.environ.get("MICROKIT_GATEWAY_URL") or DEFAULT_GATEWAY)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"gateway URL must be http(s)://HOST:PORT, got {base_url!r}")
        self.scheme, self.host, self.port = url.scheme, url.hostname, url.port
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, request_id: str | None = None) -> Reply:
        """Send `body` as JSON (if given) and return the reply; ServiceUnavailable if the gateway is unreachable."""
        factory = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = factory(self.host, self.port, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if request_id:
            headers["X-Request-Id"] = request_id
        headers["traceparent"] = outgoing()  # the current request's trace, carried on (microkit.tracing)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, dict(response.getheaders()), response.read())
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceUnavailable(f"{method} {path} via {self.host}:{self.port} failed: {exc}") from exc
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.request("PATCH", path, body, **kw)
