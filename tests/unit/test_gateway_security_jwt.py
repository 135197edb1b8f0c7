"""JWT bearer authentication: every attack in issue 5 as its own test, key loading, token exchange,
identity headers. Keys are generated here with cryptography; no server is needed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from microkit.errors import ConfigError
from microkit.gateway.security import jwt_auth
from microkit.gateway.security.jwt_auth import JWTAuth, JWTSettings, load_jwks, secret_from_env
from microkit.gateway.security.request import (
    Denied, Identity, RequestInfo, identity_environ, identity_headers, strip_identity, strip_identity_environ,
)
from microkit.gateway.security.tokens import issue_token, token_response

SECRET = b"s" * 32
ISSUER = "https://issuer.example"
AUDIENCE = "microkit-gateway"
LEEWAY = 30


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def rsa_settings(tmp_path, rsa_key) -> JWTSettings:
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key))
    return JWTSettings.from_files(["RS256"], public_key_files={"k1": path}, issuer=ISSUER, audience=AUDIENCE,
                                  leeway=LEEWAY)


@pytest.fixture
def hs_settings() -> JWTSettings:
    return JWTSettings(("HS256",), secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY)


def claims(**extra) -> dict:
    now = int(time.time())
    base = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "scope": "read write"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def request(token: str | None = None, *, authorization: list[str] | None = None, query: str = "") -> RequestInfo:
    values = authorization if authorization is not None else ([f"Bearer {token}"] if token else [])
    headers = {"authorization": values} if values else {}
    return RequestInfo("GET", "/orders", headers, "127.0.0.1", query)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload: dict, sign=None) -> str:
    """A token built by hand, as an attacker would: `sign(signing_input) -> bytes` or no signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode())) if sign else ''}"


def denied(auth: JWTAuth, info: RequestInfo) -> Denied:
    with pytest.raises(Denied) as caught:
        auth.authenticate(info)
    return caught.value


def assert_invalid_token(error: Denied, description: str) -> None:
    assert error.status == 401
    assert dict(error.headers)["WWW-Authenticate"] == (
        f'Bearer realm="microkit", error="invalid_token", error_description="{description}"')


# --- accepted tokens -------------------------------------------------------------------------------------

def test_valid_rs256_token_gives_identity(rsa_settings, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    identity = JWTAuth(rsa_settings).authenticate(request(token))
    assert identity == Identity("alice", frozenset({"read", "write"}), None, "jwt")


def test_valid_hs256_token_gives_identity(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert JWTAuth(hs_settings).authenticate(request(token)).subject == "alice"


def test_valid_es256_token_from_a_jwks_file(tmp_path, ec_key, rsa_key):
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec-1", "use": "sig"},
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa-1", "alg": "RS256"},
    ]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    settings = JWTSettings.from_files(["ES256", "RS256"], jwks_file=path, issuer=ISSUER, audience=AUDIENCE)
    auth = JWTAuth(settings)
    assert auth.authenticate(request(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})))
    assert auth.authenticate(request(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})))


def test_scopes_come_from_scope_and_scp(hs_settings):
    auth = JWTAuth(hs_settings)
    token = jwt.encode(claims(scope=None, scp=["orders:read", "orders:write"]), SECRET, algorithm="HS256")
    assert auth.authenticate(request(token)).scopes == {"orders:read", "orders:write"}
    token = jwt.encode(claims(scope="a b", scp="c"), SECRET, algorithm="HS256")
    assert auth.authenticate(request(token)).scopes == {"a", "b", "c"}


def test_bearer_scheme_is_case_insensitive(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert JWTAuth(hs_settings).authenticate(request(authorization=[f"bearer  {token}"])).subject == "alice"


# --- attacks and malformed requests: each a 401 ----------------------------------------------------------

def test_missing_authorization_header_is_401_with_bare_challenge(hs_settings):
    error = denied(JWTAuth(hs_settings), request())
    assert error.status == 401
    assert dict(error.headers)["WWW-Authenticate"] == 'Bearer realm="microkit"'


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-jwt", "Bearer a.b", "Bearer a.b.c.d",
                                   "Bearer a b.c.d", "Bearer %%%.abc.def", "ApiKey mk_x"])
