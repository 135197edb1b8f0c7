"""Bounds on what one client may send, so a slow or oversized request cannot pin a worker."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Request size and time limits; header_timeout also bounds each wait for body bytes and sends."""

    max_request_line: int = 8190
    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_body: int | None = None
