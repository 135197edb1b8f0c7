"""Malformed and oversized requests: each is answered with its status and the connection is closed."""

import time

import pytest

from support.http import Reader, ServerThread, connect
from microkit.http import Limits


def echo(environ, start_response):
    """Answer 200 with the request body."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def server():
    with ServerThread(echo, limits=Limits(max_request_line=1024, max_header_bytes=4096, max_headers=20, max_body=100)) as st:
        yield st


def H(head: str, body: bytes = b"") -> bytes:
    """A request from a head written with \\n line ends (turned into CRLF) and a raw body."""
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


POST = "POST / HTTP/1.1\nHost: x\n"
CORPUS = [
    ("cl-and-te", H(POST + "Content-Length: 5\nTransfer-Encoding: chunked\n", b"0\r\n\r\n"), 400),
    ("te-and-cl", H(POST + "Transfer-Encoding: chunked\nContent-Length: 5\n", b"0\r\n\r\n"), 400),
    ("cl-duplicate-equal", H(POST + "Content-Length: 1\nContent-Length: 1\n", b"a"), 400),
    ("cl-duplicate-different", H(POST + "Content-Length: 1\nContent-Length: 2\n", b"ab"), 400),
    ("cl-plus", H(POST + "Content-Length: +5\n", b"abcde"), 400),
    ("cl-list", H(POST + "Content-Length: 5,5\n", b"abcde"), 400),
    ("cl-negative", H(POST + "Content-Length: -1\n"), 400),
    ("cl-trailing-garbage", H(POST + "Content-Length:  5x\n", b"abcde"), 400),
    ("cl-empty", H(POST + "Content-Length: \n"), 400),
    ("cl-hex", H(POST + "Content-Length: 0x5\n", b"abcde"), 400),
    ("te-chunked-identity", H(POST + "Transfer-Encoding: chunked, identity\n", b"0\r\n\r\n"), 400),
    ("te-xchunked", H(POST + "Transfer-Encoding: xchunked\n", b"0\r\n\r\n"), 400),
    ("te-duplicate", H(POST + "Transfer-Encoding: chunked\nTransfer-Encoding: chunked\n", b"0\r\n\r\n"), 400),
    ("te-gzip-chunked", H(POST + "Transfer-Encoding: gzip, chunked\n", b"0\r\n\r\n"), 400),
    ("te-identity", H(POST + "Transfer-Encoding: identity\n"), 400),
    ("obs-fold-space", H("GET / HTTP/1.1\nHost: x\nX-A: a\n b\n"), 400),
    ("obs-fold-tab", H("GET / HTTP/1.1\nHost: x\nX-A: a\n\tb\n"), 400),
    ("space-before-first-header", H("GET / HTTP/1.1\n Host: x\n"), 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    ("bare-lf-only", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("chunk-size-not-hex", H(POST + "Transfer-Encoding: chunked\n", b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-size-space", H(POST + "Transfer-Encoding: chunked\n", b"3 \r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-data-too-long", H(POST + "Transfer-Encoding: chunked\n", b"3\r\nabcdef\r\n0\r\n\r\n"), 400),
    ("chunk-bare-lf", H(POST + "Transfer-Encoding: chunked\n", b"3\nabc\r\n0\r\n\r\n"), 400),
    ("header-name-paren", H("GET / HTTP/1.1\nHost: x\nX(a): 1\n"), 400),
    ("header-name-space", H("GET / HTTP/1.1\nHost: x\nX a: 1\n"), 400),
    ("space-before-colon", H("GET / HTTP/1.1\nHost: x\nX-A : 1\n"), 400),
    ("ctl-in-header-value", H("GET / HTTP/1.1\nHost: x\nX-A: a\x01b\n"), 400),
    ("request-line-garbage", b"HELLO\r\n\r\n", 400),
    ("request-line-binary", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    ("request-line-extra-token", H("GET / HTTP/1.1 extra\nHost: x\n"), 400),
    ("http-0.9-simple-request", b"GET /\r\n\r\n", 505),
    ("nul-in-target", H("GET /a\x00b HTTP/1.1\nHost: x\n"), 400),
    ("http11-without-host", H("GET / HTTP/1.1\n"), 400),
    ("duplicate-host", H("GET / HTTP/1.1\nHost: a\nHost: b\n"), 400),
    ("http-version-1.2", H("GET / HTTP/1.2\nHost: x\n"), 400),
    ("http-version-2.0", H("GET / HTTP/2.0\nHost: x\n"), 505),
    ("uri-too-long", H("GET /" + "a" * 2000 + " HTTP/1.1\nHost: x\n"), 414),
    ("too-many-headers", H("GET / HTTP/1.1\nHost: x\n" + "".join(f"X-{i}: {i}\n" for i in range(30))), 431),
    ("header-block-too-big", H("GET / HTTP/1.1\nHost: x\n" + "".join(f"X-{i}: {'v' * 400}\n" for i in range(15))), 431),
    ("one-header-too-big", H("GET / HTTP/1.1\nHost: x\nX-Big: " + "v" * 5000 + "\n"), 431),
    ("content-length-over-max-body", H(POST + "Content-Length: 101\n", b"a" * 101), 413),
    ("chunked-over-max-body", H(POST + "Transfer-Encoding: chunked\n", b"40\r\n" + b"a" * 64 + b"\r\n" + b"40\r\n" + b"a" * 64 + b"\r\n0\r\n\r\n"), 413),
]


@pytest.mark.parametrize("request_bytes,status", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_rejected_and_closed(server, request_bytes, status):
    """The server answers `status` with a small body and then closes the connection."""
    with connect(server.port) as sock:
        sock.sendall(request_bytes)
        reader = Reader(sock)
        got, headers, body = reader.response()
        assert got == status
        assert headers["connection"] == "close"
        assert 0 < len(body) < 100
        assert reader.closed()


def test_rejection_after_valid_pipelined_request(server):
    """A bad request after a good one in the same packet: the good one is answered first, then 400 and close."""
    with connect(server.port) as sock:
        sock.sendall(H(POST + "Content-Length: 2\n", b"ok") + H(POST + "Content-Length: 1\nContent-Length: 1\n", b"a"))
        reader = Reader(sock)
        assert reader.response()[::2] == (200, b"ok")
        assert reader.response()[0] == 400
        assert reader.closed()


def test_header_line_too_long_in_pieces(server):
    """A header line trickled in many sends without an end is refused once it passes max_header_bytes."""
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(10):
            sock.sendall(b"v" * 1000)
            time.sleep(0.01)
        reader = Reader(sock)
        assert reader.response()[0] == 431
        assert reader.closed()


def test_slowloris_gets_408():
    """Header bytes trickled slower than header_timeout allows: 408, then close."""
    with ServerThread(echo, limits=Limits(header_timeout=0.5)) as st, connect(st.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        sock.settimeout(0.1)
        received = b""
        while not received and time.monotonic() - started < 3:
            try:
                sock.sendall(b"X-a: b\r\n")
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        assert 0.4 < time.monotonic() - started < 2
        sock.settimeout(5)
        reader = Reader(sock)
        reader.buf = received
        assert reader.response()[0] == 408
        assert reader.closed()


def test_body_timeout_gets_408():
    """A body that stops arriving: the app's read fails and the client gets 408 and a close."""
    with ServerThread(echo, limits=Limits(header_timeout=0.3)) as st, connect(st.port) as sock:
        sock.sendall(H(POST + "Content-Length: 10\n", b"abc"))
        reader = Reader(sock)
        assert reader.response()[0] == 408
        assert reader.closed()


