"""The gateway's upstream client (microkit/gateway/upstream.py) against real sockets in this process:
a pooled connection the instance closed while idle is not reused, the quick head parse and httptools
give the client the same answer, a body longer than announced ends the connection, reads time out.
Every test runs with the compiled quick parse (microkit/gateway/_quickhead.c) and its pure-Python twin."""

from __future__ import annotations

import random
import time

import gevent
import pytest
from gevent.server import StreamServer

from microkit.gateway import upstream
from microkit.gateway.proxy import Proxy
from microkit.gateway.upstream import BrokenResponse, Pool, Response, TimedOut
from microkit.http.request import Request

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def serve(pieces: list[bytes], then_close: float | None = None, pause: float = 0.05) -> StreamServer:
    """A backend answering each request with `pieces` (sent apart, `pause` between them); it closes the
    connection `then_close` seconds after an answer when given."""
    def handle(sock, _address) -> None:
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
            while b"\r\n\r\n" in data:
                _, _, data = data.partition(b"\r\n\r\n")
                for number, piece in enumerate(pieces):
                    if number:
                        gevent.sleep(pause)
                    sock.sendall(piece)
                if then_close is not None:
                    gevent.sleep(then_close)
                    sock.close()
                    return
    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server


def compiled():
    try:
        from microkit.gateway._quickhead import parse
    except ImportError:
        pytest.skip("microkit/gateway/_quickhead.c is not built (pip install -e . with a C compiler)")
    return parse


@pytest.fixture(autouse=True, params=["c", "python"])
def quick_head(request, monkeypatch):
    parse = compiled() if request.param == "c" else upstream._quick_head
    monkeypatch.setattr(upstream, "quick_head", parse)
    return parse


@pytest.fixture
def pool():
    pool = Pool()
    yield pool
    pool.close()


def exchange(pool: Pool, server: StreamServer, head_only: bool = False) -> Response:
    conn, _ = pool.acquire(("127.0.0.1", server.server_port))
    conn.send(GET, None, False, 5.0)
    return Response(conn, pool, head_only, 5.0)


def test_a_pooled_connection_the_instance_closed_while_idle_is_not_reused(pool):
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], then_close=0.05)
    try:
        first = exchange(pool, server)
        assert first.take() == b"ok"
        live, reused = pool.acquire(("127.0.0.1", server.server_port))
        assert reused and live is first.conn, "a connection still open is reused"
        pool.release(live)
        gevent.sleep(0.3)  # the instance closes it meanwhile, as a keep-alive timeout does
        again, reused = pool.acquire(("127.0.0.1", server.server_port))
        assert not reused and again is not first.conn
        again.close()
    finally:
        server.stop()


def relayed(response: Response, method: str = "GET", vary: bytes | None = None) -> tuple[bytes, list, bytes]:
    """What the client gets: (status line, header lines without Date, body), through Proxy.relay."""
    sent: list[bytes] = []
    base = {"REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "gw", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    request = Request(method, b"/", "HTTP/1.1", [(b"Host", b"gw")], ["HTTP_HOST"], {"HTTP_HOST": b"gw"}, None,
                      False, None, True, base, sent.append, lambda: False)
    Proxy(response.pool).relay(request, response, b"rid", [b"X-Check: 1\r\n"], 5.0, vary)
    data = b"".join(sent)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = [(name.lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)
               if name.lower() != b"date"]
    return status, headers, body


BJOERN = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 26\r\nConnection: Keep-Alive\r\n\r\n"
ANSWERS = [
    [BJOERN + b'{"hello": "world", "n": 1}'],
    [b"HTTP/1.1 404 Not Found\r\nX-Request-Id: theirs\r\nKeep-Alive: timeout=5\r\nProxy-Thing: x\r\n"
     b"Date: Tue, 01 Dec 2026 10:00:00 GMT\r\nVary: Accept\r\nContent-length:4\r\nSet-Cookie: a=1\r\n"
     b"Set-Cookie: b=2\r\n\r\nnope"],
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"],
    [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\nETag: \"x\"\r\n\r\n"],
    [BJOERN, b'{"hello": "world", "n": 1}'],  # the body after the head, in reads of its own
    [BJOERN + b'{"hello": ', b'"world", "n": 1}'],
]


