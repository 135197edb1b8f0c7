"""The pytest plugin against the demo shop (examples/shop, whose orders and payments call other services
through the gateway): fakes in a service's place, the whole flow across three services, Redis registries,
per-test databases on PostgreSQL and MariaDB, and pytest-xdist."""

from __future__ import annotations

import json

import pytest

from support.cli import REPO
from support.servers import MYSQL, POSTGRES, REDIS_URL, require_redis, server_missing

SHOP = str(REPO / "microkit.toml")
@pytest.fixture
def runner(runner):
    """The inner pytest runs against the demo shop."""
    def run(source: str, *args: str, **options):
        return runner(source, "--microkit-config", SHOP, *args, **options)

    run.out = runner.out
    return run

def facts(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def test_fakes_stand_in_for_the_services_a_service_calls(runner):
    result = runner("""
        import bottle

        def test_a_function(service, fake_service):
            users = fake_service("users", lambda r: {"id": 7, "name": "ada"} if r.path == "/users/7"
                                 else (404, {"error": "no such user"}))
            orders = service("orders")
            orders.post("/orders/", json={"user_id": 7, "item": "book", "quantity": 2}, expect=201)
            orders.post("/orders/", json={"user_id": 8, "item": "book", "quantity": 2}, expect=400)
            assert [(c.method, c.path) for c in users.calls] == [("GET", "/users/7"), ("GET", "/users/8")]
            assert users.calls[0].headers["X-Request-Id"]

        def test_a_wsgi_app_called_by_worker_processes(service, gateway, fake_service):
            app = bottle.Bottle()
            app.get("/users/<n:int>")(lambda n: {"id": n, "name": "from the fake"})
            fake_service("users", app)
            service("orders", mode="process")
            order = gateway.post("/orders/", json={"user_id": 3, "item": "pen", "quantity": 1}, expect=201).json()
            assert gateway.get(f"/orders/{order['id']}", expect=200).json()["user_id"] == 3

        def test_a_service_down_is_a_fake_answering_503(service, fake_service):
            fake_service("users", lambda r: (503, {"error": "down"}))
            service("orders").post("/orders/", json={"user_id": 1, "item": "x", "quantity": 1}, expect=503)

        def test_without_a_gateway_calls_fail_fast_instead_of_reaching_another_one(service):
            service("orders").post("/orders/", json={"user_id": 1, "item": "x", "quantity": 1}, expect=503)

        def test_a_fake_after_the_real_service_is_refused(service, fake_service):
            service("users")
            fake_service("users", lambda r: {})
        """)
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*microkit.testing: service users already runs in this test: fake it before*"])


def test_the_whole_shop_through_the_gateway(runner):
    result = runner("""
        from microkit.testing import eventually

        def test_order_and_pay(service, gateway):
            service("users")
            service("orders", mode="process")
            service("payments", mode="process")
            ada = gateway.post("/users/", json={"name": "ada"}, expect=201).json()
            order = gateway.post("/orders/", json={"user_id": ada["id"], "item": "book", "quantity": 2},
                                 expect=201).json()
            gateway.post("/payments/", json={"order_id": order["id"], "amount_cents": 1250}, expect=201)
            eventually(lambda: gateway.get(f"/orders/{order['id']}", expect=200).json()["status"] == "paid",
                       what="the order marked paid by orders' consumer of payments.completed")
            gateway.post("/orders/", json={"user_id": 999, "item": "book", "quantity": 1}, expect=400)
        """)
    result.assert_outcomes(passed=1)


def redis_client():
    import redis

    require_redis(REDIS_URL)
    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)


