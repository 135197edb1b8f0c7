"""API keys: both stores (SQLite file, real Redis with a private key prefix), constant-time checks,
revocation within the cache bound, ambiguous credentials, several processes sharing the SQLite store."""

from __future__ import annotations

import multiprocessing
import uuid

import pytest
import redis

from microkit.errors import ConfigError
from microkit.gateway.security import apikeys
from microkit.gateway.security.apikeys import ApiKeyAuth, KeyRecord, UnknownKey, key_digest, well_formed
from microkit.gateway.security.keystores import RedisKeyStore, SqliteKeyStore, connect_keystore
from microkit.gateway.security.request import Denied, Identity, RequestInfo
from microkit.registry import embedded_path
from microkit.testing import eventually
from support.servers import REDIS_URL, delete_namespace, require_redis


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    namespace = f"mktest-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        require_redis(REDIS_URL)
        made = connect_keystore(REDIS_URL, project_root=tmp_path, namespace=namespace)
    else:
        made = connect_keystore(None, project_root=tmp_path, namespace=namespace)
    yield made
    made.close()
    if request.param == "redis":
        delete_namespace(REDIS_URL, namespace)


def info(*, authorization: list[str] = (), api_key: list[str] = (), query: str = "") -> RequestInfo:
    headers = {}
    if authorization:
        headers["authorization"] = list(authorization)
    if api_key:
        headers["x-api-key"] = list(api_key)
    return RequestInfo("GET", "/orders", headers, "127.0.0.1", query)


def denied(auth: ApiKeyAuth, request: RequestInfo) -> Denied:
    with pytest.raises(Denied) as caught:
        auth.authenticate(request)
    return caught.value


# --- the stores ------------------------------------------------------------------------------------------

def test_connect_keystore_picks_the_store_by_url(tmp_path):
    assert isinstance(connect_keystore("redis://127.0.0.1:6379/0", project_root=tmp_path, namespace="n"),
                      RedisKeyStore)
    assert isinstance(connect_keystore("rediss://h:6380/0", project_root=tmp_path, namespace="n"), RedisKeyStore)
    embedded = connect_keystore(None, project_root=tmp_path, namespace="n")
    assert isinstance(embedded, SqliteKeyStore) and embedded.path == embedded_path(tmp_path)
    with pytest.raises(ConfigError, match="known schemes are redis://, rediss://"):
        connect_keystore("http://x", project_root=tmp_path, namespace="n")


def test_created_keys_have_the_documented_shape(store):
    key_id, plaintext = store.create("billing", ["orders:read"])
    assert plaintext.startswith("mk_") and len(plaintext) == 46 and well_formed(plaintext)
    assert plaintext[3:14] == key_id


def test_verify_accepts_the_key_and_nothing_else(store):
    key_id, plaintext = store.create("billing", ["orders:read", "orders:write"])
    record = store.verify(plaintext)
    assert record.key_id == key_id and record.name == "billing"
    assert record.scopes == {"orders:read", "orders:write"} and not record.revoked
    wrong_secret = plaintext[:14] + ("A" if plaintext[14] != "A" else "B") + plaintext[15:]
    for attempt in (wrong_secret, plaintext[:-1], plaintext + "x", "mk_" + "A" * 43, "", "Bearer x",
                    plaintext.upper() if plaintext.upper() != plaintext else plaintext[:-1]):
        assert store.verify(attempt) is None


