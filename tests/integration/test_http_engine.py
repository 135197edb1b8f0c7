"""Behaviour of the HTTP engine over real sockets: keep-alive, pipelining, bodies, WSGI, errors, drain."""

import io
import socket
import sys
import threading
import time
from wsgiref.validate import validator

import gevent
import pytest

from support.http import Reader, ServerThread, connect
from microkit.http import HTTPServer, Limits
from microkit.testing import eventually


@pytest.fixture
def serve():
    """Start ServerThreads for a test and stop them afterwards."""
    started = []

    def start(app, **kwargs) -> ServerThread:
        st = ServerThread(app, **kwargs).__enter__()
        started.append(st)
        return st

    yield start
    for st in started:
        st.__exit__(None, None, None)


def H(head: str, body: bytes = b"") -> bytes:
    """A request from a head written with \\n line ends (turned into CRLF) and a raw body."""
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


def echo(environ, start_response):
    """Answer with method, path and body; sleep first when the path says so (to test ordering)."""
    if environ["PATH_INFO"].startswith("/sleep"):
        gevent.sleep(float(environ["QUERY_STRING"]))
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} ".encode() + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
    return [text]


def test_keepalive_serves_many_requests_on_one_connection(serve):
    st = serve(echo)
    with connect(st.port) as sock:
        reader = Reader(sock)
        for i in range(5):
            sock.sendall(H(f"GET /{i} HTTP/1.1\nHost: x\n"))
            status, headers, body = reader.response()
            assert (status, body) == (200, f"GET /{i} ".encode())
            assert "connection" not in headers
            assert "date" in headers and "server" not in headers


def test_http10_closes_unless_keepalive_asked(serve):
    st = serve(echo)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET /a HTTP/1.0\nConnection: keep-alive\n"))
        status, headers, _ = reader.response()
        assert headers["connection"] == "keep-alive"
        sock.sendall(H("GET /b HTTP/1.0\n"))
        status, headers, body = reader.response()
        assert (status, body, headers["connection"]) == (200, b"GET /b ", "close")
        assert reader.closed()


def test_connection_close_is_honoured(serve):
    st = serve(echo)
    with connect(st.port) as sock:
        sock.sendall(H("GET / HTTP/1.1\nHost: x\nConnection: close\n"))
        reader = Reader(sock)
        assert reader.response()[1]["connection"] == "close"
        assert reader.closed()


