"""The security checks in process: their order on the proxy path, Vary merging, and the access log's
redaction and buffering."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.cli import PROGRAMS
from support.http import Reader, ServerThread, connect
from microkit import config
from microkit.gateway.app import Gateway
from microkit.registry import Instance

PROJECT = """
[project]
name = "units"
[gateway.auth.jwt]
algorithms = ["HS256"]
secret_env = "MKTEST_UNIT_SECRET"
[services.a]
app = "x:app"
route = "/a"
auth = "jwt"
rate_limit = "5/s"
cors = { origins = ["https://app.test"] }
[services.b]
app = "x:app"
route = "/b"
"""
SECRET = "u" * 32


def backend(environ, start_response):
    body = json.dumps({k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Vary", "Accept-Encoding"),
                              ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    monkeypatch.setenv("MKTEST_UNIT_SECRET", SECRET)
    path = tmp_path / "microkit.toml"
    path.write_text(PROJECT)
    lines: list[str] = []
    with ServerThread(backend) as upstream:
        gw = Gateway(config.load(path), access_log=lines.append)
        gw.update({name: [Instance(name, "127.0.0.1", upstream.port)] for name in ("a", "b")})
        gw.lines = lines
        yield gw


def token(**claims) -> str:
    import jwt
    return jwt.encode({"sub": "alice", "exp": 4_000_000_000, **claims}, SECRET, algorithm="HS256")


def test_secured_routes_run_their_checks_in_order_on_the_one_proxy_path(gateway):
    table = gateway.microkit_raw_handler.table
    secured, plain = (table.match(p).target for p in ("/a/1", "/b/1"))
    assert [c.__name__ for c in secured[1]] == ["cors_check", "auth_check", "ratelimit_check"]
    assert plain[1] == ()


def test_the_own_endpoints_run_the_same_checks_through_one_plugin(gateway):
    from microkit.gateway.plugins import PolicyPlugin
    assert [type(p) for p in gateway.app.plugins if isinstance(p, PolicyPlugin)] == [PolicyPlugin]


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_cors_vary_is_merged_with_the_service_vary_and_limits_and_identity_apply(gateway, version):
    with ServerThread(gateway) as gw, connect(gw.port) as sock:
        reader = Reader(sock)
        keep = "Connection: keep-alive\r\n" if version == "HTTP/1.0" else ""
        sock.sendall(f"GET /a/1 {version}\r\nHost: h\r\n{keep}Origin: https://app.test\r\n"
                     f"Authorization: Bearer {token()}\r\nX-Auth-Subject: root\r\n\r\n".encode())
        status, headers, body = reader.response()
        assert status == 200 and headers["vary"] == "Accept-Encoding, Origin"
        assert headers["access-control-allow-origin"] == "https://app.test"
        assert headers["ratelimit-limit"] == "5" and json.loads(body)["X_AUTH_SUBJECT"] == "alice"
        sock.sendall(f"GET /a/1 {version}\r\nHost: h\r\n{keep}Origin: https://app.test\r\n\r\n".encode())
        status, headers, _ = reader.response()
        assert status == 401 and headers["vary"] == "Origin" and headers["access-control-allow-origin"]


def test_the_limit_gives_429_with_retry_after(gateway):
    with ServerThread(gateway) as gw, connect(gw.port) as sock:
        reader = Reader(sock)
        statuses = []
        for _ in range(7):
            sock.sendall(f"GET /a/1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token()}\r\n\r\n".encode())
            status, headers, body = reader.response()
            statuses.append(status)
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
        assert headers["retry-after"] == "1" and headers["ratelimit-remaining"] == "0"
        assert json.loads(body)["error"] == "rate limit exceeded"


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_access_lines_never_hold_a_token_or_key(gateway, version):
    secret_token = token()
    key = "mk_" + "k" * 43
    with ServerThread(gateway) as gw, connect(gw.port) as sock:
        reader = Reader(sock)
        keep = "Connection: keep-alive\r\n" if version == "HTTP/1.0" else ""
        sock.sendall(f"GET /b/1?access_token={secret_token}&api_key={key}&page=2 {version}\r\nHost: h\r\n{keep}"
                     f"Authorization: Bearer {secret_token}\r\n\r\n".encode())
        assert reader.response()[0] == 200
    line = gateway.lines[-1]
    assert "access_token=[redacted]&api_key=[redacted]&page=2" in line
    assert secret_token not in line and key not in line


def test_the_access_log_is_buffered_and_flushed_within_the_interval_and_at_exit():
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "accesslog_worker.py"), "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.set_blocking(proc.stdout.fileno(), True)
        assert proc.stderr.readline() == b"wrote\n"
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None, "flushed by the 100 ms flusher, long before exit"
        assert proc.stdout.readline() == b"last\n"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
