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
    body_timeout: float | None = None
    """Longest wait for the next bytes of a request body (408 after it); None: header_timeout."""
    lingering_time: float = 30.0
    lingering_timeout: float = 5.0
    """After an answer that leaves request bytes unread (413, 408, ...), the engine half-closes and reads
    and drops what the client still sends, until its FIN, `lingering_time` seconds in all, or a wait of
    more than `lingering_timeout` between reads (nginx's lingering close): a client that sends its
    whole body before reading then gets the answer instead of a reset."""
    chunked_readahead: int = 65536
    """A chunked request body that ends within this many bytes is read (asking for it with 100 Continue
    if the client waits) before a WSGI app runs, and given a CONTENT_LENGTH: frameworks that need a
    length (Bottle) then read it. Longer bodies stream without one (wsgi.input_terminated); 0 streams
    every chunked body from its first byte."""