@pytest.mark.parametrize("pieces", ANSWERS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_quick_head_parse_and_httptools_give_the_client_the_same_answer(pool, monkeypatch, pieces, method):
    if method == "HEAD":  # the same head, without a body
        pieces = [b"".join(pieces).partition(b"\r\n\r\n")[0] + b"\r\n\r\n"]
    server = serve(pieces)
    try:
        quick = exchange(pool, server, method == "HEAD")
        assert quick.block is not None, "the quick parse took this head"
        fast = relayed(quick, method, b"Origin")
        with monkeypatch.context() as patch:
            patch.setattr(Response, "_quick", lambda self, data, head_only: False)
            parsed = exchange(pool, server, method == "HEAD")
            assert parsed.block is None
            slow = relayed(parsed, method, b"Origin")
        assert fast == slow
        assert (b"x-request-id", b"rid") in fast[1] and (b"x-check", b"1") in fast[1]
    finally:
        server.stop()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",  # chunked
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
])
def test_heads_the_quick_parse_does_not_take_go_through_httptools(pool, head):
    server = serve([head])
    try:
        response = exchange(pool, server)
        assert response.block is None
        status, headers, body = relayed(response)
        assert status == b"HTTP/1.1 200 OK" and body in (b"ok", b"2\r\nok\r\n0\r\n\r\n")
        assert b"x-secret" not in dict(headers)
    finally:
        server.stop()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Odd: a\x01b\r\n\r\nok",  # a control byte
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Odd: a\nX-Split: b\r\n\r\nok",  # a bare LF
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Name: b\r\n\r\nok",
])
def test_malformed_heads_are_refused_as_httptools_refuses_them(pool, head):
    server = serve([head])
    try:
        with pytest.raises(BrokenResponse):
            exchange(pool, server)
    finally:
        server.stop()


def test_a_body_longer_than_announced_ends_the_connection(pool):
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no", b"kEXTRA"])
    try:
        response = exchange(pool, server)
        assert b"".join(response.body()) == b"ok"
        assert not pool._idle[("127.0.0.1", server.server_port)], "a connection with stray bytes is not pooled"
    finally:
        server.stop()


def test_a_silent_instance_times_out_and_a_stalled_body_breaks(pool):
    silent = serve([])
    stalled = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"])
    try:
        conn, _ = pool.acquire(("127.0.0.1", silent.server_port))
        conn.send(GET, None, False, 1.0)
        started = time.monotonic()
        with pytest.raises(TimedOut):
            Response(conn, pool, False, 0.2)
        assert 0.15 < time.monotonic() - started < 2.0
        conn.close()
        response = exchange(pool, stalled)
        response.timeout = 0.2
        with pytest.raises(BrokenResponse):
            b"".join(response.body())
    finally:
        silent.stop()
        stalled.stop()


def test_the_compiled_and_the_python_quick_parse_agree_on_mutated_heads():
    parse = compiled()
    heads = [BJOERN + b'{"hello": "world", "n": 1}', ANSWERS[1][0], ANSWERS[2][0], ANSWERS[3][0],
             b"HTTP/1.1 200 OK\r\nContent-Length:  12 \t\r\nX: \xc3\xa9\r\n\r\n"]
    rng = random.Random(8)
    taken = 0
    for _ in range(20000):
        data = bytearray(rng.choice(heads))
        for _ in range(rng.randint(0, 3)):  # insert, delete or replace a byte a parser must care about
            at, byte = rng.randrange(len(data)), rng.choice(b"\r\n \t:aZ0\x00\x7f\x80-")
            choice = rng.random()
            if choice < 0.4:
                data[at:at] = bytes([byte])
            elif choice < 0.8:
                del data[at]
            else:
                data[at] = byte
        data = bytes(data)
        assert parse(data) == upstream._quick_head(data), data
        taken += parse(data) is not None
    assert 2000 < taken < 18000, "both kinds of heads were tried"
