"""Protocol cases real clients trip on, through a real gateway process (issue 8): early answers that
reach a client still sending, HTTP/1.0 without Host, absolute-form targets, refusals that are logged
and shaped like every other error, slow bodies, per-route body limits."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import requests

from support.gateway import Processes, connections_to, get, read_response, request


@pytest.fixture
def procs(tmp_path):
    processes = Processes(tmp_path)
    yield processes
    processes.close()


def test_urllib_sending_a_body_over_the_limit_gets_413_not_a_broken_pipe(procs):
    """urllib sends the whole 20 MB before reading: the gateway answers early, lingers, then closes."""
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"], max_body="10MB")
    body = b"x" * (20 * 1024 * 1024)
    for _ in range(5):
        req = urllib.request.Request(f"http://127.0.0.1:{gw}/users/1", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=30)
        assert caught.value.code == 413
        answer = json.loads(caught.value.read())
        assert answer["status"] == 413 and caught.value.headers["Connection"] == "close"


def test_lingering_ends_when_the_client_stops_sending(procs):
    """A client that neither finishes nor closes is dropped after lingering_timeout."""
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"], max_body="1KB",
                       settings="lingering_timeout = 0.5\nlingering_time = 5")
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(b"POST /users/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        status, headers, _ = read_response(sock)
        assert status == 413 and headers["connection"] == ["close"]
        started = time.monotonic()
        assert sock.recv(100) == b""  # the gateway half-closed after its answer
        sock.sendall(b"x" * 1000)  # still read and dropped: no reset
        sock.settimeout(10)
        while True:
            try:
                if not sock.recv(100):
                    break
            except ConnectionResetError:
                break
        assert time.monotonic() - started < 4


def test_http10_without_host_is_forwarded_with_a_host(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    status, _, body = request(gw, b"GET /users/1 HTTP/1.0\r\n\r\n")
    seen = json.loads(body)
    assert status == 200 and seen["headers"]["HOST"] == f"127.0.0.1:{gw}"


def test_absolute_form_targets_are_routed_by_their_path(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    status, _, body = request(gw, b"GET http://gw.test/users/1?a=b HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    assert status == 200 and json.loads(body)["uri"] == "/users/1?a=b"
    assert request(gw, b"GET http://gw.test/nowhere HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")[0] == 404
    # a proxy-style client: requests with the gateway as its HTTP proxy sends absolute-form targets
    answer = requests.get("http://users.test/users/2", proxies={"http": f"http://127.0.0.1:{gw}"}, timeout=10)
    assert answer.status_code == 200 and json.loads(answer.content)["uri"] == "/users/2"


@pytest.mark.parametrize("raw, status", [
    (b"POST /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    (b"GET /users/1 HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /users/1 HTTP/1.1\r\n\r\n", 400),
])
def test_refusals_by_the_engine_are_json_with_a_request_id_and_logged(procs, raw, status):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(raw)
        code, headers, body = read_response(sock)
    answer = json.loads(body)
    assert code == status and answer["status"] == status and headers["content-type"] == ["application/json"]
    rid = answer["request_id"]
    assert headers["x-request-id"] == [rid]
    lines = procs.lines(procs.last_gateway, f"id={rid}")
    assert len(lines) == 1 and f" {status} " in lines[0], lines


SECURED = """
[services.secured]
app = "x:app"
route = "/secured"
auth = "jwt"
"""


@pytest.mark.parametrize("path, status", [("/secured/1", 401), ("/nowhere", 404)])
def test_a_refusal_logs_the_request_id_the_client_got(procs, monkeypatch, path, status):
    monkeypatch.setenv("MKTEST_PROTOCOL_SECRET", "s" * 32)
    gw = procs.gateway([f"secured=127.0.0.1:{procs.backend('secured')}"], more=SECURED,
                       settings="[gateway.auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"MKTEST_PROTOCOL_SECRET\"")
    code, headers, body = get(gw, path)
    rid = json.loads(body)["request_id"]
    assert code == status and headers["x-request-id"] == [rid]
    assert procs.lines(procs.last_gateway, f"id={rid}"), "the refusal's line carries the id the client got"


def test_a_stalled_body_gets_408_and_releases_its_upstream_connection(procs):
    backend = procs.backend("users")
    gw = procs.gateway([f"users=127.0.0.1:{backend}"], settings="body_timeout = 0.5")
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /users/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n" + b"x" * 70000)
        status, headers, body = read_response(sock)
        assert status == 408 and json.loads(body)["status"] == 408 and time.monotonic() - started < 3
    # a small body is read whole before an instance is picked: a slow client holds no upstream connection
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(b"POST /users/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        status, _, _ = read_response(sock)
        assert status == 408
    seen = json.loads(get(gw, "/users/seen")[2])
    assert [r for r in seen if r["uri"] == "/users/1"] == [], "no stalled body reached the backend as a request"


def test_a_trickled_small_body_opens_no_upstream_connection_until_it_is_complete(procs):
    backend = procs.backend("users")
    gw = procs.gateway([f"users=127.0.0.1:{backend}"], settings="body_timeout = 2")
    before = connections_to(backend)
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(b"POST /users/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abc":
            sock.sendall(bytes([byte]))
            time.sleep(0.3)
            assert connections_to(backend) == before
        sock.sendall(b"d")
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["body_bytes"] == 4


MORE = """
[services.uploads]
app = "x:app"
route = "/uploads"
max_body = "3MB"
"""


def test_max_body_per_route(procs):
    backend = procs.backend("any")
    gw = procs.gateway([f"users=127.0.0.1:{backend}", f"uploads=127.0.0.1:{backend}"], max_body="1MB", more=MORE)
    big = b"x" * (2 * 1024 * 1024)
    assert get(gw, "/users/1", method="POST", body=big)[0] == 413
    status, _, body = get(gw, "/uploads/1", method="POST", body=big)
    assert status == 200 and json.loads(body)["body_bytes"] == len(big)
    assert get(gw, "/uploads/1", method="POST", body=big + big)[0] == 413


def test_a_502_carries_the_request_id_the_instance_was_sent(procs):
    backend = procs.start("stalebackend")[1]
    gw = procs.gateway([f"users=127.0.0.1:{backend}"])
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(b"GET /users/1 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"POST /users/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        status, headers, body = read_response(sock)
    rid = json.loads(body)["request_id"]
    assert status == 502 and headers["x-request-id"] == [rid]
    lines = procs.lines(procs.last_gateway, f"id={rid}")
    assert len(lines) == 1 and " 502 " in lines[0]