def test_per_test_key_prefixes_on_redis_are_deleted_afterwards(runner):
    client = redis_client()
    result = runner("""
        import json, os, redis
        from pathlib import Path

        def test_on_redis(service, gateway, api_key, microkit_test, microkit_registry_url):
            namespace = microkit_test.project.namespace
            service("users", mode="process")
            gateway.with_headers({"X-API-Key": api_key("ops")}).get("/users/", expect=200)
            keys = redis.Redis.from_url(microkit_registry_url).keys(f"{namespace}:*")
            assert any(b":instance:users:" in k for k in keys) and f"{namespace}:apikeys".encode() in keys
            (Path(os.environ["MKT_OUT"]) / f"{namespace}.json").write_text(json.dumps({"namespace": namespace}))

        def test_another_test_sees_none_of_it(service, microkit_test):
            assert microkit_test.project.registry.instances("users") == []
            service("users")
            assert len(microkit_test.project.registry.instances("users")) == 1
        """, "--microkit-registry", REDIS_URL)
    result.assert_outcomes(passed=2)
    [fact] = facts(runner.out)
    assert client.keys(f"{fact['namespace']}:*") == []


def test_per_test_databases_on_postgresql_and_mariadb(runner):
    psycopg2 = pytest.importorskip("psycopg2")
    pymysql = pytest.importorskip("pymysql")
    try:
        psycopg2.connect(POSTGRES, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        server_missing(f"PostgreSQL at {POSTGRES}", exc)
    result = runner(f"""
        import json, os
        from pathlib import Path
        OUT = Path(os.environ["MKT_OUT"])

        def test_postgresql(service, database):
            db = database("{POSTGRES}")
            users = service("users", mode="process", database=db)
            users.post("/users/", json={{"name": "ada"}}, expect=201)
            assert db.connect().execute_sql("SELECT name FROM users").fetchall() == [("ada",)]
            (OUT / "pg.json").write_text(json.dumps({{"url": db.url}}))

        def test_mariadb_for_every_service(service, microkit_test):
            service("users").post("/users/", json={{"name": "grace"}}, expect=201)
            [db] = microkit_test.databases
            assert db.url.startswith("mysql://root@127.0.0.1:3306/mkt_")
            assert list(db.connect().execute_sql("SELECT name FROM users").fetchall()) == [("grace",)]
            (OUT / "my.json").write_text(json.dumps({{"url": db.url}}))
        """, "--microkit-database", MYSQL)
    result.assert_outcomes(passed=2)
    url = json.loads((runner.out / "pg.json").read_text())["url"]
    name = url.rsplit("/", 1)[1]
    assert name.startswith("mkt_")
    admin = psycopg2.connect(POSTGRES, connect_timeout=3)
    with admin, admin.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert cursor.fetchone()[0] == 0, f"{name} was not dropped"
    admin.close()
    name = json.loads((runner.out / "my.json").read_text())["url"].rsplit("/", 1)[1]
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3)
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (name,))
        assert cursor.fetchone()[0] == 0, f"{name} was not dropped"
    conn.close()


@pytest.mark.parametrize("registry", ["embedded", "redis"])
def test_parallel_workers_never_share_a_port_a_registry_or_a_database(runner, registry):
    pytest.importorskip("xdist")
    options = ["--microkit-registry", REDIS_URL] if registry == "redis" else []
    if options:
        redis_client()
    result = runner("""
        import json, os
        from pathlib import Path
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_parallel(n, service, gateway, microkit_test):
            users = service("users", mode="process" if n % 2 else "inprocess")
            ada = users.post("/users/", json={"name": f"user {n}"}, expect=201).json()
            assert ada["id"] == 1  # a database of its own
            assert [u["name"] for u in gateway.get("/users/", expect=200).json()] == [f"user {n}"]
            fact = {"worker": os.environ["PYTEST_XDIST_WORKER"], "namespace": microkit_test.project.namespace,
                    "gateway": gateway.url, "users": users.url}
            (Path(os.environ["MKT_OUT"]) / f"{n}.json").write_text(json.dumps(fact))
        """, "-n", "2", *options)
    result.assert_outcomes(passed=6)
    found = facts(runner.out)
    assert len({f["worker"] for f in found}) == 2
    assert len({f["namespace"] for f in found}) == 6
    assert len({f["gateway"] for f in found} | {f["users"] for f in found}) == 12
    if options:
        assert not any(redis_client().keys(f"{f['namespace']}:*") for f in found)