def test_pipelined_requests_answered_in_order(serve):
    """Slow and fast requests in one packet come back in order, each response whole."""
    st = serve(echo)
    with connect(st.port) as sock:
        sock.sendall(
            H("GET /sleep?0.2 HTTP/1.1\nHost: x\n")
            + H("POST /b HTTP/1.1\nHost: x\nContent-Length: 3\n", b"xyz")
            + H("GET /sleep?0.05 HTTP/1.1\nHost: x\n")
            + H("POST /d HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"2\r\nhi\r\n0\r\n\r\n")
            + H("GET /e HTTP/1.1\nHost: x\nConnection: close\n")
        )
        reader = Reader(sock)
        bodies = [reader.response()[2] for _ in range(5)]
        assert bodies == [b"GET /sleep ", b"POST /b xyz", b"GET /sleep ", b"POST /d hi", b"GET /e "]
        assert reader.closed()


def test_unread_body_is_discarded_and_connection_reused(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    st = serve(app)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("POST / HTTP/1.1\nHost: x\nContent-Length: 5\n", b"ab"))
        assert reader.response()[::2] == (200, b"ok")
        sock.sendall(b"cde" + H("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"1\r\na\r\n0\r\n\r\n"))
        sock.sendall(H("GET / HTTP/1.1\nHost: x\n"))
        assert [reader.response()[0] for _ in range(2)] == [200, 200]


def test_chunked_body_is_streamed_to_the_app(serve):
    """With no read-ahead the app sees the first chunk before the client sends the second."""

    def app(environ, start_response):
        write = start_response("200 OK", [])
        inp = environ["wsgi.input"]
        while line := inp.readline():
            write(b"got " + line)
        return []

    st = serve(app, limits=Limits(chunked_readahead=0))
    with connect(st.port) as sock:
        sock.sendall(H("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"6\r\nfirst\n\r\n"))
        assert b"got first\n" in sock.recv(65536)
        sock.sendall(b"7\r\nsecond\n\r\n0\r\nX-Trailer: ignored\r\n\r\n")
        sock.sendall(H("GET / HTTP/1.1\nHost: x\nContent-Length: 0\n"))
        reader = Reader(sock)
        data = b""
        while b"0\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert b"got second\n" in data
        reader.buf = data.split(b"0\r\n\r\n", 1)[1]
        assert reader.response()[0] == 200


def test_input_read_readline_and_iteration(serve):
    def app(environ, start_response):
        inp = environ["wsgi.input"]
        parts = [inp.read(3), inp.readline(), inp.readline(2), inp.readline(), list(inp), inp.read(), inp.read(5)]
        body = repr(parts).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    payload = b"abcdef\nghij\nline3\nline4\n"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(payload[i : i + 4]), payload[i : i + 4]) for i in range(0, len(payload), 4))
    expected = repr([b"abc", b"def\n", b"gh", b"ij\n", [b"line3\n", b"line4\n"], b"", b""]).encode()
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H(f"POST / HTTP/1.1\nHost: x\nContent-Length: {len(payload)}\n", payload))
        assert reader.response()[2] == expected
        sock.sendall(H("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", chunked + b"0\r\n\r\n"))
        assert reader.response()[2] == expected


def test_response_framing_chunked_or_close_delimited(serve):
    """No Content-Length: chunked on HTTP/1.1, close-delimited on HTTP/1.0; lists get a Content-Length."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/list":
            return [b"a", b"b"]
        return (piece for piece in [b"", b"one", b"", b"two"])

    st = serve(app)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET /gen HTTP/1.1\nHost: x\n"))
        status, headers, body = reader.response()
        assert (headers["transfer-encoding"], body) == ("chunked", b"onetwo")
        sock.sendall(H("GET /list HTTP/1.1\nHost: x\n"))
        status, headers, body = reader.response()
        assert (headers["content-length"], body) == ("2", b"ab")
    with connect(st.port) as sock:
        sock.sendall(H("GET /gen HTTP/1.0\n"))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert "transfer-encoding" not in headers and "content-length" not in headers
        assert (headers["connection"], body) == ("close", b"onetwo")


def test_head_sends_headers_without_body(serve):
    """HEAD keeps the app's Content-Length and sends no body: the next response follows directly."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]

    st = serve(app)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("HEAD / HTTP/1.1\nHost: x\n") + H("GET / HTTP/1.1\nHost: x\n"))
        status, headers, _ = reader.response(head_only=True)
        assert (status, headers["content-length"]) == (200, "5")
        status, headers, body = reader.response()
        assert (status, body) == (200, b"hello")


def test_expect_continue_sent_only_when_the_app_reads(serve):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/read":
            gevent.sleep(0.2)
            body = environ["wsgi.input"].read()
        else:
            body = b"not read"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    st = serve(app)
    with connect(st.port) as sock:
        sock.sendall(H("POST /read HTTP/1.1\nHost: x\nContent-Length: 4\nExpect: 100-continue\n"))
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(5)
        reader = Reader(sock)
        assert reader.response() == (100, {}, b"")
        sock.sendall(b"data")
        assert reader.response()[2] == b"data"
    with connect(st.port) as sock:
        sock.sendall(H("POST /skip HTTP/1.1\nHost: x\nContent-Length: 4\nExpect: 100-continue\n"))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, body, headers["connection"]) == (200, b"not read", "close")