def test_malformed_authorization_header_is_401(hs_settings, value):
    error = denied(JWTAuth(hs_settings), request(authorization=[value]))
    assert error.status == 401
    assert 'error="invalid_token"' in dict(error.headers)["WWW-Authenticate"]


def test_alg_none_is_401(rsa_settings):
    token = forge({"alg": "none", "typ": "JWT", "kid": "k1"}, claims())
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(token)), "token algorithm not accepted")


@pytest.mark.parametrize("alg", ["None", "NONE", "nOnE", "HS512", "RS512", "PS256"])
def test_algorithms_that_are_not_pinned_are_401(rsa_settings, alg):
    token = forge({"alg": alg, "kid": "k1"}, claims(), lambda data: b"x" * 32)
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(token)), "token algorithm not accepted")


def test_hs256_signed_with_the_rsa_public_key_is_401(rsa_settings, rsa_key):
    pem = public_pem(rsa_key)
    token = forge({"alg": "HS256", "kid": "k1"}, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(token)), "token algorithm not accepted")


def test_hs256_signed_with_the_rsa_public_key_is_401_even_with_hs256_pinned(tmp_path, rsa_key):
    """With both families pinned, HS256 is checked against the secret only, never against a public key."""
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key))
    settings = JWTSettings.from_files(["RS256", "HS256"], secret=SECRET, public_key_files={"k1": path},
                                      issuer=ISSUER, audience=AUDIENCE)
    pem = public_pem(rsa_key)
    for kid in ("k1", None):
        header = {"alg": "HS256", **({"kid": kid} if kid else {})}
        token = forge(header, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
        assert_invalid_token(denied(JWTAuth(settings), request(token)), "bad signature")


def test_unknown_kid_is_401(rsa_settings, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k2"})
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(token)), "unknown key id")


def test_missing_kid_is_401_when_every_key_has_one(rsa_settings, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(token)), "token has no kid")


def test_kid_of_a_key_of_another_family_is_401(tmp_path, rsa_key, ec_key):
    """An ES256 token naming the RSA key's kid does not get the RSA key."""
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key))
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(public_pem(ec_key))
    settings = JWTSettings.from_files(["RS256", "ES256"], public_key_files={"k1": path, "e1": ec_path},
                                      issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k1"})
    assert_invalid_token(denied(JWTAuth(settings), request(token)), "unknown key id")


def test_bad_signature_is_401(rsa_settings, other_rsa_key):
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(token)), "bad signature")


def test_tampered_payload_is_401(rsa_settings, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    header, _, signature = token.split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='admin')).encode())}.{signature}"
    assert_invalid_token(denied(JWTAuth(rsa_settings), request(forged)), "bad signature")


def test_expiry_one_second_inside_the_leeway_passes(hs_settings):
    token = jwt.encode(claims(exp=int(time.time()) - LEEWAY + 1), SECRET, algorithm="HS256")
    assert JWTAuth(hs_settings).authenticate(request(token)).subject == "alice"


def test_expiry_one_second_outside_the_leeway_is_401(hs_settings):
    token = jwt.encode(claims(exp=int(time.time()) - LEEWAY - 1), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "token expired")


def test_not_before_one_second_inside_the_leeway_passes(hs_settings):
    token = jwt.encode(claims(nbf=int(time.time()) + LEEWAY - 1), SECRET, algorithm="HS256")
    assert JWTAuth(hs_settings).authenticate(request(token)).subject == "alice"


def test_not_before_one_second_outside_the_leeway_is_401(hs_settings):
    token = jwt.encode(claims(nbf=int(time.time()) + LEEWAY + 1), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "token not yet valid")


def test_token_without_exp_is_401(hs_settings):
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "missing exp claim")


def test_wrong_audience_is_401(hs_settings):
    token = jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "wrong audience")


def test_missing_audience_is_401(hs_settings):
    token = jwt.encode(claims(aud=None), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "missing aud claim")


