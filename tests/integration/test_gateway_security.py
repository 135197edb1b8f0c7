"""Gateway security through real gateway processes (tests/programs/gateway_harness.py) on real Redis: JWT attacks,
spoofed identity headers, API keys managed by the real CLI, admin endpoints, POST /auth/token, CORS
preflights, a limit shared by two gateway processes, and the Redis-down policy on a private redis-server.

Each case is sent twice where it matters: as HTTP/1.1 and HTTP/1.0 (both take the one proxy path).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from microkit.testing import eventually
from support.cli import run_cli
from support.gateway import Processes, read_response
from support.servers import PrivateRedis, REDIS_URL, delete_namespace, require_redis


SECRET_ENV = "MKTEST_JWT_SECRET"
SECRET = "s" * 40
ISSUER, AUDIENCE, LEEWAY = "https://issuer.test", "shop", 10

CONFIG = """
[project]
name = "{namespace}"
[registry]
url = "{redis}"
[gateway.auth]
admin_scope = "admin"
[gateway.auth.jwt]
algorithms = ["HS256", "RS256"]
secret_env = "{secret_env}"
public_keys = {{ k1 = "k1.pub.pem" }}
issuer = "{issuer}"
audience = "{audience}"
leeway = {leeway}
[gateway.auth.token]
ttl = 120
[gateway.ratelimit]
on_redis_down = "{on_redis_down}"
retry_interval = 0.3
[services.users]
app = "x:app"
route = "/users"
auth = "jwt"
scopes = ["users:read"]
[services.orders]
app = "x:app"
route = "/orders"
auth = "apikey"
scopes = ["orders"]
rate_limit = "1000/min"
rate_limit_by = "key"
[services.limited]
app = "x:app"
route = "/limited"
rate_limit = "100/min"
[services.open]
app = "x:app"
route = "/open"
[services.web]
app = "x:app"
route = "/web"
cors = {{ origins = ["https://app.test", "https://*.example.com"], methods = ["GET", "POST", "PUT"], headers = ["Content-Type", "Authorization"], expose_headers = ["X-Backend"], credentials = true, max_age = 300 }}
[services.webauth]
app = "x:app"
route = "/webauth"
auth = "jwt"
cors = {{ origins = "*", methods = ["GET"] }}
"""
SERVICES = ("users", "orders", "limited", "open", "web", "webauth")


class Gateways:
    """A project folder (config, keys) and the backend and gateway processes of one test; all killed at the end."""

    def __init__(self, folder: Path, redis_url: str = REDIS_URL, on_redis_down: str = "open") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.namespace = f"mktest_{uuid.uuid4().hex[:12]}"
        self.redis_url = redis_url
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (folder / "k1.pub.pem").write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.config = folder / "microkit.toml"
        self.config.write_text(CONFIG.format(namespace=self.namespace, redis=redis_url, secret_env=SECRET_ENV,
                                             issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY,
                                             on_redis_down=on_redis_down))
        self.processes = Processes(folder)
        self.backend = 0

    def start(self, *args: str) -> int:
        return self.processes.start(*args, env={**os.environ, SECRET_ENV: SECRET}, cwd=self.folder)[1]

    @property
    def output(self) -> list[str]:
        return [line for lines in self.processes.output.values() for line in list(lines)]

    def gateway(self) -> int:
        if not self.backend:
            self.backend = self.start("backend", "svc")
        return self.start("gateway", str(self.config), *(f"{s}=127.0.0.1:{self.backend}" for s in SERVICES))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, "-c", str(self.config), cwd=self.folder)

    def create_key(self, name: str, *scopes: str) -> str:
        result = self.cli("keys", "create", name, *(f"--scope={s}" for s in scopes))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def token(self, alg: str = "RS256", kid: str | None = "k1", **overrides) -> str:
        now = int(time.time())
        claims = {"sub": "alice", "scope": "users:read", "iss": ISSUER, "aud": AUDIENCE, "iat": now,
                  "exp": now + 300, **overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        key = self.key if alg == "RS256" else SECRET
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)

    def close(self) -> None:
        self.processes.close()
        if self.redis_url == REDIS_URL:
            delete_namespace(REDIS_URL, self.namespace)


def call(port: int, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b"",
         version: str = "HTTP/1.1") -> tuple[int, dict[str, list[str]], bytes]:
    """One request on a fresh connection: status, headers (lower-case name -> values), body."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    raw = f"{method} {path} {version}\r\nHost: gw.test\r\n{lines}{length}Connection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw + body)
        return read_response(sock)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def seen(body: bytes) -> dict[str, str]:
    """The request headers the echo backend received (CGI names without HTTP_)."""
    return json.loads(body)["headers"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, key: bytes | None = None) -> str:
    """A token assembled by hand (what an attacker sends): HMAC-SHA256 with `key`, or no signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key else ""
    return f"{signing_input}.{signature}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """One gateway (and echo backend) shared by the cases that do not count requests."""
    require_redis(REDIS_URL)
    gateways = Gateways(tmp_path_factory.mktemp("gw"))
    try:
        gateways.port = gateways.gateway()
        yield gateways
    finally:
        gateways.close()


@pytest.fixture
def fresh(tmp_path):
    """Gateways of this test's own (its own Redis namespace)."""
    require_redis(REDIS_URL)
    gateways = Gateways(tmp_path / "proj")
    yield gateways
    gateways.close()