def test_fresh_silent_connection_closed_without_response():
    """A connection that sends nothing is closed after header_timeout without a 408."""
    with ServerThread(echo, limits=Limits(header_timeout=0.3)) as st, connect(st.port) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 2


def test_blank_lines_do_not_keep_an_idle_connection_open():
    """After a response, CRLFs (which llhttp skips) trickled forever must not renew the keep-alive wait."""
    with ServerThread(echo, limits=Limits(header_timeout=0.5, keepalive_timeout=0.5)) as st, connect(st.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        assert reader.response()[0] == 200
        started = time.monotonic()
        sock.settimeout(0.2)
        closed = False
        while time.monotonic() - started < 4:
            try:
                sock.sendall(b"\r\n")
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - started < 2


def test_a_client_sending_a_whole_body_over_the_limit_reads_the_413():
    """urllib sends all 20 MB before reading: the engine lingers (lingering_time/lingering_timeout) so
    the client reads the 413 instead of a broken pipe."""
    import urllib.error
    import urllib.request

    with ServerThread(echo, limits=Limits(max_body=1024 * 1024)) as st:
        for _ in range(3):
            req = urllib.request.Request(f"http://127.0.0.1:{st.port}/", data=b"x" * (20 * 1024 * 1024), method="POST")
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(req, timeout=30)
            assert caught.value.code == 413