def test_wrong_issuer_is_401(hs_settings):
    token = jwt.encode(claims(iss="https://evil.example"), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "wrong issuer")


def test_missing_issuer_is_401(hs_settings):
    token = jwt.encode(claims(iss=None), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "missing iss claim")


def test_two_authorization_headers_are_401(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    other = jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256")
    for values in ([f"Bearer {token}", f"Bearer {other}"], [f"Bearer {token}", f"Bearer {token}"]):
        assert_invalid_token(denied(JWTAuth(hs_settings), request(authorization=values)),
                             "more than one Authorization header")


def test_two_authorization_headers_joined_by_the_engine_are_401(hs_settings):
    """microkit's engine joins repeated headers with ", " in the environ; that is still two headers."""
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    other = jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256")
    info = RequestInfo.from_environ({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1",
                                     "HTTP_AUTHORIZATION": f"Bearer {token}, Bearer {other}"})
    assert_invalid_token(denied(JWTAuth(hs_settings), info), "more than one Authorization header")


def test_duplicate_headers_from_raw_header_lines_are_401(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    lines = [(b"Authorization", f"Bearer {token}".encode()), (b"authorization", f"Bearer {token}".encode())]
    info = RequestInfo.from_head("GET", "/", lines, "10.0.0.1")
    assert_invalid_token(denied(JWTAuth(hs_settings), info), "more than one Authorization header")


def test_header_and_a_differing_query_token_are_401(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    other = jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256")
    error = denied(JWTAuth(hs_settings), request(token, query=f"x=1&access_token={other}"))
    assert_invalid_token(error, "two different tokens in one request")


@pytest.mark.parametrize("name", ["access%5Ftoken", "access%5ftoken", "%61ccess_token", "access_token%00"])
def test_a_second_token_under_an_encoded_name_is_401(hs_settings, name):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    other = jwt.encode(claims(sub="bob"), SECRET, algorithm="HS256")
    error = denied(JWTAuth(hs_settings), request(token, query=f"{name}={other}"))
    assert_invalid_token(error, "two different tokens in one request")


def test_header_and_the_same_query_token_pass(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert JWTAuth(hs_settings).authenticate(request(token, query=f"access_token={token}")).subject == "alice"


def test_query_token_alone_is_not_accepted(hs_settings):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert denied(JWTAuth(hs_settings), request(query=f"access_token={token}")).status == 401


def test_critical_header_is_401(hs_settings):
    for crit in (["exp"], ["b64"]):
        token = forge({"alg": "HS256", "crit": crit, "b64": True}, claims(),
                      lambda data: hmac.new(SECRET, data, hashlib.sha256).digest())
        assert denied(JWTAuth(hs_settings), request(token)).status == 401


@pytest.mark.parametrize("subject", ["alice\r\nX-Auth-Scopes: admin", "", 42, "x" * 300])
def test_unsafe_subjects_are_401(hs_settings, subject):
    token = jwt.encode(claims(sub=subject), SECRET, algorithm="HS256")
    assert denied(JWTAuth(hs_settings), request(token)).status == 401


def test_scope_claims_with_unsafe_values_are_401(hs_settings):
    token = jwt.encode(claims(scope=None, scp=["ok", "bad\nscope"]), SECRET, algorithm="HS256")
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "invalid scp claim")


def test_errors_never_echo_the_token(hs_settings, rsa_key):
    """Descriptions are fixed strings: nothing the client sent reaches a header or a message."""
    evil_header = {"alg": 'HS256", injected="1', "kid": "k\r\nX: y"}
    tokens = [forge(evil_header, claims()), jwt.encode(claims(aud="a\"b"), SECRET, algorithm="HS256"),
              jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "evil\"kid"})]
    for token in tokens:
        error = denied(JWTAuth(hs_settings), request(token))
        text = error.message + repr(error.headers)
        assert token not in text and "injected" not in text and "evil" not in text and "\n" not in text


# --- scopes: 403 -----------------------------------------------------------------------------------------

def test_missing_required_scope_is_403_insufficient_scope():
    settings = JWTSettings(("HS256",), secret=SECRET, required_scopes={"orders:write"})
    token = jwt.encode(claims(aud=None, iss=None, scope="orders:read"), SECRET, algorithm="HS256")
    error = denied(JWTAuth(settings), request(token))
    assert error.status == 403
    challenge = dict(error.headers)["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="orders:write"' in challenge


def test_route_scopes_override_the_default(hs_settings):
    auth = JWTAuth(hs_settings)
    token = jwt.encode(claims(scope="orders:read"), SECRET, algorithm="HS256")
    assert auth.authenticate(request(token), required_scopes={"orders:read"})
    with pytest.raises(Denied) as caught:
        auth.authenticate(request(token), required_scopes={"admin"})
    assert caught.value.status == 403


# --- the cache -------------------------------------------------------------------------------------------

def test_repeated_tokens_are_verified_once(hs_settings, monkeypatch):
    calls = []
    real = jwt_auth.jwt.decode
    monkeypatch.setattr(jwt_auth.jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    auth = JWTAuth(hs_settings)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    for _ in range(5):
        auth.authenticate(request(token))
    assert len(calls) == 1


def test_cached_tokens_expire_with_exp_plus_leeway(hs_settings):
    """A cached token is served until exp + leeway on the cache's clock, then verified afresh."""
    now = [float(int(time.time()))]
    auth = JWTAuth(hs_settings, clock=lambda: now[0])
    token = jwt.encode(claims(exp=int(now[0]) + 5), SECRET, algorithm="HS256")
    auth.authenticate(request(token))
    now[0] += 5 + LEEWAY - 0.5
    assert auth._cache.get(token) is not None
    now[0] += 1
    assert auth._cache.get(token) is None


def test_cache_is_bounded():
    settings = JWTSettings(("HS256",), secret=SECRET, cache_size=3)
    auth = JWTAuth(settings)
    for n in range(10):
        auth.authenticate(request(jwt.encode(claims(aud=None, iss=None, sub=f"u{n}"), SECRET, algorithm="HS256")))
    assert len(auth._cache) == 3


# --- settings and loaders --------------------------------------------------------------------------------

def test_loader_errors_name_the_file(tmp_path, rsa_key):
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="missing.pem: cannot read"):
        JWTSettings.from_files(["RS256"], public_key_files={None: missing})
    private = tmp_path / "private.pem"
    private.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="private.pem: holds a private key"):
        JWTSettings.from_files(["RS256"], public_key_files={None: private})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ConfigError, match="garbage.pem: not a PEM public key"):
        JWTSettings.from_files(["RS256"], public_key_files={None: garbage})
    small = tmp_path / "small.pem"
    small.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(ConfigError, match="small.pem: RSA key of 1024 bits"):
        JWTSettings.from_files(["RS256"], public_key_files={None: small})