def test_digests_are_compared_in_constant_time(store, monkeypatch):
    calls = []
    real = apikeys.hmac.compare_digest
    monkeypatch.setattr(apikeys.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    _, plaintext = store.create("billing")
    store.verify(plaintext)
    assert calls == [(key_digest(plaintext), key_digest(plaintext))]


def test_the_plaintext_is_never_stored(store, tmp_path):
    key_id, plaintext = store.create("billing")
    if isinstance(store, RedisKeyStore):
        client = redis.Redis.from_url(REDIS_URL)
        stored = b"".join(k + v for k, v in client.hgetall(store.key).items())
        client.close()
    else:
        stored = b"".join(p.read_bytes() for p in embedded_path(tmp_path).parent.iterdir())
    assert key_id.encode() in stored
    assert plaintext[14:].encode() not in stored
    assert key_digest(plaintext).encode() in stored


def test_list_shows_records_without_secrets(store):
    first, _ = store.create("first", ["a"])
    second, _ = store.create("second")
    listed = store.list()
    assert [r.key_id for r in listed] == [first, second]
    assert all(isinstance(r, KeyRecord) for r in listed)
    assert set(vars(listed[0])) == {"key_id", "name", "scopes", "created_at", "revoked"}


def test_revoked_keys_stop_verifying(store):
    key_id, plaintext = store.create("billing")
    revoked = store.revoke(key_id)
    assert revoked.revoked and revoked.key_id == key_id
    assert store.verify(plaintext) is None
    assert [r.revoked for r in store.list()] == [True]


def test_revoking_an_unknown_key_is_an_error(store):
    with pytest.raises(UnknownKey, match="no API key with id 'nope'"):
        store.revoke("nope")


def test_names_and_scopes_are_validated(store):
    for name, scopes in (("", ()), ("x" * 101, ()), ("bad\nname", ()), ("ok", ["has space"]), ("ok", ['q"'])):
        with pytest.raises(ValueError):
            store.create(name, scopes)
    assert store.list() == []


def test_redis_store_down_is_registry_unavailable(tmp_path):
    from microkit.registry import RegistryUnavailable

    down = RedisKeyStore("redis://127.0.0.1:1/0", "mktest")
    with pytest.raises(RegistryUnavailable):
        down.verify("mk_" + "A" * 43)
    auth = ApiKeyAuth(down)
    error = denied(auth, info(api_key=["mk_" + "A" * 43]))
    assert error.status == 503 and dict(error.headers)["Retry-After"] == "1"


def _create_keys(path: str, namespace: str, count: int, queue) -> None:
    store = SqliteKeyStore(path, namespace)
    queue.put([store.create(f"p{n}") for n in range(count)])


def test_sqlite_store_is_shared_by_concurrent_processes(tmp_path):
    namespace = "shared"
    path = embedded_path(tmp_path)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_create_keys, args=(str(path), namespace, 15, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    made = [pair for _ in workers for pair in queue.get(timeout=30)]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    store = SqliteKeyStore(path, namespace)
    assert len(store.list()) == 60
    assert all(store.verify(plaintext).key_id == key_id for key_id, plaintext in made)
    assert SqliteKeyStore(path, "another-namespace").list() == []


# --- ApiKeyAuth ------------------------------------------------------------------------------------------

def test_authenticates_from_either_header(store):
    key_id, plaintext = store.create("billing", ["orders:read"])
    auth = ApiKeyAuth(store)
    expected = Identity("billing", frozenset({"orders:read"}), key_id, "apikey")
    assert auth.authenticate(info(authorization=[f"ApiKey {plaintext}"])) == expected
    assert auth.authenticate(info(api_key=[plaintext])) == expected
    assert auth.authenticate(info(authorization=[f"apikey {plaintext}"], api_key=[plaintext])) == expected


def test_missing_key_is_401_with_challenge(store):
    error = denied(ApiKeyAuth(store), info())
    assert error.status == 401 and dict(error.headers)["WWW-Authenticate"] == 'ApiKey realm="microkit"'


def test_invalid_key_is_401(store):
    error = denied(ApiKeyAuth(store), info(api_key=["mk_" + "A" * 43]))
    assert error.status == 401 and error.message == "invalid or revoked API key"
    assert denied(ApiKeyAuth(store), info(api_key=["not-a-key"])).message == "malformed API key"


def test_two_different_keys_in_one_request_are_401(store):
    _, first = store.create("first")
    _, second = store.create("second")
    auth = ApiKeyAuth(store)
    for request in (info(authorization=[f"ApiKey {first}"], api_key=[second]),
                    info(api_key=[first, second]),
                    info(api_key=[f"{first}, {second}"]),
                    info(api_key=[first], query=f"api_key={second}")):
        assert denied(auth, request).status == 401


def test_key_in_the_url_alone_is_refused(store):
    _, plaintext = store.create("billing")
    error = denied(ApiKeyAuth(store), info(query=f"api_key={plaintext}"))
    assert error.status == 401 and "not the URL" in error.message


def test_missing_scope_is_403(store):
    _, plaintext = store.create("billing", ["orders:read"])
    auth = ApiKeyAuth(store)
    assert auth.authenticate(info(api_key=[plaintext]), required_scopes={"orders:read"})
    with pytest.raises(Denied) as caught:
        auth.authenticate(info(api_key=[plaintext]), required_scopes={"orders:write"})
    assert caught.value.status == 403


def test_verdicts_are_cached(store, monkeypatch):
    _, plaintext = store.create("billing")
    auth = ApiKeyAuth(store)
    calls = []
    real = store.verify
    monkeypatch.setattr(store, "verify", lambda key: calls.append(1) or real(key))
    for _ in range(5):
        auth.authenticate(info(api_key=[plaintext]))
        with pytest.raises(Denied):
            auth.authenticate(info(api_key=["mk_" + "B" * 43]))
    assert len(calls) == 2


def test_a_revoked_key_stops_working_within_the_cache_ttl(store):
    """The documented bound: a verdict lives `cache_ttl` seconds (1 by default) after it was fetched."""
    key_id, plaintext = store.create("billing")
    now = [1000.0]
    auth = ApiKeyAuth(store, clock=lambda: now[0])
    assert auth.cache_ttl == 1.0
    auth.authenticate(info(api_key=[plaintext]))
    store.revoke(key_id)
    now[0] += 0.99
    assert auth.authenticate(info(api_key=[plaintext]))
    now[0] += 0.02
    assert denied(auth, info(api_key=[plaintext])).status == 401


def test_a_revoked_key_stops_working_in_real_time(store):
    key_id, plaintext = store.create("billing")
    other = ApiKeyAuth(connect_keystore_like(store), cache_ttl=0.2)
    other.authenticate(info(api_key=[plaintext]))
    store.revoke(key_id)
    def refused() -> Denied | None:
        try:
            other.authenticate(info(api_key=[plaintext]))
        except Denied as refusal:
            return refusal
        return None

    assert eventually(refused, 0.5, "the revoked key refused within the 0.2 s cache_ttl").status == 401


def connect_keystore_like(store):
    """A second store object over the same data, as another gateway process would have."""
    if isinstance(store, RedisKeyStore):
        return RedisKeyStore(store.url, store.key.rsplit(":", 1)[0])
    return SqliteKeyStore(store.path, store.namespace)


def test_key_ids_never_start_with_a_dash_so_the_cli_can_take_them(monkeypatch):
    from microkit.gateway.security import apikeys
    draws = iter(["-" + "a" * 42, "b" * 43])
    monkeypatch.setattr(apikeys.secrets, "token_urlsafe", lambda n: next(draws))
    key = apikeys.generate_key()
    assert apikeys.key_id_of(key) == "b" * apikeys.ID_CHARS and apikeys.well_formed(key)
