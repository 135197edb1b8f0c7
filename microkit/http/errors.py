"""Protocol errors the engine answers itself, and the canned responses it sends for them."""

from microkit.errors import MicrokitError

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


class HTTPError(MicrokitError):
    """A request the engine refuses: it answers `status` (if it still can) and closes the connection."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"{status} {REASONS[status]}" + (f": {detail}" if detail else ""))
        self.status = status


class ClientDisconnected(HTTPError):
    """The peer closed or reset the connection, or stopped reading: nothing more can be sent."""

    def __init__(self) -> None:
        super().__init__(400, "client disconnected")


def _canned(status: int) -> bytes:
    """Build the complete close-delimited response for `status`."""
    body = f"{status} {REASONS[status]}\n".encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


ERROR_RESPONSES = {status: _canned(status) for status in REASONS}