def test_jwks_errors_name_the_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"jwks.json: not JSON \(line 1"):
        load_jwks(path)
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}))
    with pytest.raises(ConfigError, match="jwks.json: key #1: kty 'oct' is not accepted"):
        load_jwks(path)
    path.write_text(json.dumps({"nokeys": []}))
    with pytest.raises(ConfigError, match='jwks.json: a JWKS needs a "keys" list'):
        load_jwks(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithms": ()}, "no algorithms pinned"),
    ({"algorithms": ("none",)}, "algorithm 'none' is not accepted"),
    ({"algorithms": ("HS256",)}, "HS256 is pinned but no secret"),
    ({"algorithms": ("HS256",), "secret": b"short"}, "at least 32 bytes"),
    ({"algorithms": ("RS256",)}, "RS256 is pinned but no RS public key"),
])
def test_settings_refuse_unsafe_configurations(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        JWTSettings(**kwargs)


def test_secret_from_env():
    assert secret_from_env("MK_SECRET", {"MK_SECRET": "x" * 32}) == b"x" * 32
    with pytest.raises(ConfigError, match="MK_SECRET .* is not set"):
        secret_from_env("MK_SECRET", {})
    with pytest.raises(ConfigError, match="MK_SECRET must hold at least 32 bytes"):
        secret_from_env("MK_SECRET", {"MK_SECRET": "short"})


# --- token exchange --------------------------------------------------------------------------------------

def test_issued_tokens_verify_and_carry_the_key_id(hs_settings):
    identity = Identity("billing", frozenset({"orders:read", "orders:write"}), "AbCdEfGhIjK", "apikey")
    token = issue_token(identity, hs_settings, ttl=60)
    verified = JWTAuth(hs_settings).authenticate(request(token))
    assert verified == Identity("billing", identity.scopes, "AbCdEfGhIjK", "jwt")
    assert jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)["exp"] - int(time.time()) <= 60