def test_environ_passes_wsgiref_validator(serve):
    def app(environ, start_response):
        inp = environ["wsgi.input"]
        body = inp.read(int(environ.get("CONTENT_LENGTH") or 0)) if "CONTENT_LENGTH" in environ else inp.read(1000)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    st = serve(validator(app))
    requests = [
        H("GET /a/b?x=1&y=2 HTTP/1.1\nHost: x\nAccept: */*\n"),
        H("POST /p HTTP/1.1\nHost: x\nContent-Type: text/plain\nContent-Length: 3\n", b"abc"),
        H("POST /c HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"3\r\nabc\r\n0\r\n\r\n"),
        H("HEAD / HTTP/1.1\nHost: x\n"),
        H("GET /%C3%A9 HTTP/1.0\nConnection: keep-alive\n"),
    ]
    with connect(st.port) as sock:
        reader = Reader(sock)
        for raw, body in zip(requests, [b"", b"abc", b"abc", b"", b""]):
            sock.sendall(raw)
            status, _, got = reader.response(head_only=raw.startswith(b"HEAD"))
            assert (status, got) == (200, body)


def test_environ_contents(serve):
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    st = serve(app)
    with connect(st.port) as sock:
        sock.sendall(H(
            "POST /caf%C3%A9/a%2Fb?q=%20x HTTP/1.1\nHost: example.org\nContent-Type: application/json\n"
            "Content-Length: 2\nX-Dup: one\nx-dup: two\nX_Forwarded_For: spoofed\nX-Forwarded-For: real\n",
            b"{}",
        ))
        assert Reader(sock).response()[0] == 204
        client = sock.getsockname()
    assert seen["PATH_INFO"] == "/caf\xc3\xa9/a/b"
    assert seen["RAW_URI"] == seen["REQUEST_URI"] == "/caf%C3%A9/a%2Fb?q=%20x"
    assert seen["QUERY_STRING"] == "q=%20x"
    assert (seen["CONTENT_TYPE"], seen["CONTENT_LENGTH"]) == ("application/json", "2")
    assert seen["HTTP_X_DUP"] == "one, two"
    assert seen["HTTP_X_FORWARDED_FOR"] == "real"
    assert seen["HTTP_HOST"] == "example.org"
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == (client[0], str(client[1]))
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("127.0.0.1", str(st.port))
    assert (seen["SERVER_PROTOCOL"], seen["REQUEST_METHOD"], seen["SCRIPT_NAME"]) == ("HTTP/1.1", "POST", "")
    assert seen["wsgi.url_scheme"] == "http"
    assert (seen["wsgi.multithread"], seen["wsgi.multiprocess"], seen["wsgi.run_once"]) == (False, True, False)
    assert seen["wsgi.errors"] is sys.stderr


def test_absolute_form_target(serve):
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return []

    st = serve(app)
    with connect(st.port) as sock:
        sock.sendall(H("GET http://example.org/x/y?z=1 HTTP/1.1\nHost: example.org\n"))
        assert Reader(sock).response()[0] == 200
    assert (seen["PATH_INFO"], seen["QUERY_STRING"]) == ("/x/y", "z=1")


def test_app_exception_gives_500_traceback_and_close(serve):
    errors = io.StringIO()

    def app(environ, start_response):
        raise RuntimeError("boom in app")

    st = serve(app, base_environ={"wsgi.errors": errors})
    with connect(st.port) as sock:
        sock.sendall(H("GET / HTTP/1.1\nHost: x\n"))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (status, headers["connection"]) == (500, "close")
        assert 0 < len(body) < 100 and b"boom" not in body
        assert reader.closed()
    assert "Traceback" in errors.getvalue() and "RuntimeError: boom in app" in errors.getvalue()


def test_exception_after_headers_closes_connection(serve):
    closed = []

    class Body:
        def __iter__(self):
            yield b"partial"
            raise RuntimeError("late failure")

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    st = serve(app, base_environ={"wsgi.errors": io.StringIO()})
    with connect(st.port) as sock:
        sock.sendall(H("GET / HTTP/1.1\nHost: x\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"partial" in data and not data.endswith(b"0\r\n\r\n")
    assert closed == [True]


def test_start_response_exc_info(serve):
    """A second start_response needs exc_info; before headers it replaces them, after it re-raises."""

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        write = start_response("200 OK", [("Content-Length", "2")])
        if path == "/replace":
            try:
                raise ValueError("handled")
            except ValueError:
                start_response("503 Service Unavailable", [("Content-Length", "4")], sys.exc_info())
            return [b"oops"]
        if path == "/twice":
            start_response("500 Nope", [])
        if path == "/after":
            write(b"ok")
            try:
                raise KeyError("after headers")
            except KeyError:
                start_response("500 Error", [], sys.exc_info())
        return [b"ok"]

    st = serve(app, base_environ={"wsgi.errors": io.StringIO()})
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET /replace HTTP/1.1\nHost: x\n"))
        assert reader.response()[::2] == (503, b"oops")
        sock.sendall(H("GET /twice HTTP/1.1\nHost: x\n"))
        assert reader.response()[0] == 500
        assert reader.closed()
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET /after HTTP/1.1\nHost: x\n"))
        assert reader.response()[::2] == (200, b"ok")
        assert reader.closed()


def test_write_callable_and_close_always_called(serve):
    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"from write, ")
        return Body([b"then iterable"])

    st = serve(app)
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET / HTTP/1.1\nHost: x\n"))
        status, headers, body = reader.response()
        assert (headers["transfer-encoding"], body) == ("chunked", b"from write, then iterable")
        sock.sendall(H("HEAD / HTTP/1.1\nHost: x\n"))
        assert reader.response(head_only=True)[0] == 200
    eventually(lambda: len(closed) == 2, 2, "both responses closed")
    assert closed == [True, True]


def test_bad_response_headers_give_500(serve):
    """Header injection (CR/LF in a value) and Transfer-Encoding from the app are refused with 500."""

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/inject":
            start_response("200 OK", [("X-A", "a\r\nSet-Cookie: evil=1")])
        else:
            start_response("200 OK", [("Transfer-Encoding", "chunked")])
        return [b"x"]

    st = serve(app, base_environ={"wsgi.errors": io.StringIO()})
    for path in ("/inject", "/te"):
        with connect(st.port) as sock:
            sock.sendall(H(f"GET {path} HTTP/1.1\nHost: x\n"))
            reader = Reader(sock)
            status, headers, _ = reader.response()
            assert status == 500 and "set-cookie" not in headers
            assert reader.closed()


def test_short_content_length_closes_and_long_is_truncated(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "5")])
        return iter([b"ab"]) if environ["PATH_INFO"] == "/short" else iter([b"abcdefgh"])

    st = serve(app)
    with connect(st.port) as sock:
        sock.sendall(H("GET /long HTTP/1.1\nHost: x\n") + H("GET /long HTTP/1.1\nHost: x\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.endswith(b"\r\n\r\nabcde") and data.count(b"HTTP/1.1") == 1
    with connect(st.port) as sock:
        sock.sendall(H("GET /short HTTP/1.1\nHost: x\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.endswith(b"\r\n\r\nab")


def test_date_kept_when_app_sets_it(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Date", "Mon, 01 Jan 2024 00:00:00 GMT")])
        return []

    st = serve(app)
    with connect(st.port) as sock:
        sock.sendall(H("GET / HTTP/1.1\nHost: x\n"))
        raw = sock.recv(65536)
    assert raw.count(b"Date:") == 1 and b"2024" in raw


def test_idle_keepalive_connection_closed(serve):
    st = serve(echo, limits=Limits(keepalive_timeout=0.3))
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET / HTTP/1.1\nHost: x\n"))
        assert reader.response()[0] == 200
        started = time.monotonic()
        assert reader.closed()
        assert 0.2 < time.monotonic() - started < 2


def test_upgrade_request_served_then_closed(serve):
    st = serve(echo)
    with connect(st.port) as sock:
        sock.sendall(H("GET /ws HTTP/1.1\nHost: x\nConnection: upgrade\nUpgrade: websocket\n"))
        reader = Reader(sock)
        assert reader.response()[::2] == (200, b"GET /ws ")
        assert reader.closed()


def test_access_log(serve):
    lines = []
    st = serve(echo, access_log=lambda *args: lines.append(args))
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("GET /a?b=1 HTTP/1.1\nHost: x\n") + H("GET / HTTP/1.1\n"))
        reader.response()
        assert reader.response()[0] == 400
    eventually(lambda: len(lines) >= 2, 2, "two access log lines")
    assert lines[0][:3] == ("GET", "/a?b=1", 200) and lines[0][3] >= 0
    assert lines[1][2] == 400


def test_drain_closes_idle_finishes_inflight_and_kills_stuck(serve):
    def app(environ, start_response):
        gevent.sleep(float(environ["QUERY_STRING"]))
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    st = serve(app)
    idle, inflight, stuck = connect(st.port), connect(st.port), connect(st.port)
    with idle, inflight, stuck:
        idle.sendall(H("GET /?0 HTTP/1.1\nHost: x\n"))
        assert Reader(idle).response()[0] == 200
        inflight.sendall(H("GET /?0.3 HTTP/1.1\nHost: x\n"))
        stuck.sendall(H("GET /?30 HTTP/1.1\nHost: x\n"))
        eventually(lambda: st.call(lambda s: s.active_requests) == 2, 5, "two requests in the app")
        st.call(lambda s: s.stop_accepting())
        result = []
        drainer = threading.Thread(target=lambda: result.append(st.call(lambda s: (s.drain(0.8), s.active_requests))))
        drainer.start()
        idle.settimeout(0.5)
        assert idle.recv(100) == b""
        reader = Reader(inflight)
        status, headers, body = reader.response()
        assert (status, body, headers["connection"]) == (200, b"done", "close")
        assert reader.closed()
        drainer.join(5)
        assert result == [(1, 0)]
        assert stuck.recv(100) == b""
        with pytest.raises(ConnectionRefusedError):
            connect(st.port, timeout=0.5)


def test_server_in_process_with_gevent_sockets():
    """serve_forever returns after stop_accepting once connections end (the worker's shutdown path)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = HTTPServer(listener, echo)
    runner = gevent.spawn(server.serve_forever)
    gevent.sleep(0)
    from gevent import socket as gsocket

    client = gsocket.create_connection(listener.getsockname())
    client.sendall(H("GET /x HTTP/1.1\nHost: x\nConnection: close\n"))
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    assert data.endswith(b"GET /x ")
    server.stop_accepting()
    assert runner.join(timeout=2) is None and runner.dead


def test_a_bottle_app_reads_a_chunked_body(serve):
    """The engine de-chunks, so Transfer-Encoding is not in the environ (Bottle would de-chunk again);
    a short chunked body gets a CONTENT_LENGTH, which Bottle needs to read anything."""
    import bottle

    app = bottle.Bottle()
    seen = {}

    @app.post("/items")
    def create():
        seen.update(bottle.request.environ)
        return {"got": bottle.request.json}

    st = serve(app)
    with connect(st.port) as sock:
        sock.sendall(H("POST /items HTTP/1.1\nHost: x\nContent-Type: application/json\nTransfer-Encoding: chunked\n",
                       b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n"))
        status, _, body = Reader(sock).response()
    assert (status, body) == (200, b'{"got": {"a": 1}}')
    assert "HTTP_TRANSFER_ENCODING" not in seen and seen["microkit.chunked"] is True
    assert seen["CONTENT_LENGTH"] == "8" and seen["wsgi.input_terminated"] is True


def test_a_long_chunked_body_streams_without_content_length(serve):
    seen = {}

    def app(environ, start_response):
        seen["length"] = environ.get("CONTENT_LENGTH")
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(str(len(body)))))])
        return [str(len(body)).encode()]

    st = serve(app, limits=Limits(chunked_readahead=10))
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"8\r\n12345678\r\n0\r\n\r\n"))
        assert reader.response()[2] == b"8" and seen["length"] == "8"
        sock.sendall(H("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n", b"8\r\n12345678\r\n"))
        time.sleep(0.05)
        sock.sendall(b"8\r\n12345678\r\n0\r\n\r\n")
        assert reader.response()[2] == b"16" and seen["length"] is None


def test_raw_handler_answers_or_passes_to_the_app(serve):
    """The raw-handler extension point: it sees the head as bytes and answers, or returns None for WSGI."""
    heads = []

    def raw(request):
        heads.append((request.method, request.target, request.headers, request.peer, request.content_length))
        if request.target.startswith(b"/wsgi"):
            return None
        body = request.input.read()
        close = request.must_close()
        request.keep_alive = not close
        request.send(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n%s\r\n%s"
                     % (len(body), b"Connection: close\r\n" if close else b"", body))
        return 201

    log = []
    st = serve(echo, raw_handler=raw, access_log=lambda *entry: log.append(entry[:3]))
    with connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(H("POST /raw HTTP/1.1\nHost: x\nX-Two: a\nx-two: b\nX_Under: dropped\nContent-Length: 3\n", b"abc"))
        assert reader.response() == (201, {"content-length": "3"}, b"abc")
        sock.sendall(H("POST /wsgi HTTP/1.1\nHost: x\nContent-Length: 2\n", b"hi"))
        assert reader.response()[2] == b"POST /wsgi hi"
        sock.sendall(H("GET /raw HTTP/1.1\nHost: x\nConnection: close\n"))
        status, headers, _ = reader.response()
        assert (status, headers["connection"]) == (201, "close")
        assert sock.recv(10) == b""
    method, target, headers, peer, length = heads[0]
    assert (method, target, peer, length) == ("POST", b"/raw", "127.0.0.1", 3)
    assert headers == [(b"Host", b"x"), (b"X-Two", b"a"), (b"x-two", b"b"), (b"Content-Length", b"3")]
    assert log == [("POST", "/raw", 201), ("POST", "/wsgi", 200), ("GET", "/raw", 201)]


def test_raw_handler_errors_are_answered_like_app_errors(serve):
    def raw(request):
        if request.target == b"/late":
            request.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        raise RuntimeError("boom")

    errors = io.StringIO()
    st = serve(echo, raw_handler=raw, base_environ={"wsgi.errors": errors})
    with connect(st.port) as sock:
        sock.sendall(H("GET /early HTTP/1.1\nHost: x\n"))
        status, headers, _ = Reader(sock).response()
        assert (status, headers["connection"]) == (500, "close")
    with connect(st.port) as sock:
        sock.sendall(H("GET /late HTTP/1.1\nHost: x\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.endswith(b"abc"), "the connection just closes once a response started"
    assert errors.getvalue().count("RuntimeError: boom") == 2


def test_an_app_attribute_provides_the_raw_handler(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "4")])
        return [b"wsgi"]

    app.microkit_raw_handler = lambda request: None
    st = serve(app)
    assert st.server.raw_handler is app.microkit_raw_handler