VERSIONS = pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])


# JWT

@VERSIONS
def test_a_valid_token_passes_with_the_identity_forwarded_and_spoofed_copies_dropped(gw, version):
    spoofed = [("X-Auth-Subject", "root"), ("x-auth-scopes", "admin"), ("X-Auth-Key-Id", "k"), ("X-Auth-Extra", "1")]
    status, _, body = call(gw.port, "GET", "/users/1", bearer(gw.token()) + spoofed, version=version)
    headers = seen(body)
    assert status == 200
    assert (headers["X_AUTH_SUBJECT"], headers["X_AUTH_SCOPES"], headers["X_AUTH_METHOD"]) == (
        "alice", "users:read", "jwt")
    assert "X_AUTH_KEY_ID" not in headers and "X_AUTH_EXTRA" not in headers


def test_hs256_tokens_with_the_secret_pass(gw):
    assert call(gw.port, "GET", "/users/1", bearer(gw.token("HS256", kid=None)))[0] == 200


def _attacks(gw: Gateways) -> dict[str, list[tuple[str, str]]]:
    now = int(time.time())
    base = {"sub": "mallory", "scope": "users:read", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    public_pem = (gw.folder / "k1.pub.pem").read_bytes()
    return {
        "alg=none": bearer(forge({"alg": "none", "typ": "JWT"}, base)),
        "alg=none with a kid": bearer(forge({"alg": "none", "kid": "k1"}, base)),
        "HS256 signed with the RSA public key": bearer(forge({"alg": "HS256", "kid": "k1"}, base, public_pem)),
        "unknown kid": bearer(gw.token(kid="k2")),
        "expired 1 s outside the leeway": bearer(gw.token(exp=now - LEEWAY - 1)),
        "not valid yet, 1 s outside the leeway": bearer(gw.token(nbf=now + LEEWAY + 2)),
        "wrong aud": bearer(gw.token(aud="other")),
        "wrong iss": bearer(gw.token(iss="https://evil.test")),
        "no aud": bearer(gw.token(aud=None)),
        "two Authorization headers": bearer(gw.token()) + bearer(gw.token(sub="bob")),
        "two tokens in one header": [("Authorization", f"Bearer {gw.token()}, Bearer {gw.token(sub='bob')}")],
        "bad signature": bearer(gw.token()[:-4] + "AAAA"),
        "no token": [],
        "not a bearer": [("Authorization", "Basic YTpi")],
    }


@VERSIONS
def test_tokens_that_must_be_refused_get_401_with_a_challenge(gw, version):
    for case, headers in _attacks(gw).items():
        status, answer, body = call(gw.port, "GET", "/users/1", headers, version=version)
        assert status == 401, case
        assert answer["www-authenticate"][0].startswith('Bearer realm="microkit"'), case
        assert json.loads(body)["status"] == 401, case


@VERSIONS
def test_two_differing_tokens_header_and_query_get_401(gw, version):
    status, answer, _ = call(gw.port, "GET", f"/users/1?access_token={gw.token(sub='bob')}", bearer(gw.token()),
                             version=version)
    assert status == 401 and "two different tokens" in answer["www-authenticate"][0]


def test_expiry_one_second_inside_the_leeway_passes(gw):
    assert call(gw.port, "GET", "/users/1", bearer(gw.token(exp=int(time.time()) - LEEWAY + 1)))[0] == 200


@VERSIONS
def test_a_missing_scope_is_403(gw, version):
    status, answer, body = call(gw.port, "GET", "/users/1", bearer(gw.token(scope="orders")), version=version)
    assert status == 403 and 'error="insufficient_scope"' in answer["www-authenticate"][0]
    assert json.loads(body)["error"] == "missing scope: users:read"


@VERSIONS
def test_identity_headers_are_stripped_on_open_routes(gw, version):
    status, _, body = call(gw.port, "GET", "/open/1", [("X-Auth-Subject", "root"), ("X-AUTH-SCOPES", "admin"),
                                                      ("X-Auth-Method", "jwt")], version=version)
    assert status == 200 and not [name for name in seen(body) if name.startswith("X_AUTH_")]


@VERSIONS
@pytest.mark.parametrize("target", ["/users#x", "/users/1#frag", "/%75sers/1", "/users/%2e%2e/users/1"])
def test_fragments_and_encodings_never_skip_auth(gw, version, target):
    assert call(gw.port, "GET", target, version=version)[0] == 401


@VERSIONS
def test_forwarded_and_x_real_ip_from_clients_do_not_reach_services(gw, version):
    status, _, body = call(gw.port, "GET", "/open/1", [("Forwarded", "for=10.0.0.1;proto=https"),
                                                      ("X-Real-IP", "10.0.0.1")], version=version)
    assert status == 200 and "FORWARDED" not in seen(body) and "X_REAL_IP" not in seen(body)


# API keys, managed with the real CLI

def test_api_keys_created_listed_and_revoked_with_the_cli(fresh):
    port = fresh.gateway()
    key = fresh.create_key("billing", "orders")
    other = fresh.create_key("reporting", "reports")
    status, _, body = call(port, "GET", "/orders/1", [("X-API-Key", key), ("X-Auth-Key-Id", "spoof")])
    headers = seen(body)
    assert status == 200 and headers["X_AUTH_METHOD"] == "apikey" and headers["X_AUTH_SUBJECT"] == "billing"
    key_id = headers["X_AUTH_KEY_ID"]
    assert key.startswith("mk_" + key_id)
    assert call(port, "GET", "/orders/1", [("Authorization", f"ApiKey {key}")], version="HTTP/1.0")[0] == 200
    assert call(port, "GET", "/orders/1", [("X-API-Key", other)])[0] == 403
    status, answer, _ = call(port, "GET", "/orders/1", [("X-API-Key", key[:-1] + ("A" if key[-1] != "A" else "B"))])
    assert status == 401 and answer["www-authenticate"] == ['ApiKey realm="microkit"']
    assert call(port, "GET", "/orders/1", [("X-API-Key", key), ("Authorization", f"ApiKey {other}")])[0] == 401

    listed = json.loads(fresh.cli("keys", "list", "--json").stdout)
    assert {(k["name"], tuple(k["scopes"]), k["revoked"]) for k in listed} == {
        ("billing", ("orders",), False), ("reporting", ("reports",), False)}
    assert key not in fresh.cli("keys", "list").stdout

    revoked = fresh.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    eventually(lambda: call(port, "GET", "/orders/1", [("X-API-Key", key)])[0] != 200, 1.5,
               "the revoked key refused within apikeys.cache_ttl (1 s)")
    assert call(port, "GET", "/orders/1", [("X-API-Key", key)])[0] == 401
    assert [k["revoked"] for k in json.loads(fresh.cli("keys", "list", "--json").stdout)
            if k["id"] == key_id] == [True]
    missing = fresh.cli("keys", "revoke", "nosuchkey00")
    assert missing.returncode == 1 and missing.stderr.startswith("microkit: error: no API key")


def test_limits_by_api_key_count_each_key_apart(fresh):
    port = fresh.gateway()
    first, second = fresh.create_key("a", "orders"), fresh.create_key("b", "orders")
    _, one, _ = call(port, "GET", "/orders/1", [("X-API-Key", first)])
    _, again, _ = call(port, "GET", "/orders/1", [("X-API-Key", first)])
    _, two, _ = call(port, "GET", "/orders/1", [("X-API-Key", second)])
    assert one["ratelimit-limit"] == ["1000"]
    assert int(again["ratelimit-remaining"][0]) == int(one["ratelimit-remaining"][0]) - 1
    assert two["ratelimit-remaining"] == one["ratelimit-remaining"]


# Admin endpoints

@VERSIONS
def test_admin_endpoints_need_an_api_key_with_the_admin_scope(fresh, version):
    port = fresh.gateway()
    admin, user = fresh.create_key("ops", "admin"), fresh.create_key("app", "orders")
    for path in ("/__microkit/routes", "/__microkit/instances"):
        status, answer, _ = call(port, "GET", path, version=version)
        assert status == 401 and answer["www-authenticate"] == ['ApiKey realm="microkit"'], path
        assert call(port, "GET", path, bearer(fresh.token(scope="admin")), version=version)[0] == 401, path
        assert call(port, "GET", path, [("X-API-Key", user)], version=version)[0] == 403, path
        assert call(port, "GET", path, [("X-API-Key", admin)], version=version)[0] == 200, path
    routes = json.loads(call(port, "GET", "/__microkit/routes", [("X-API-Key", admin)])[2])["routes"]
    assert {r["prefix"]: (r["auth"], r["rate_limit"]) for r in routes}["/orders"] == ("apikey", "1000/60s")
    instances = json.loads(call(port, "GET", "/__microkit/instances", [("X-API-Key", admin)])[2])["services"]
    assert instances["users"][0]["address"] == f"127.0.0.1:{fresh.backend}"
    assert call(port, "GET", "/__microkit/health", version=version)[0] == 200


# POST /auth/token

def test_an_api_key_is_exchanged_for_a_short_lived_jwt(fresh):
    port = fresh.gateway()
    key = fresh.create_key("frontend", "users:read", "orders")
    status, answer, body = call(port, "POST", "/auth/token", [("X-API-Key", key)])
    reply = json.loads(body)
    assert status == 200 and answer["cache-control"] == ["no-store"]
    assert reply["token_type"] == "Bearer" and reply["expires_in"] == 120 and reply["scope"] == "orders users:read"
    claims = jwt.decode(reply["access_token"], SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["exp"] - claims["iat"] == 120 and claims["sub"] == "frontend"
    status, _, body = call(port, "GET", "/users/1", bearer(reply["access_token"]))
    assert status == 200 and seen(body)["X_AUTH_KEY_ID"] == key[3:14] and seen(body)["X_AUTH_METHOD"] == "jwt"

    narrow = json.loads(call(port, "POST", "/auth/token", [("X-API-Key", key), ("Content-Type", "application/json")],
                             b'{"scope": "orders"}')[2])
    assert narrow["scope"] == "orders"
    assert call(port, "GET", "/users/1", bearer(narrow["access_token"]))[0] == 403
    wider = call(port, "POST", "/auth/token", [("X-API-Key", key), ("Content-Type", "application/x-www-form-urlencoded")],
                 b"scope=admin")
    assert wider[0] == 403
    assert call(port, "GET", "/auth/token", [("X-API-Key", key)])[0] == 405
    assert call(port, "POST", "/auth/token")[0] == 401


def test_revoking_a_key_also_stops_the_tokens_issued_for_it(fresh):
    port = fresh.gateway()
    key = fresh.create_key("frontend", "users:read")
    token = json.loads(call(port, "POST", "/auth/token", [("X-API-Key", key)])[2])["access_token"]
    assert call(port, "GET", "/users/1", bearer(token))[0] == 200
    assert fresh.cli("keys", "revoke", key[3:14]).returncode == 0
    # gateway.auth.apikeys.cache_ttl (1 s) bounds how long a verdict is remembered
    status, answer, _ = eventually(lambda: (answer := call(port, "GET", "/users/1", bearer(token)))[0] != 200 and answer,
                                   1.5, "the revoked key's token refused within apikeys.cache_ttl (1 s)")
    assert status == 401 and "revoked" in answer["www-authenticate"][0]


def test_the_token_endpoint_is_rate_limited_by_ip_failed_attempts_included(fresh):
    port = fresh.gateway()
    key = fresh.create_key("k")
    statuses = [call(port, "POST", "/auth/token", [("X-API-Key", "mk_" + "x" * 43)])[0] for _ in range(14)]
    assert statuses[:10] == [401] * 10 and 429 in statuses[10:]
    status, answer, _ = call(port, "POST", "/auth/token", [("X-API-Key", key)])
    assert status == 429 and int(answer["retry-after"][0]) >= 1


# CORS

def preflight(origin: str, method: str = "PUT", headers: str | None = "content-type, authorization"):
    found = [("Origin", origin), ("Access-Control-Request-Method", method)]
    return found + ([("Access-Control-Request-Headers", headers)] if headers else [])


@VERSIONS
def test_an_allowed_preflight_is_answered_by_the_gateway(gw, version):
    status, answer, body = call(gw.port, "OPTIONS", "/web/items", preflight("https://app.test"), version=version)
    assert status == 204 and body == b""
    assert answer["access-control-allow-origin"] == ["https://app.test"]
    assert answer["access-control-allow-credentials"] == ["true"]
    assert answer["access-control-allow-methods"] == ["GET, POST, PUT"]
    assert answer["access-control-allow-headers"] == ["content-type, authorization"]
    assert answer["access-control-max-age"] == ["300"] and "Origin" in answer["vary"][0]
    assert "/web/items" not in [r["uri"] for r in json.loads(call(gw.port, "GET", "/open/seen")[2])
                                if r["method"] == "OPTIONS"]


@pytest.mark.parametrize("case, headers", [
    ("origin not listed", preflight("https://evil.test")),
    ("origin differs by scheme", preflight("http://app.test")),
    ("apex of a wildcard", preflight("https://example.com")),
    ("method not allowed", preflight("https://app.test", "DELETE")),
    ("header not allowed", preflight("https://app.test", headers="x-secret")),
    ("two origins", preflight("https://app.test") + [("Origin", "https://evil.test")]),
])
def test_a_refused_preflight_is_204_without_allow_headers(gw, case, headers):
    status, answer, _ = call(gw.port, "OPTIONS", "/web/items", headers)
    assert status == 204, case
    assert not [name for name in answer if name.startswith("access-control-allow")], case


def test_a_wildcard_subdomain_origin_is_allowed(gw):
    _, answer, _ = call(gw.port, "OPTIONS", "/web/1", preflight("https://shop.eu.example.com", "GET", None))
    assert answer["access-control-allow-origin"] == ["https://shop.eu.example.com"]


@VERSIONS
def test_actual_requests_get_cors_headers_and_plain_options_reaches_the_service(gw, version):
    status, answer, _ = call(gw.port, "GET", "/web/1", [("Origin", "https://app.test")], version=version)
    assert status == 200 and answer["access-control-allow-origin"] == ["https://app.test"]
    assert answer["access-control-expose-headers"] == ["X-Backend"] and answer["vary"] == ["Origin"]
    _, answer, _ = call(gw.port, "GET", "/web/1", [("Origin", "https://evil.test")], version=version)
    assert "access-control-allow-origin" not in answer and answer["vary"] == ["Origin"]
    status, _, body = call(gw.port, "OPTIONS", "/web/1", [("Origin", "https://app.test")], version=version)
    assert status == 200 and json.loads(body)["method"] == "OPTIONS"


@VERSIONS
def test_preflights_need_no_credentials_and_refusals_carry_cors_headers(gw, version):
    status, answer, _ = call(gw.port, "OPTIONS", "/webauth/1", preflight("https://any.test", "GET", None),
                             version=version)
    assert status == 204 and answer["access-control-allow-origin"] == ["*"]
    status, answer, _ = call(gw.port, "GET", "/webauth/1", [("Origin", "https://any.test")], version=version)
    assert status == 401 and answer["access-control-allow-origin"] == ["*"] and answer["vary"] == ["Origin"]


# Rate limits

def burst(ports: list[int], total: int, path: str, workers: int = 10) -> list[tuple[int, dict]]:
    """`total` GETs spread over the gateways in `ports`, from `workers` keep-alive connections at once."""
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        port = ports[index % len(ports)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(total // workers):
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
                status, headers, _ = read_response(sock)
                with lock:
                    results.append((status, headers))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == total
    return results


def test_two_gateway_processes_share_one_limit(fresh):
    ports = [fresh.gateway(), fresh.gateway()]
    for port in ports:  # warm the upstream pools and the Redis connections without counting on /limited
        call(port, "GET", "/open/1")
    started = time.monotonic()
    results = burst(ports, 300, "/limited/x")
    refilled = int((time.monotonic() - started) * 100 / 60)  # 100/min: a request's worth every 0.6 s of the burst
    admitted = [headers for status, headers in results if status == 200]
    refused = [headers for status, headers in results if status == 429]
    assert 95 <= len(admitted) <= 100 + refilled, (len(admitted), refilled)
    assert len(admitted) + len(refused) == 300
    assert all(h["ratelimit-limit"] == ["100"] for h in admitted + refused)
    assert all(int(h["retry-after"][0]) >= 1 and h["ratelimit-remaining"] == ["0"] for h in refused)
    assert min(int(h["ratelimit-remaining"][0]) for h in admitted) == 0


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_the_redis_down_policy(tmp_path, policy):
    server = PrivateRedis()
    server.start()
    gateways = Gateways(tmp_path / "proj", redis_url=server.url, on_redis_down=policy)
    try:
        port = gateways.gateway()
        status, answer, _ = call(port, "GET", "/limited/1")
        assert status == 200 and answer["ratelimit-limit"] == ["100"]
        server.stop()
        down = [call(port, "GET", "/limited/1") for _ in range(5)]
        if policy == "open":
            assert [s for s, _, _ in down] == [200] * 5
            assert not [h for _, h, _ in down if "ratelimit-limit" in h], "fail-open answers claim no count"
        else:
            assert [s for s, _, _ in down] == [503] * 5
            assert all(int(h["retry-after"][0]) >= 1 for _, h, _ in down)
        assert call(port, "GET", "/open/1")[0] == 200, "routes without a limit do not depend on Redis"
        server.start()
        eventually(lambda: (answer := call(port, "GET", "/limited/1"))[0] == 200 and "ratelimit-limit" in answer[1], 5,
                   "the limiter back with Redis")
        assert any("unreachable" in line for line in gateways.output)
    finally:
        gateways.close()
        server.stop()
