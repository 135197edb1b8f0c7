"""The gateway's proxying, against real backends and a real gateway process (fixed instance lists).

Registry-driven routing is tested end to end with `microkit up` elsewhere; here each gateway is given
its instances on the command line, so each case controls exactly what is up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from microkit.testing import eventually
from support.cli import PROGRAMS
from support.gateway import CONFIG, Processes, connections_to, get, read_response, request
from support.servers import free_port


def test_routes_to_the_longest_prefix_and_forwards_the_request_unchanged(procs):
    users, admin = procs.backend("users"), procs.backend("admin")
    gw = procs.gateway([f"users=127.0.0.1:{users}", f"admin=127.0.0.1:{admin}"])
    status, headers, body = get(gw, "/users/7?q=a%20b&x=%2F", method="PUT", body=b'{"name": "x"}',
                                headers="Content-Type: application/json\r\nX-Custom: kept\r\n")
    seen = json.loads(body)
    assert status == 200 and seen["backend"] == "users"
    assert seen["method"] == "PUT" and seen["uri"] == "/users/7?q=a%20b&x=%2F"
    assert seen["headers"]["X_CUSTOM"] == "kept" and seen["headers"]["HOST"] == "gw.test"
    assert seen["body_bytes"] == 13 and seen["content_length"] == "13"
    assert headers["set-cookie"] == ["a=1", "b=2"], "repeated response headers pass through"
    assert json.loads(get(gw, "/users/admin/1")[2])["backend"] == "admin"
    assert json.loads(get(gw, "/users/adminx")[2])["backend"] == "users"


@pytest.mark.parametrize("path, status", [("/usersx", 404), ("/", 404), ("/nothing/users", 404),
                                          ("/users%2F..%2Forders", 400), ("/users/..%2forders", 400)])
def test_unrouted_and_unsafe_paths(procs, path, status):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    code, headers, body = get(gw, path)
    assert code == status and headers["content-type"] == ["application/json"]
    assert json.loads(body)["status"] == status and headers["x-request-id"]


def test_dot_segments_cannot_escape_a_prefix(procs):
    users, orders = procs.backend("users"), procs.backend("orders")
    gw = procs.gateway([f"users=127.0.0.1:{users}", f"orders=127.0.0.1:{orders}"])
    status, _, body = get(gw, "/users/../orders/1")
    seen = json.loads(body)
    assert status == 200 and seen["backend"] == "orders" and seen["uri"] == "/orders/1"
    assert json.loads(get(gw, "/users/%2e%2e/orders")[2])["uri"] == "/orders"


def test_hop_by_hop_headers_are_removed_both_ways(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    raw = (b"GET /users/1 HTTP/1.1\r\nHost: gw.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
           b"Keep-Alive: timeout=100\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
           b"Proxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n")
    status, headers, body = request(gw, raw)
    sent = json.loads(body)["headers"]
    assert status == 200 and sent["X_KEPT"] == "yes"
    for name in ("CONNECTION", "X_SECRET", "KEEP_ALIVE", "TE", "TRAILER", "UPGRADE", "PROXY_AUTHORIZATION",
                 "PROXY_CONNECTION"):
        assert name not in sent, name
    for name in ("keep-alive", "proxy-secret"):
        assert name not in headers, name
    assert headers["x-backend"] == ["users"]


def test_hop_by_hop_response_headers_and_those_connection_names_are_removed(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.start('rawbackend')[1]}"])
    status, headers, body = get(gw, "/users/1")
    assert status == 200 and body == b"ok" and headers["x-backend"] == ["raw"]
    for name in ("x-internal", "keep-alive", "proxy-secret", "trailer", "upgrade"):
        assert name not in headers, name
    assert headers["connection"] == ["close"], "only the gateway's own Connection header reaches the client"


def test_spoofed_forwarding_headers_are_replaced_from_the_socket_peer(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    _, _, body = get(gw, "/users/1", headers="X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
                                             "X-Forwarded-Host: evil.test\r\n")
    sent = json.loads(body)["headers"]
    assert sent["X_FORWARDED_FOR"] == "127.0.0.1"
    assert sent["X_FORWARDED_PROTO"] == "http" and sent["X_FORWARDED_HOST"] == "gw.test"


def test_a_trusted_proxy_extends_the_chain(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"], trusted='["127.0.0.0/8"]')
    _, _, body = get(gw, "/users/1", headers="X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n")
    sent = json.loads(body)["headers"]
    assert sent["X_FORWARDED_FOR"] == "203.0.113.9, 127.0.0.1" and sent["X_FORWARDED_PROTO"] == "https"


def test_request_id_is_kept_or_generated_and_returned(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    _, headers, body = get(gw, "/users/1", headers="X-Request-ID: abc-123\r\n")
    assert headers["x-request-id"] == ["abc-123"] and json.loads(body)["headers"]["X_REQUEST_ID"] == "abc-123"
    _, headers, body = get(gw, "/users/1", headers="X-Request-ID: bad id with spaces\r\n")
    generated = headers["x-request-id"][0]
    assert len(generated) == 32 and json.loads(body)["headers"]["X_REQUEST_ID"] == generated


def test_no_content_type_is_added_to_a_response_without_one(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    status, headers, _ = get(gw, "/users/nocontenttype")
    assert status == 200 and "content-type" not in headers


def test_413_for_a_body_over_max_body(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"], max_body="1KB")
    status, headers, body = get(gw, "/users", method="POST", body=b"x" * 1025)
    assert status == 413 and json.loads(body)["status"] == 413
    chunked = (b"POST /users HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"1\r\nx\r\n0\r\n\r\n")
    assert request(gw, chunked)[0] == 413
    assert get(gw, "/users", method="POST", body=b"x" * 1024)[0] == 200


def test_503_with_retry_after_when_no_instance(procs):
    gw = procs.gateway([])
    status, headers, body = get(gw, "/empty/1")
    assert status == 503 and headers["retry-after"] == ["1"]
    assert json.loads(body)["error"] == "no healthy instance of empty"


def test_504_when_the_route_times_out(procs):
    gw = procs.gateway([f"orders=127.0.0.1:{procs.backend('orders')}"])
    started = time.monotonic()
    status, _, body = get(gw, "/orders/slow?s=3")
    assert status == 504 and json.loads(body)["status"] == 504
    assert time.monotonic() - started < 2


def test_connect_failure_is_retried_on_another_instance_for_any_method(procs):
    dead = free_port()
    gw = procs.gateway([f"users=127.0.0.1:{dead}", f"users=127.0.0.1:{procs.backend('users')}"])
    for method in ("GET", "POST", "POST", "GET"):
        status, _, body = get(gw, "/users/1", method=method, body=b"{}" if method == "POST" else b"")
        assert status == 200 and json.loads(body)["backend"] == "users"


def test_a_request_in_flight_on_an_instance_that_dies_is_never_sent_again(procs):
    """It may be what killed the instance: any method gets 502, and the other instance never sees it."""
    victim_proc, victim = procs.start("backend", "victim")
    other = procs.backend("other")
    gw = procs.gateway([f"users=127.0.0.1:{victim}", f"users=127.0.0.1:{other}"])
    results = {}

    def call(name, method):
        results[name] = get(gw, "/users/slow?s=2", method=method, body=b"{}" if method == "POST" else b"")

    threads = [threading.Thread(target=call, args=(f"{m}{i}", m)) for i, m in enumerate(["GET", "GET", "POST", "POST"])]
    for number, thread in enumerate(threads, 1):  # one at a time, so that the balancer alternates
        thread.start()
        eventually(lambda: connections_to(victim) + connections_to(other) >= number, 5, f"request {number} upstream")
    victim_proc.send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(10)
    statuses = sorted(r[0] for r in results.values())
    assert statuses == [200, 200, 502, 502], results
    seen = json.loads(get(gw, "/users/seen")[2])
    assert len([r for r in seen if "/slow" in r["uri"]]) == 2, "a request the victim took was sent again"


def test_a_stale_pooled_connection_is_replaced_once_for_an_idempotent_request(procs):
    backend = procs.start("stalebackend")[1]
    gw = procs.gateway([f"users=127.0.0.1:{backend}"])
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        answers = []
        for method in ("GET", "GET", "GET", "POST"):
            length = "Content-Length: 2\r\n" if method == "POST" else ""
            sock.sendall(f"{method} /users/1 HTTP/1.1\r\nHost: h\r\n{length}\r\n".encode()
                         + (b"{}" if method == "POST" else b""))
            status, _, body = read_response(sock)
            answers.append((status, body))
    # each GET after the first meets a pooled connection the backend drops: sent once more, on a fresh one
    assert answers[:3] == [(200, b"connection 1"), (200, b"connection 2"), (200, b"connection 3")]
    assert answers[3][0] == 502, "a POST is never sent twice"


@pytest.mark.parametrize("raw", [
    b"POST /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\n"
    b"hello\r\nGET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /users/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    b"0\r\n\r\nGET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /users/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
    b"0\r\n\r\nGET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n Transfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_smuggling_attempts_never_reach_a_backend_as_a_second_request(procs, raw):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    with socket.create_connection(("127.0.0.1", gw), timeout=5) as sock:
        sock.sendall(raw)
        status, _, _ = read_response(sock)
        assert status == 400
        assert sock.recv(65536) == b"", "the gateway closes the connection after a 400"
    seen = json.loads(get(gw, "/users/seen")[2])
    assert [r["uri"] for r in seen] == [], seen


def test_a_body_carrying_a_request_stays_a_body(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    inner = b"GET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    status, _, _ = get(gw, "/users/1", method="POST", body=inner)
    assert status == 200
    seen = json.loads(get(gw, "/users/seen")[2])
    assert [r["uri"] for r in seen] == ["/users/1"] and seen[0]["body_bytes"] == len(inner)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


GIGABYTE = 1024 ** 3


def test_a_gigabyte_streams_both_ways_in_bounded_memory(procs):
    backend = procs.backend("users")
    gw_proc, gw = procs.start("gateway", str(write_config(procs, max_body="2GB", timeout=60)),
                              f"users=127.0.0.1:{backend}")  # about memory: a loaded machine needs > 5 s a GB
    before = rss_kb(gw_proc.pid)
    with socket.create_connection(("127.0.0.1", gw), timeout=60) as sock:
        sock.sendall(f"GET /users/big?n={GIGABYTE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = 0
        peak = 0
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            if received % (64 << 20) < len(chunk):
                peak = max(peak, rss_kb(gw_proc.pid))
    head_size = received - GIGABYTE
    assert 0 < head_size < 1024, "the whole gigabyte and a response head arrived"

    piece = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", gw), timeout=60) as sock:
        sock.sendall(f"POST /users/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIGABYTE}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        for i in range(GIGABYTE // len(piece)):
            sock.sendall(piece)
            if i % 64 == 0:
                peak = max(peak, rss_kb(gw_proc.pid))
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["body_bytes"] == GIGABYTE
    assert peak - before < 50 * 1024, f"gateway RSS grew by {(peak - before) // 1024} MB while streaming"


def write_config(procs: Processes, max_body: str, timeout: float = 5) -> Path:
    path = procs.tmp_path / "big.toml"
    text = CONFIG.format(max_body=max_body, trusted="[]")
    path.write_text(text.replace("\ntimeout = 5\n", f"\ntimeout = {timeout}\n", 1))
    return path


def test_one_keep_alive_connection_carries_every_kind_of_exchange(procs):
    """Small, streamed (chunked upstream), HEAD, chunked-upload and error responses in a row on one connection."""
    from support.http import Reader

    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /users/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        status, headers, body = reader.response()
        assert status == 200 and json.loads(body)["uri"] == "/users/1" and headers["date"]
        sock.sendall(b"GET /users/stream?n=4 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        status, headers, body = reader.response()
        assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"piece0;piece1;piece2;piece3;")
        sock.sendall(b"HEAD /users/big?n=5000 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        status, headers, body = reader.response(head_only=True)
        assert (status, headers["content-length"]) == (200, "5000")
        sock.sendall(b"POST /users/up HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        status, _, body = reader.response()
        seen = json.loads(body)
        assert status == 200 and seen["body_bytes"] == 5 and seen["method"] == "POST"
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        assert reader.response()[0] == 404
        sock.sendall(b"GET /users/2 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        status, headers, _ = reader.response()
        assert (status, headers["connection"]) == (200, "close") and reader.closed()


def test_http10_requests_get_the_same_forwarding(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    raw = (b"GET /users/1 HTTP/1.0\r\nHost: gw.test\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: X-Secret\r\n"
           b"X-Secret: s\r\nX-Request-ID: ten-4\r\n\r\n")
    status, headers, body = request(gw, raw)
    sent = json.loads(body)["headers"]
    assert status == 200 and headers["x-request-id"] == ["ten-4"] and sent["X_REQUEST_ID"] == "ten-4"
    assert sent["X_FORWARDED_FOR"] == "127.0.0.1" and "X_SECRET" not in sent and "CONNECTION" not in sent


def test_connection_cannot_name_the_body_framing_away(procs):
    """`Connection: Content-Length` must not strip the length and leave the body to be read as a request."""
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    inner = b"GET /users/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    status, _, body = get(gw, "/users/1", method="POST", body=inner, headers="Connection: Content-Length\r\n")
    assert status == 200 and json.loads(body)["body_bytes"] == len(inner)
    seen = json.loads(get(gw, "/users/seen")[2])
    assert [r["uri"] for r in seen] == ["/users/1"]


def test_duplicate_request_ids_are_replaced(procs):
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    _, headers, body = get(gw, "/users/1", headers="X-Request-ID: a\r\nX-Request-ID: b\r\n")
    rid = headers["x-request-id"][0]
    assert rid not in ("a", "b") and len(rid) == 32 and json.loads(body)["headers"]["X_REQUEST_ID"] == rid


def test_bottle_serves_only_the_gateways_own_endpoints(tmp_path):
    """Every routed request takes the one proxy path; Bottle has no route of a service."""
    from microkit import config
    from microkit.gateway.app import Gateway

    path = tmp_path / "microkit.toml"
    path.write_text('[project]\nname = "p"\n[services.a]\napp = "x:app"\nroute = "/a"\n'
                    '[services.b]\napp = "x:app"\nroute = "/"\n')
    gateway = Gateway(config.load(path))
    rules = sorted(r.rule for r in gateway.app.routes)
    assert all(rule.startswith("/__microkit") for rule in rules), rules
    assert {"/__microkit/health", "/__microkit/instances", "/__microkit/routes"} <= set(rules)


def test_an_upload_the_client_abandons_is_not_left_in_flight(tmp_path):
    """A client that goes away mid-upload must not leave its instance counted as busy (least_outstanding)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(PROGRAMS / "least_outstanding.py"), str(tmp_path / "microkit.toml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, 0]


def test_a_request_reset_in_a_closing_listeners_backlog_goes_to_another_instance(procs):
    """A killed worker's listener can take a connection into its backlog and then reset it as the
    process's sockets close: no byte of the request reached the application, so an idempotent request
    goes once to another instance instead of failing with 502 (a request an instance read and then
    closed on is not resent: the poison-request tests)."""
    dying_proc, dying = procs.start("backlogbackend")
    gw = procs.gateway([f"users=127.0.0.1:{dying}", f"users=127.0.0.1:{procs.backend('users')}"])
    statuses = [get(gw, "/users/1")[0] for _ in range(4)]
    assert procs.lines(dying_proc, "closed"), "the request did reach the closing listener's backlog"
    assert statuses == [200] * 4
    seen = json.loads(get(gw, "/users/seen")[2])
    assert len([r for r in seen if r["uri"] == "/users/1"]) == 4, "each request answered once"


def test_keep_alive_requests_make_no_epoll_ctl_each(procs):
    """The client side keeps one read watcher for the connection's life (microkit/http/io.py Reader), as the
    upstream side does: gevent's own wait started and stopped one per request, and libev re-added the
    socket at each start (a failing epoll_ctl a request: 4,950 in 5,000 before)."""
    import shutil
    import subprocess

    assert shutil.which("strace"), "strace is needed (apt-get install strace; .ci/run installs it)"
    gw = procs.gateway([f"users=127.0.0.1:{procs.backend('users')}"])
    gw_proc = procs.last_gateway
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        for _ in range(20):  # warm: the upstream pool and caches
            sock.sendall(b"GET /users/1 HTTP/1.1\r\nHost: h\r\n\r\n")
            read_response(sock)
        trace = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=epoll_ctl", "-p", str(gw_proc.pid)],
                                 stderr=subprocess.PIPE, text=True)
        try:
            eventually(lambda: tracer_of(gw_proc.pid) == trace.pid, 10, "strace attached")
            for _ in range(300):
                sock.sendall(b"GET /users/1 HTTP/1.1\r\nHost: h\r\n\r\n")
                assert read_response(sock)[0] == 200
        finally:
            trace.send_signal(signal.SIGINT)
            report = trace.communicate(timeout=10)[1]
    calls = [int(line.split()[3]) for line in report.splitlines() if line.rstrip().endswith("epoll_ctl")]
    assert sum(calls) < 30, report


def tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def test_resends_stay_within_the_retry_budget(procs):
    """A backend that drops every pooled connection would have every request sent twice: the budget
    (about 20% of requests, after a small reserve) lets only some be resent; the rest get 502."""
    backend = procs.start("stalebackend")[1]
    gw = procs.gateway([f"users=127.0.0.1:{backend}"])
    statuses = []
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        for _ in range(80):
            sock.sendall(b"GET /users/1 HTTP/1.1\r\nHost: h\r\n\r\n")
            statuses.append(read_response(sock)[0])
    assert statuses[:5] == [200] * 5, "the reserve covers a few stale connections"
    assert statuses.count(502) > 10, statuses


def test_the_retry_budget_earns_a_fifth_of_a_resend_per_request():
    from microkit.gateway.proxy import RetryBudget

    budget = RetryBudget(ratio=0.2, cap=3)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(11):
        budget.earn()
    assert [budget.spend() for _ in range(3)] == [True, True, False]
