"""WebSocket tunnels through the real gateway (`microkit up`) to an aiohttp command service, with
websocket-client: echo, many and large messages, the route's auth on the handshake, the tunnel cap,
the idle timeout, other Upgrade values stripped, and a tunnel open while the gateway reloads."""

from __future__ import annotations

import socket
import sys
import time

import jwt
import pytest
import requests
import websocket

from microkit.testing import eventually

from support.cli import run_cli
from support.up import Up, make_project


SECRET = "w" * 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    import os
    os.environ["MKTEST_WS_SECRET"] = SECRET
    root = make_project(tmp_path_factory.mktemp("ws") / "proj", {
        "chat": {"command": f"{sys.executable} services/chat/aiohttp_root.py", "route": "/chat",
                 "strip_prefix": True, "health": "/", "websocket_max_tunnels": 2, "websocket_idle_timeout": 8},
        "secure": {"command": f"{sys.executable} services/secure/aiohttp_root.py", "route": "/secure",
                   "strip_prefix": True, "health": "/", "auth": "jwt"},
    }, {"chat": "aiohttp_root.py", "secure": "aiohttp_root.py"})
    config = root / "microkit.toml"
    config.write_text(config.read_text() + '\n[gateway.auth.jwt]\nalgorithms = ["HS256"]\n'
                                           'secret_env = "MKTEST_WS_SECRET"\n')
    up = Up(root, gateway=True)
    try:
        url = up.ready(30)["gateway"]
        up.root = root
        for path in ("/chat/", "/secure/"):  # the gateway has picked both instances up from the registry
            headers = {"Authorization": f"Bearer {_token()}"} if path == "/secure/" else {}  # past the 401
            eventually(lambda path=path, headers=headers: requests.get(url + path, headers=headers,
                                                                       timeout=5).status_code != 503, 15)
        yield up, url.replace("http://", "ws://")
    finally:
        up.close()
        del os.environ["MKTEST_WS_SECRET"]


def _token() -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def test_echo_many_messages_and_a_large_one(gateway):
    _, url = gateway
    ws = websocket.create_connection(f"{url}/chat/", timeout=10)
    try:
        assert ws.getstatus() == 101 and ws.getheaders().get("x-request-id")
        ws.send("hello")
        assert ws.recv() == "hello"
        for i in range(1000):
            ws.send(f"message {i}")
        assert [ws.recv() for _ in range(1000)] == [f"message {i}" for i in range(1000)]
        big = bytes(range(256)) * 4096  # 1 MB
        ws.send_binary(big)
        assert ws.recv() == big
        ws.send("close")
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
    finally:
        ws.close()


def test_the_handshake_goes_through_the_routes_auth(gateway):
    _, url = gateway
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"{url}/secure/", timeout=10)
    assert refused.value.status_code == 401
    ws = websocket.create_connection(f"{url}/secure/", header=[f"Authorization: Bearer {_token()}"], timeout=10)
    ws.send("ok")
    assert ws.recv() == "ok"
    ws.close()


def _open_when_free(url: str, timeout: float = 5.0) -> websocket.WebSocket:
    """A tunnel, once the ones earlier tests closed no longer count against the cap."""
    def opened() -> websocket.WebSocket | None:
        try:
            return websocket.create_connection(url, timeout=10)
        except websocket.WebSocketBadStatusException:
            return None

    return eventually(opened, timeout, "closed tunnels no longer counting against the cap")


def test_the_tunnel_cap_and_the_idle_timeout(gateway):
    _, url = gateway
    open_ = [_open_when_free(f"{url}/chat/") for _ in range(2)]
    try:
        for ws in open_:  # both busy just now, so neither idles out before the third try
            ws.send("ping")
            assert ws.recv() == "ping"
        started = time.monotonic()
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"{url}/chat/", timeout=10)
        assert refused.value.status_code == 503
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:
                if not open_[0].recv():
                    raise websocket.WebSocketConnectionClosedException("closed")
        idle = time.monotonic() - started
        assert 7 < idle < 20, f"an idle tunnel is closed after websocket_idle_timeout (8 s), not after {idle:.1f} s"
    finally:
        for ws in open_:
            ws.close()
    _open_when_free(f"{url}/chat/").close()


def test_other_upgrades_are_stripped(gateway):
    _, url = gateway
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /chat/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        data = b""
        while b"aiohttp root" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"aiohttp root path=/" in data


def test_a_tunnel_open_while_the_gateway_reloads_ends_with_1001(gateway):
    up, url = gateway
    ws = websocket.create_connection(f"{url}/secure/", header=[f"Authorization: Bearer {_token()}"], timeout=30)
    try:
        ws.send("before")
        assert ws.recv() == "before"
        result = run_cli("reload", "gateway", "--no-wait", timeout=30, cwd=up.root)
        assert result.returncode == 0, result.stderr
        ws.send("during")
        assert ws.recv() == "during", "the tunnel keeps working through the graceful time"
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and data[:2] == b"\x03\xe9"
    finally:
        ws.close()
    fresh = websocket.create_connection(f"{url}/secure/", header=[f"Authorization: Bearer {_token()}"], timeout=10)
    fresh.send("after")
    assert fresh.recv() == "after"
    fresh.close()