def test_issued_tokens_can_narrow_but_not_widen_scopes(hs_settings):
    identity = Identity("billing", frozenset({"a", "b"}), "AbCdEfGhIjK", "apikey")
    body = token_response(identity, hs_settings, 120, scopes={"a"})
    assert body["token_type"] == "Bearer" and body["expires_in"] == 120 and body["scope"] == "a"
    assert JWTAuth(hs_settings).authenticate(request(body["access_token"])).scopes == {"a"}
    with pytest.raises(ValueError, match="exceed"):
        issue_token(identity, hs_settings, scopes={"admin"})
    with pytest.raises(ValueError, match="lifetime"):
        issue_token(identity, hs_settings, ttl=0)


def test_issued_tokens_expire(hs_settings):
    identity = Identity("billing", frozenset(), None, "apikey")
    token = issue_token(identity, hs_settings, ttl=10, clock=lambda: time.time() - 10 - LEEWAY - 1)
    assert_invalid_token(denied(JWTAuth(hs_settings), request(token)), "token expired")


def test_issued_rs256_tokens_need_a_pinned_private_key(rsa_settings, rsa_key, ec_key):
    identity = Identity("svc", frozenset(), None, "apikey")
    token = issue_token(identity, rsa_settings, signing_key=rsa_key, kid="k1")
    assert JWTAuth(rsa_settings).authenticate(request(token)).subject == "svc"
    with pytest.raises(ValueError, match="ES256, which is not pinned"):
        issue_token(identity, rsa_settings, signing_key=ec_key)
    with pytest.raises(ValueError, match="needs HS256"):
        issue_token(identity, rsa_settings)


# --- identity headers ------------------------------------------------------------------------------------

def test_spoofed_identity_headers_are_stripped():
    sent = [("Host", "x"), ("X-Auth-Subject", "admin"), ("x-auth-scopes", "admin"), ("X-AUTH-KEY-ID", "k"),
            ("X-Auth-Method", "jwt"), ("X-Auth-Anything", "1"), ("X-Authority", "kept")]
    assert strip_identity(sent) == [("Host", "x"), ("X-Authority", "kept")]
    environ = {"HTTP_HOST": "x", "HTTP_X_AUTH_SUBJECT": "admin", "HTTP_X_AUTH_SCOPES": "admin",
               "HTTP_X_AUTH_KEY_ID": "k", "HTTP_X_AUTH_METHOD": "jwt", "HTTP_X_AUTHORITY": "kept"}
    strip_identity_environ(environ)
    assert environ == {"HTTP_HOST": "x", "HTTP_X_AUTHORITY": "kept"}


def test_identity_headers_are_safe_header_values():
    identity = Identity("zoë 100%\r\nX-Evil: 1", frozenset({"b", "a"}), "AbCdEfGhIjK", "apikey")
    headers = identity_headers(identity)
    assert headers == [("X-Auth-Subject", "zo%C3%AB 100%25%0D%0AX-Evil: 1"), ("X-Auth-Scopes", "a b"),
                       ("X-Auth-Key-Id", "AbCdEfGhIjK"), ("X-Auth-Method", "apikey")]
    assert identity_environ(identity)["HTTP_X_AUTH_SCOPES"] == "a b"
    assert [name for name, _ in identity_headers(Identity("bob", frozenset(), None, "jwt"))] == [
        "X-Auth-Subject", "X-Auth-Scopes", "X-Auth-Method"]
