"""Request buffering at the gateway (issue 8, item 5), as nginx's `proxy_request_buffering on`: a body is
read whole before an instance is picked, in memory up to gateway.body_buffer and in an unlinked temporary
file beyond it, then sent with Content-Length; `request_buffering = false` streams a route's uploads."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from microkit import config
from microkit.errors import ConfigError
from microkit.testing import eventually
from support.gateway import Processes, connections_to, get, read_response

ROUTES = """
[services.uploads]
app = "x:app"
route = "/uploads"
max_body = "50MB"
[services.streamed]
app = "x:app"
route = "/streamed"
max_body = "50MB"
request_buffering = false
"""

BODY = 200_000  # larger than the 64 KB kept in memory: spooled to a file


@pytest.fixture
def spool(tmp_path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def _gateway(procs: Processes, backend: int, spool: Path, settings: str = "") -> int:
    instances = [f"{name}=127.0.0.1:{backend}" for name in ("users", "uploads", "streamed")]
    return procs.gateway(instances, more=ROUTES, settings=f"body_temp_dir = {json.dumps(str(spool))}\n{settings}")


def _spool_files(pid: int, spool: Path) -> int:
    """Open files of process `pid` in the spool folder (unlinked ones included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(spool) + "/")
    return count


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def _head(path: str, length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"PUT {path} HTTP/1.1\r\nHost: gw.test\r\n{framing}\r\n\r\n".encode()


def _chunked(body: bytes, piece: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece])
                    for i in range(0, len(body), piece)) + b"0\r\n\r\n"


