"""microkit.db and cooperative drivers (issue 9): pooled, fork-safe, restart-safe peewee databases on the
real PostgreSQL and MariaDB, and drivers that never block a worker's loop."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import bottle
import pytest
from peewee import OperationalError, SqliteDatabase

from support.cli import PROGRAMS, REPO
from support.servers import free_port
from support.up import concurrent, make_project

from microkit import db as pooled
from microkit.testing import eventually

DB_APP = "services.dbs.app:app"


def app_on(database) -> bottle.Bottle:
    """A Bottle app as the rest template builds it: a connection checked out around each request."""
    app = bottle.Bottle()
    backend = "SELECT pg_backend_pid()" if isinstance(database, pooled.PostgresqlDatabase) else "SELECT CONNECTION_ID()"
    sleep = "SELECT pg_sleep(%s)" if isinstance(database, pooled.PostgresqlDatabase) else "SELECT SLEEP(%s)"

    @app.hook("before_request")
    def checkout() -> None:
        database.connect(reuse_if_open=True)

    @app.hook("after_request")
    def checkin() -> None:
        if not database.is_closed():
            database.close()

    @app.get("/backend")
    def which() -> dict:
        return {"backend": database.execute_sql(backend).fetchone()[0]}

    @app.get("/sleep")
    def slow() -> dict:
        database.execute_sql(sleep, (float(bottle.request.query_string),))
        return {"slept": True}

    return app


def call(app, path: str) -> tuple[int, dict, dict]:
    """One request through the WSGI app: status, headers, JSON body."""
    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "test",
               "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http"}
    answer: dict = {}
    body = b"".join(app(environ, lambda status, headers, exc=None: answer.update(status=status, headers=headers)))
    return int(answer["status"][:3]), dict(answer["headers"]), json.loads(body)


class Admin:
    """A connection of the test's own that ends the pool's server sessions (never the server itself), and
    only sessions on the test's own database: the servers are shared."""

    def __init__(self, url: str):
        self.postgres = url.startswith("postgres")
        if self.postgres:
            import psycopg2
            self.conn = psycopg2.connect(url)
            self.conn.autocommit = True
        else:
            import pymysql
            parts = urlparse(url)
            self.conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                                        password=parts.password or "", database=parts.path.lstrip("/"),
                                        autocommit=True)

    def end(self, backend: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)" if self.postgres else "KILL %s", (backend,))

    def running(self, sql_start: str) -> list[int]:
        with self.conn.cursor() as cur:
            if self.postgres:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid() "
                            "AND datname = current_database()", (sql_start + "%",))
            else:
                cur.execute("SELECT id FROM information_schema.processlist WHERE COALESCE(info, '') LIKE %s "
                            "AND id <> CONNECTION_ID() AND db = DATABASE()", (sql_start + "%",))
            return [row[0] for row in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def database_url(request):
    return request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mysql_url")


def test_connect_picks_a_pooled_database_by_url_and_rejects_bad_urls(tmp_path):
    database = pooled.connect(f"sqlite:///{tmp_path / 'x.db'}?max_connections=3")
    assert isinstance(database, pooled.SqliteFileDatabase) and database._max_connections == 3
    assert isinstance(pooled.connect("postgresql://u@h/name"), pooled.PostgresqlDatabase)
    assert isinstance(pooled.connect("mysql://u@h/name"), pooled.MySQLDatabase)
    assert isinstance(pooled.connect("postgresql+pool://u@h/name"), pooled.PostgresqlDatabase)
    memory = pooled.connect("sqlite:///:memory:")
    assert type(memory) is SqliteDatabase, "one in-memory database per connection: never pooled"
    with pytest.raises(ValueError, match=r"'redis://h/0': unknown database scheme 'redis' \(known: postgresql"):
        pooled.connect("redis://h/0")
    with pytest.raises(ValueError, match="names no database"):
        pooled.connect("postgresql://h/")


def test_pooled_connection_is_reused_across_requests(database_url):
    database = pooled.connect(database_url)
    app = app_on(database)
    first = call(app, "/backend")[2]["backend"]
    assert [call(app, "/backend")[2]["backend"] for _ in range(5)] == [first] * 5
    database.close_all()


def test_a_transaction_left_open_is_rolled_back_at_check_in(database_url):
    database = pooled.connect(database_url)
    database.connect()
    conn = database.connection()
    database.execute_sql("BEGIN")
    database.execute_sql("SELECT 1")
    database.close()  # peewee does not know of the raw BEGIN: the pool must roll it back
    database.connect()
    assert database.connection() is conn, "reused"
    if isinstance(database, pooled.PostgresqlDatabase):
        import psycopg2.extensions
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    else:
        assert not conn.server_status & pooled.MySQLDatabase.SERVER_STATUS_IN_TRANS
    database.close_all()


def test_connections_the_server_ended_while_idle_are_replaced_without_an_error(database_url):
    database = pooled.connect(database_url)
    app = app_on(database)
    first = call(app, "/backend")[2]["backend"]
    admin = Admin(database_url)
    try:
        admin.end(first)
        eventually(lambda: first not in admin.running(""), 5)
        status, _, body = call(app, "/backend")
        assert status == 200 and body["backend"] != first
    finally:
        admin.close()
        database.close_all()


def test_connection_lost_mid_query_is_503_json_and_the_next_request_succeeds(database_url):
    database = pooled.connect(database_url)
    app = app_on(database)
    admin = Admin(database_url)
    sleeping = "SELECT pg_sleep" if admin.postgres else "SELECT SLEEP"
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(call, app, "/sleep?30")
            victims = eventually(lambda: admin.running(sleeping), 10)
            for backend in victims:
                admin.end(backend)
            status, headers, body = slow.result(10)
        assert status == 503 and body == {"error": "database unavailable"}
        assert headers["Content-Type"] == "application/json" and headers["Retry-After"] == "1"
        assert call(app, "/backend")[0] == 200, "the next request connects again: no restart needed"
    finally:
        admin.close()
        database.close_all()


def test_unreachable_database_is_503_json_and_an_operational_error(tmp_path):
    port = free_port()
    for url in (f"postgresql://postgres@127.0.0.1:{port}/x", f"mysql://root@127.0.0.1:{port}/x"):
        database = pooled.connect(url)
        status, headers, body = call(app_on(database), "/backend")
        assert (status, body, headers["Retry-After"]) == (503, {"error": "database unavailable"}, "1")
        with pytest.raises(OperationalError):
            database.connect()


def test_pool_is_bounded_and_a_request_waits_then_gets_503(postgres_url):
    database = pooled.connect(postgres_url + "?max_connections=1&timeout=0.3")
    holder = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with database.connection_context():
            holder.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holder.wait(5)
        started = time.monotonic()
        with pytest.raises(pooled.DatabaseUnavailable):
            database.connect()
        assert 0.25 < time.monotonic() - started < 3
    finally:
        release.set()
        thread.join(5)
        database.close_all()


def test_a_forked_child_never_uses_or_ends_its_parents_connection(database_url):
    result = subprocess.run([sys.executable, str(PROGRAMS / "db_fork.py"), database_url], capture_output=True, text=True,
                            timeout=30, cwd=REPO)
    assert result.returncode == 0, result.stderr
    child, parent = (json.loads(line) for line in result.stdout.splitlines())
    assert child["child"] != parent["parent"], "the child opened its own connection"
    assert parent["after"] == parent["parent"], "the parent's session outlived the child"


def test_connections_of_greenlets_that_ended_without_giving_them_back_are_reclaimed(database_url):
    result = subprocess.run([sys.executable, str(PROGRAMS / "db_reclaim.py"), database_url], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_drivers_are_patched_when_imported_and_not_loaded_before():
    result = subprocess.run([sys.executable, str(PROGRAMS / "db_drivers.py")], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr


# Through a real worker.

def make_db_project(root, env: dict):
    """A project whose one service, `dbs`, runs db_app.py with `env`."""
    make_project(root, {"dbs": {"app": DB_APP}}, {"dbs": "db_app.py"})
    table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in env.items())
    with open(root / "microkit.toml", "a") as config:
        config.write(f"env = {{ {table} }}\n")  # [services.dbs] is the file's last table
    return root


def test_worker_makes_every_driver_cooperative(tmp_path, postgres_url, mysql_url, ups):
    """One worker, 10 requests at once, each a 0.3 s query: about 0.3 s in all when the loop is never blocked,
    3 s when each query blocks it (as psycopg2 did)."""
    root = make_db_project(tmp_path / "proj", {"PG_URL": postgres_url, "MYSQL_URL": mysql_url})  # no microkit.db
    up = ups(root)
    base = up.ready()["dbs"]
    import urllib.request
    with urllib.request.urlopen(base + "/drivers", timeout=10) as reply:
        assert json.load(reply) == {"psycopg2": True, "psycopg": True, "pymysql": True}
    for route in ("/raw/psycopg2", "/raw/psycopg", "/raw/pymysql"):
        elapsed, answers = concurrent(f"{base}{route}?0.3", 10)
        assert all(status == 200 for status, _ in answers), answers
        assert len({body["backend"] for _, body in answers}) == 10, "10 connections at once"
        assert elapsed < 1.5, f"{route}: 10 concurrent 0.3 s queries took {elapsed:.2f}s on one worker"


def test_pooled_database_is_cooperative_in_a_worker(tmp_path, database_url, ups):
    up = ups(make_db_project(tmp_path / "proj", {"DATABASE_URL": database_url}))
    base = up.ready()["dbs"]
    elapsed, answers = concurrent(f"{base}/pooled?0.3", 10)
    assert all(status == 200 for status, _ in answers) and elapsed < 1.5, (elapsed, answers)
    again = concurrent(f"{base}/pooled?0", 10)[1]
    assert {b["backend"] for _, b in again} <= {b["backend"] for _, b in answers}, "pooled: no new connection"


def test_pooled_service_answers_503_during_a_database_restart_then_recovers(tmp_path, private_postgres, ups):
    import urllib.error
    import urllib.request

    def get(path: str, timeout: float = 20) -> tuple[int, dict, dict]:
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as reply:
                return reply.status, dict(reply.headers), json.load(reply)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.load(error)

    up = ups(make_db_project(tmp_path / "proj", {"DATABASE_URL": private_postgres.url}))
    base = up.ready()["dbs"]
    status, _, first = get("/pooled")
    assert status == 200 and get("/pooled")[2]["backend"] == first["backend"]
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(get, "/pooled?30")
        admin = Admin(private_postgres.url)
        eventually(lambda: admin.running("SELECT pg_sleep"), 10)  # the query is on the server: the restart ends it
        admin.close()
        private_postgres.stop()
        status, headers, body = in_flight.result(20)
    assert (status, body, headers["Retry-After"]) == (503, {"error": "database unavailable"}, "1")
    for _ in range(3):
        status, headers, body = get("/pooled", timeout=5)
        assert (status, body, headers["Content-Type"]) == (503, {"error": "database unavailable"}, "application/json")
    private_postgres.start()
    status, _, after = get("/pooled")
    assert status == 200 and after["pid"] == first["pid"], "the same worker serves again, on a new connection"
    assert after["backend"] != first["backend"]
    assert up.service("dbs")["restarts"] == 0
    assert up.output.count("unavailable (answering 503 until it is back)") == 1, "logged once per outage"
    up.wait_for(r"database postgres is reachable again", 5)


def test_rest_template_service_pools_and_answers_503_during_a_database_restart(tmp_path, private_postgres, ups):
    """The generated `rest` service, unchanged, through the real CLI: its models.py uses microkit.db."""
    import urllib.error
    import urllib.request

    from support.cli import run_cli
    assert run_cli("new", "project", "shop", cwd=tmp_path).returncode == 0
    root = tmp_path / "shop"
    assert run_cli("new", "service", "users", cwd=root).returncode == 0
    config = (root / "microkit.toml").read_text().replace('listen = "127.0.0.1:8000"', 'listen = "127.0.0.1:0"')
    (root / "microkit.toml").write_text(config + f'env = {{ DATABASE_URL = "{private_postgres.url}" }}\n')

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=20) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    up = ups(root)
    base = up.ready()["users"]
    assert call("POST", "/users/", {"name": "ada"})[0] == 201
    private_postgres.stop()
    assert call("GET", "/users/1") == (503, {"error": "database unavailable"})
    assert call("POST", "/users/", {"name": "grace"}) == (503, {"error": "database unavailable"})
    private_postgres.start()
    status, user = call("GET", "/users/1")
    assert status == 200 and user["name"] == "ada"
    assert call("POST", "/users/", {"name": "grace"})[0] == 201
    assert up.service("users")["restarts"] == 0
