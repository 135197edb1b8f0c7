"""PEP 3333 glue: environ keys for request headers, and the response an app writes through start_response."""

import sys
from collections.abc import Callable, Iterable
from email.utils import formatdate
from time import time
from urllib.parse import unquote_to_bytes

from microkit.http.native import speedups

_add_headers = speedups.add_headers if speedups is not None else None
_response_head = speedups.response_head if speedups is not None else None
_KEYS: dict[bytes, str] = {}
_DATE = [0, "", b""]  # second, `Date` line as text and as bytes
TARGET_CACHE_SIZE = 1024
TARGET_CACHE_LENGTH = 256
_TARGETS: dict[bytes, tuple[str, str, str]] = {}  # request target -> split_target(target), for repeated targets
_STATUS_CODES: dict[str, int] = {}  # status lines already validated -> their code
_FRAMING = frozenset(("content-length", "date", "connection", "transfer-encoding"))
_LOWER: dict[str, str] = {}  # response header name -> lower case (str.lower is a full Unicode mapping)
_LENGTHS: dict[str, int] = {}  # Content-Length values already validated -> their number


def server_environ(host: str, port: int, extra: dict | None) -> dict:
    """The environ keys shared by every request a server receives."""
    environ = {
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SCRIPT_NAME": "",
        "SERVER_SOFTWARE": "microkit",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    environ.update(extra or {})
    return environ


def environ_key(name: bytes) -> str | None:
    """CGI name of a request header (`HTTP_X_FOO`), or None for names with `_`, which are dropped."""
    key = _KEYS.get(name)
    if key is None:
        if b"_" in name:
            return None
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if len(_KEYS) < 512:
            _KEYS[name] = key
    return key


def build_environ(base: dict, request) -> dict:
    """The WSGI environ of a request: `base` plus its headers (repeated ones joined with ", "), method,
    protocol and target. A chunked body is de-chunked by the engine, so Transfer-Encoding is left out
    (wsgi.input_terminated is True and `microkit.chunked` says it was chunked); `microkit.request` is
    the engine's Request, whose raw header list lets a proxy rebuild the head without the environ.
    An `X-Forwarded-Prefix` header sets SCRIPT_NAME (`set_script_name`)."""
    env = base.copy()
    if _add_headers is not None:
        _add_headers(env, request.keys, request.headers)
    else:
        for key, (_, value) in zip(request.keys, request.headers):
            text = value.decode("latin-1")
            if key in env:
                env[key] += ", " + text
            else:
                env[key] = text
    if request.chunked:
        del env["HTTP_TRANSFER_ENCODING"]
        env["microkit.chunked"] = True
    env["SERVER_PROTOCOL"] = request.version
    env["REQUEST_METHOD"] = request.method
    set_target(env, request.target)
    prefix = env.get("HTTP_X_FORWARDED_PREFIX")
    if prefix is not None:
        set_script_name(env, prefix)
    env["wsgi.input"] = request.input
    env["microkit.request"] = request
    return env


def set_script_name(environ: dict, prefix: str) -> None:
    """The mount point a gateway forwarded a route's requests from (`X-Forwarded-Prefix`, sent for
    `strip_prefix` routes; the gateway drops any copy a client sent) becomes SCRIPT_NAME, as werkzeug's
    DispatcherMiddleware sets it, so apps build their URLs below it. Anything but a plain path is ignored."""
    prefix = prefix.rstrip("/")
    if prefix.startswith("/") and "," not in prefix and ".." not in prefix and "\\" not in prefix:
        environ["SCRIPT_NAME"] = prefix


def set_target(environ: dict, target: bytes) -> None:
    """Fill PATH_INFO (percent-decoded, latin-1), QUERY_STRING, RAW_URI and REQUEST_URI from the request target."""
    parts = _TARGETS.get(target)
    if parts is None:
        parts = split_target(target)
        if len(target) <= TARGET_CACHE_LENGTH:
            if len(_TARGETS) >= TARGET_CACHE_SIZE:
                _TARGETS.clear()
            _TARGETS[target] = parts
    environ["RAW_URI"] = environ["REQUEST_URI"] = parts[0]
    environ["PATH_INFO"] = parts[1]
    environ["QUERY_STRING"] = parts[2]


def split_target(target: bytes) -> tuple[str, str, str]:
    """(raw target, PATH_INFO, QUERY_STRING) of a request target, as latin-1 text; an absolute-form
    target (http://host/path) gives its path, and a fragment is dropped."""
    raw = target.decode("latin-1")
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        target = b"/" + rest.partition(b"/")[2] if sep and scheme.lower() in (b"http", b"https") else target
    path, _, query = target.partition(b"?")
    if b"#" in query or b"#" in path:
        path = path.partition(b"#")[0]
        query = query.partition(b"#")[0]
    return raw, (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1"), query.decode("latin-1")


def _date_line() -> str:
    """The `Date` header line, formatted at most once per second."""
    now = int(time())
    if now != _DATE[0]:
        line = f"Date: {formatdate(now, usegmt=True)}\r\n"
        _DATE[:] = now, line, line.encode()
    return _DATE[1]


def _date_bytes() -> bytes:
    """The `Date` header line as bytes."""
    if int(time()) != _DATE[0]:
        _date_line()
    return _DATE[2]


def scan_headers(status: str, headers: list) -> tuple[bytes, int, str | None, bool, bool]:
    """Check a WSGI status and header list and serialise them, on the pure-Python path (the compiled
    one, `_speedups.response_head`, also adds the framing): (the status line and every header line but
    Connection, the code, the last Content-Length value or None, whether a Date header is there,
    whether a Connection header asks to close)."""
    code = _STATUS_CODES.get(status) or int(status[:3])
    parts = ["HTTP/1.1 ", status, "\r\n"]
    length = None
    has_date = close = False
    lines = 1
    for name, value in headers:
        lower = _LOWER.get(name)
        if lower is None:
            lower = name.lower()
            if len(_LOWER) < 512:
                _LOWER[name] = lower
        if lower in _FRAMING:
            if lower == "content-length":
                length = value
            elif lower == "date":
                has_date = True
            elif lower == "connection":
                close = close or "close" in value.lower()
                continue
            else:
                raise ValueError("a WSGI application must not set Transfer-Encoding")
        parts += (name, ": ", value, "\r\n")
        lines += 1
    if length is not None:
        _content_length(length)
    head = "".join(parts)
    if head.count("\n") != lines or head.count("\r") != lines:
        raise ValueError("CR or LF inside a response status or header")
    return head.encode("latin-1"), code, length, has_date, close


def _content_length(value: str) -> int:
    """The number a response's Content-Length header gives (ValueError unless it is all ASCII digits)."""
    number = _LENGTHS.get(value)
    if number is None:
        if type(value) is not str or not (value.isascii() and value.isdigit()):
            raise ValueError(f"invalid Content-Length {value!r}")
        number = int(value)
        if len(_LENGTHS) >= 1024:
            _LENGTHS.clear()
        _LENGTHS[value] = number
    return number


class Response:
    """One response: start_response, write(), and framing; `closing()` is asked, when headers go out, whether to end the connection."""

    __slots__ = (
        "_send", "_closing", "_head_only", "_http10", "keep_alive", "status", "headers", "code",
        "headers_sent", "_bodyless", "_chunked", "_length", "_sent",
    )

    def __init__(
        self, send: Callable[[bytes], None], closing: Callable[[], bool], head_only: bool, http10: bool, keep_alive: bool
    ) -> None:
        self._send = send
        self._closing = closing
        self._head_only = head_only
        self._http10 = http10
        self.keep_alive = keep_alive
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.code = 0
        self.headers_sent = False
        self._bodyless = False
        self._chunked = False
        self._length: int | None = None
        self._sent = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info=None
    ) -> Callable[[bytes], None]:
        """PEP 3333 start_response: a second call needs exc_info, which is re-raised once headers are out."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if type(status) is not str or status not in _STATUS_CODES:
            if type(status) is not str or status[3:4] != " " or not status[:3].isdigit() or not status.isascii():
                raise ValueError(f"invalid WSGI status {status!r}")
            if len(_STATUS_CODES) < 256:
                _STATUS_CODES[status] = int(status[:3])
        if type(headers) is not list:
            raise TypeError("WSGI response headers must be a list")
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, body_len: int | None) -> bytes:
        """Serialize the status line and headers, choosing the body framing."""
        status = self.status
        if status is None:
            raise AssertionError("the application did not call start_response")
        if _response_head is not None:
            head, code, length, bodyless, self._chunked, self.keep_alive = _response_head(
                status, self.headers, body_len, self._head_only, self._http10, self.keep_alive and not self._closing())
            self._bodyless = bodyless
            if length is not None:
                self._length = _content_length(length)
            elif not bodyless and body_len is not None:
                self._length = body_len
            self.code = code
            self.headers_sent = True
            return head
        head, code, length, has_date, close = scan_headers(status, self.headers)
        self._bodyless = self._head_only or code < 200 or code == 204 or code == 304
        if close:
            self.keep_alive = False
        if length is not None:
            self._length = _content_length(length)
        elif self._bodyless:
            pass
        elif body_len is not None:
            head += b"Content-Length: %d\r\n" % body_len
            self._length = body_len
        elif self._http10:
            self.keep_alive = False
        else:
            head += b"Transfer-Encoding: chunked\r\n"
            self._chunked = True
        if not has_date:
            head += _date_bytes()
        if self.keep_alive and self._closing():
            self.keep_alive = False
        if not self.keep_alive:
            head += b"Connection: close\r\n\r\n"
        elif self._http10:
            head += b"Connection: keep-alive\r\n\r\n"
        else:
            head += b"\r\n"
        self.code = code
        self.headers_sent = True
        return head

    def _emit(self, head: bytes, data: bytes) -> None:
        """Send the head (if any) and one body piece in a single sendall, framed and length-checked."""
        if self._bodyless:
            data = b""
        elif self._length is not None:
            room = self._length - self._sent
            if len(data) > room:
                data = data[:room]
                self.keep_alive = False
            self._sent += len(data)
        elif self._chunked and data:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if head or data:
            self._send(head + data if head else data)

    def write(self, data: bytes) -> None:
        """The PEP 3333 write() callable: sends headers on first use, then `data`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
        self._emit(b"" if self.headers_sent else self._head(None), bytes(data))

    def finish(self, result: Iterable[bytes]) -> None:
        """Send the app's body iterable, then end the framing; headers wait for the first non-empty chunk."""
        if not self.headers_sent and (type(result) is list or type(result) is tuple):
            body = b"".join(result)
            self._emit(self._head(len(body)), body)
        else:
            for chunk in result:
                if chunk or self.headers_sent:
                    self.write(chunk)
        if not self.headers_sent:
            self._emit(self._head(0), b"")
        elif self._chunked:
            self._send(b"0\r\n\r\n")
        if self._length is not None and self._sent < self._length and not self._bodyless:
            self.keep_alive = False