def test_trickling_clients_hold_no_upstream_connection_until_their_bodies_are_complete(procs, spool):
    backend = procs.backend("uploads")
    gw = _gateway(procs, backend, spool)
    pid = procs.last_gateway.pid
    bodies = [os.urandom(BODY) for _ in range(50)]
    clients = [socket.create_connection(("127.0.0.1", gw), timeout=30) for _ in bodies]
    try:
        for number, sock in enumerate(clients):
            sock.sendall(_head(f"/uploads/{number}", BODY))
        pieces = 10
        step = BODY // pieces
        for round_ in range(pieces - 1):
            for sock, body in zip(clients, bodies):
                sock.sendall(body[round_ * step:(round_ + 1) * step])
            time.sleep(0.2)
            assert connections_to(backend) == 0, f"upstream connections while bodies trickle (round {round_})"
            if round_ == 7:  # past 128 KB: a piece of 64 KB was read beyond the 64 KB kept in memory
                eventually(lambda: _spool_files(pid, spool) == 50, 5, "each body past 64 KB is in a file")
        for sock, body in zip(clients, bodies):
            sock.sendall(body[(pieces - 1) * step:])
        for sock, body in zip(clients, bodies):
            status, _, answer = read_response(sock)
            seen = json.loads(answer)
            assert status == 200 and seen["body_bytes"] == BODY and seen["content_length"] == str(BODY)
            assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        for sock in clients:
            sock.close()
    eventually(lambda: _spool_files(pid, spool) == 0, 5)
    assert os.listdir(spool) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_20mb_upload_arrives_intact_with_bounded_gateway_memory(procs, spool, chunked):
    backend = procs.backend("uploads")
    gw = _gateway(procs, backend, spool)
    pid = procs.last_gateway.pid
    assert get(gw, "/uploads/warm", method="POST", body=b"x" * BODY)[0] == 200
    before = _peak_rss_kb(pid)
    body = os.urandom(20 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", gw), timeout=60) as sock:
        sock.sendall(_head("/uploads/file", None if chunked else len(body)))
        sock.sendall(_chunked(body, 1024 * 1024) if chunked else body)
        status, _, answer = read_response(sock)
    seen = json.loads(answer)
    assert status == 200 and seen["body_bytes"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["content_length"] == str(len(body)), "sent with Content-Length (the backend streams longer chunked bodies)"
    grown = _peak_rss_kb(pid) - before
    assert grown < 8 * 1024, f"the gateway's peak RSS grew {grown} KB for a 20 MB body"
    eventually(lambda: _spool_files(pid, spool) == 0, 5)
    assert os.listdir(spool) == []


def _recording_backend() -> tuple[socket.socket, list[bytes]]:
    """A listening socket whose one connection's requests are read whole (Content-Length framed) and
    kept as raw bytes; each is answered 200 with no body."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
                length = int(match.group(1)) if match else 0
                while len(rest) < length:
                    rest += conn.recv(65536)
                received.append(head + b"\r\n\r\n" + rest[:length])
                data = rest[length:]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return listener, received


@pytest.mark.parametrize("size", [11, BODY], ids=["in-memory", "spooled"])
def test_a_chunked_body_is_de_chunked_and_sent_with_content_length(procs, spool, size):
    listener, received = _recording_backend()
    with listener:
        gw = _gateway(procs, listener.getsockname()[1], spool)
        body = os.urandom(size)
        with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
            sock.sendall(_head("/uploads/1") + _chunked(body, 4000))
            assert read_response(sock)[0] == 200
    head, _, sent = received[0].partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: %d\r\n" % size in head + b"\r\n" and b"transfer-encoding" not in head.lower()
    assert sent == body


def test_spool_files_are_gone_after_408_413_and_a_client_abort(procs, spool):
    gw = _gateway(procs, procs.backend("uploads"), spool, "body_timeout = 1")
    pid = procs.last_gateway.pid
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:  # stalls: 408
        sock.sendall(_head("/uploads/1", BODY) + b"x" * 150_000)
        eventually(lambda: _spool_files(pid, spool) == 1, 5)
        assert read_response(sock)[0] == 408
    eventually(lambda: _spool_files(pid, spool) == 0, 5)
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:  # chunked past max_body (1MB): 413
        sock.sendall(_head("/users/1") + _chunked(b"x" * (2 * 1024 * 1024), 256 * 1024))
        assert read_response(sock)[0] == 413
    eventually(lambda: _spool_files(pid, spool) == 0, 5)
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:  # the client goes away
        sock.sendall(_head("/uploads/1", BODY) + b"x" * 150_000)
        eventually(lambda: _spool_files(pid, spool) == 1, 5)
    eventually(lambda: _spool_files(pid, spool) == 0, 5)
    assert os.listdir(spool) == []


def test_with_request_buffering_false_uploads_stream(procs, spool):
    backend = procs.backend("streamed")
    gw = _gateway(procs, backend, spool)
    pid = procs.last_gateway.pid
    body = os.urandom(BODY)
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(_head("/streamed/1", BODY) + body[:100_000])
        eventually(lambda: connections_to(backend) == 1, 5, "the upload goes upstream as it arrives")
        assert _spool_files(pid, spool) == 0
        sock.sendall(body[100_000:])
        status, _, answer = read_response(sock)
    seen = json.loads(answer)
    assert status == 200 and seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(_head("/streamed/2") + _chunked(body, 30_000))
        status, _, answer = read_response(sock)
    seen = json.loads(answer)
    assert status == 200 and seen["content_length"] == "", "still chunked: the backend got no length"
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_large_buffered_body_is_resent_once_on_a_stale_pooled_connection(procs, spool):
    backend = procs.start("stalebackend")[1]
    gw = _gateway(procs, backend, spool)
    with socket.create_connection(("127.0.0.1", gw), timeout=10) as sock:
        sock.sendall(b"GET /uploads/1 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert read_response(sock)[2] == b"connection 1"
        sock.sendall(_head("/uploads/1", BODY) + b"x" * BODY)
        status, _, answer = read_response(sock)
    assert (status, answer) == (200, b"connection 2")


@pytest.mark.parametrize("setting, message", [
    ('[gateway]\nbody_temp_dir = "nowhere"\n', 'gateway.body_temp_dir: "nowhere" is not a folder next to'),
    ('[services.users]\napp = "x:app"\nrequest_buffering = "no"\n',
     'services.users.request_buffering: expected true or false, got "no"'),
])
def test_bad_buffering_settings_name_their_key(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        config.parse('[project]\nname = "shop"\n' + setting, tmp_path / "microkit.toml")
