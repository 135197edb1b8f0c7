"""The built-in templates together: their generated tests on every database they support, one project
with a service of each under the real `microkit up` (every one through the gateway) and `--monolith`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.cli import PROGRAMS, run_cli
from support.up import Up
from microkit import scaffold
from microkit.testing import eventually

SERVICES = {"rest": "users", "flask": "accounts", "soap": "directory", "aiohttp": "notes"}
DATABASE_TEMPLATES = ("rest", "flask")


@pytest.fixture
def path_with_this_python(monkeypatch):
    """Command services run `python -m ...`: the Python of this venv, which has aiohttp."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def new_project(tmp_path: Path, templates=SERVICES, **routes: str) -> Path:
    assert run_cli("new", "project", "shop", cwd=tmp_path).returncode == 0
    root = tmp_path / "shop"
    for template, name in templates.items():
        result = run_cli("new", "service", name, "--template", template, cwd=root)
        assert result.returncode == 0, result.stderr
    toml = root / "microkit.toml"
    text = toml.read_text().replace('listen = "127.0.0.1:8000"', 'listen = "127.0.0.1:0"')  # never a fixed port
    for name, route in routes.items():
        text = text.replace(f'route = "/{name}"', f'route = "{route}"')  # renamed in microkit.toml only
    toml.write_text(text)
    return root


def run_generated_tests(root: Path, env: dict) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")
               and not k.startswith("MICROKIT_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "services"],
                            cwd=root, env={**environ, **env}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout and "skipped" not in result.stdout
    return result.stdout


def test_every_templates_generated_tests_pass_at_once(tmp_path, path_with_this_python):
    builtin = scaffold.builtin_templates()
    assert set(SERVICES) <= set(builtin)
    root = new_project(tmp_path, {t: SERVICES.get(t, f"{t}_service") for t in builtin})
    out = run_generated_tests(root, {})
    assert int(re.search(r"(\d+) passed", out).group(1)) >= 30
    assert not (root / "data").exists(), "the generated tests use throwaway databases"


def test_database_templates_pass_on_postgresql(tmp_path, postgres_url):
    root = new_project(tmp_path, {t: SERVICES[t] for t in DATABASE_TEMPLATES})
    run_generated_tests(root, {"MICROKIT_TEST_DATABASE_URL": postgres_url})  # a database per test on it


def test_database_templates_pass_on_mariadb(tmp_path, mysql_url):
    root = new_project(tmp_path, {t: SERVICES[t] for t in DATABASE_TEMPLATES})
    run_generated_tests(root, {"MICROKIT_TEST_DATABASE_URL": mysql_url})


@pytest.mark.parametrize("template", DATABASE_TEMPLATES)
def test_workers_starting_at_once_on_postgresql_create_the_tables_once(tmp_path, postgres_url, template):
    """Concurrent CREATE TABLE IF NOT EXISTS fails on PostgreSQL (a unique violation in pg_type): 8
    processes told to start at the same moment, 5 times over a fresh schema. The templates' startup
    takes an advisory lock first (without it, most of the 8 fail in every round)."""
    import psycopg2

    root = new_project(tmp_path, {template: SERVICES[template]})
    starts = [subprocess.Popen([sys.executable, str(PROGRAMS / "simultaneous_start.py"), template], cwd=root, text=True,
                               env={**os.environ, "DATABASE_URL": postgres_url},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(8)]
    try:
        assert [p.stdout.readline().strip() for p in starts] == ["ready"] * 8
        for _ in range(5):
            admin = psycopg2.connect(postgres_url)
            admin.autocommit = True
            admin.cursor().execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            admin.close()
            for p in starts:
                p.stdin.write("go\n")
            for p in starts:
                p.stdin.flush()
            answers = [p.stdout.readline().strip() for p in starts]
            assert answers == ["ok"] * 8, answers
    finally:
        for p in starts:
            p.kill()
            p.wait(10)


def request(method: str, url: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def post_xml(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url, body, {"Content-Type": "text/xml; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


XXE = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
       b'<t:CreateDirectory xmlns:t="urn:shop:directory"><t:record><t:name>&xxe;</t:name>'
       b'<t:email>a@b.c</t:email></t:record></t:CreateDirectory></soap:Body></soap:Envelope>')
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                     for i in range(1, 10))
          + b']><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            b'<t:CreateDirectory xmlns:t="urn:shop:directory"><t:record><t:name>&lol9;</t:name>'
            b'<t:email>a@b.c</t:email></t:record></t:CreateDirectory></soap:Body></soap:Envelope>')


def check_soap_through(gateway: str, route: str) -> None:
    """zeep, a real SOAP client, fetches the WSDL through the gateway and calls the address it names."""
    import zeep
    from zeep.exceptions import Fault

    client = zeep.Client(f"{gateway}{route}?wsdl")
    assert client.service._binding_options["address"] == f"{gateway}{route}", "the WSDL names the gateway"
    created = client.service.CreateDirectory(record={"name": "ada", "email": "ada@example.com"})
    assert client.service.GetDirectory(id=created.id).name == "ada"
    with pytest.raises(Fault) as fault:
        client.service.GetDirectory(id=424242)
    assert fault.value.code == "soap:Client"
    for attack in (XXE, LAUGHS):
        status, body = post_xml(f"{gateway}{route}", attack)
        assert status == 500 and "<faultcode>soap:Client</faultcode>" in body and "root:" not in body
    assert [r.name for r in client.service.ListDirectorys()] == ["ada"], "no attack created a record"


def check_json_resource(gateway: str, route: str) -> None:
    status, item = request("POST", f"{gateway}{route}/", {"name": "ada"})
    assert status == 201 and item["name"] == "ada", (route, status, item)
    assert request("GET", f"{gateway}{route}/{item['id']}") == (200, item)
    assert request("GET", f"{gateway}{route}")[1] == [item]


def test_one_service_of_each_template_under_up_every_one_through_the_gateway(tmp_path, path_with_this_python):
    root = new_project(tmp_path, users="/people", accounts="/ledger", directory="/soap/directory")
    up = Up(root, gateway=True)
    try:
        urls = up.ready(60)
        gateway = urls["gateway"]
        check_json_resource(gateway, "/people")
        check_json_resource(gateway, "/ledger")
        # `ready` waits for app services to be routed, not command services (the arbiter's routed check)
        eventually(lambda: request("GET", f"{gateway}/notes")[0] == 200, 10)
        check_json_resource(gateway, "/notes")
        check_soap_through(gateway, "/soap/directory")
        assert request("GET", f"{gateway}/users/1")[0] == 404, "the old route is gone: it lives in microkit.toml"

        waited = {}
        in_flight = threading.Thread(target=lambda: waited.update(r=request("GET", f"{gateway}/notes/wait?seconds=1")))
        in_flight.start()
        eventually(lambda: request("GET", urls["notes"] + "/healthz")[1]["waiting"] == 1, 10)
        up.signal(signal.SIGTERM)
        assert up.wait(30) == 0
        in_flight.join(10)
        assert waited["r"] == (200, {"waited": 1.0}), "the aiohttp service finished its request before stopping"
    finally:
        up.close()
    assert (root / "data" / "users.db").exists() and (root / "data" / "accounts.db").exists(), \
        "the default databases live under the project root microkit passes (MICROKIT_PROJECT_ROOT)"


def test_workers_of_the_database_templates_start_together_on_postgresql(tmp_path, postgres_url):
    root = new_project(tmp_path, {t: SERVICES[t] for t in DATABASE_TEMPLATES})
    toml = root / "microkit.toml"
    text = toml.read_text()
    for name in ("users", "accounts"):
        text = text.replace(f'route = "/{name}"\nworkers = 1',
                            f'route = "/{name}"\nworkers = 4\nenv = {{ DATABASE_URL = "{postgres_url}" }}')
    toml.write_text(text)
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(60)["gateway"]
        assert "FATAL" not in up.output and "Traceback" not in up.output, up.output
        check_json_resource(gateway, "/users")
        check_json_resource(gateway, "/accounts")
    finally:
        up.close()


def test_the_same_project_under_monolith(tmp_path, path_with_this_python):
    """rest, flask and soap are WSGI apps: mounted in one process. aiohttp is a command service (its own
    asyncio process), which monolith mode cannot mount: its route is not served there."""
    root = new_project(tmp_path, users="/people")
    up = Up(root, "--monolith", gateway=True)
    try:
        gateway = up.wait_for(r"^ready: gateway (http://\S+) \(monolith\)$", 60).group(1)
        check_json_resource(gateway, "/people")
        check_json_resource(gateway, "/accounts")
        check_soap_through(gateway, "/directory")
        assert request("GET", f"{gateway}/notes/")[0] == 404
    finally:
        up.close()


SLOW_ROUTE = '''

from sqlalchemy import text as _sql


@app.get(os.environ.get("MICROKIT_ROUTE", "") + "/slow")
def slow():
    with app.extensions["accounts.engine"].connect() as connection:
        connection.execute(_sql(os.environ["SLOW_QUERY"]))
    return "ok"
'''


@pytest.mark.parametrize("database, query", [("postgres_url", "SELECT pg_sleep(0.3)"),
                                             ("mysql_url", "SELECT SLEEP(0.3)")])
def test_flask_queries_under_one_gevent_worker_do_not_block_each_other(tmp_path, request, database, query):
    """One worker, ten concurrent 0.3 s queries: cooperative drivers overlap them (serialised: 3 s)."""
    url = request.getfixturevalue(database)
    root = new_project(tmp_path, {"flask": "accounts"})
    with (root / "services" / "accounts" / "app.py").open("a") as app_file:
        app_file.write(SLOW_ROUTE)
    toml = root / "microkit.toml"
    toml.write_text(toml.read_text().replace(
        'route = "/accounts"\nworkers = 1', f'route = "/accounts"\nworkers = 1\n'
        f'env = {{ DATABASE_URL = "{url}", SLOW_QUERY = "{query}" }}'))
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(60)["gateway"]
        with ThreadPoolExecutor(10) as pool:
            def ten_at_once() -> list[int]:
                return list(pool.map(lambda _: urllib.request.urlopen(f"{gateway}/accounts/slow", timeout=20).status,
                                     range(10)))
            assert ten_at_once() == [200] * 10  # the pool now holds ten connections
            started = time.monotonic()
            statuses = ten_at_once()
            elapsed = time.monotonic() - started
        assert statuses == [200] * 10
        assert elapsed < 1.5, f"ten 0.3 s queries took {elapsed:.2f}s on one worker: they ran one at a time"
    finally:
        up.close()


def test_workers_start_while_the_database_is_missing_and_create_the_tables_once_it_exists(tmp_path, postgres_url):
    """A worker that cannot reach its database at start still starts; its tables are made on a later request."""
    import psycopg2

    later = postgres_url.rsplit("/", 1)[1] + "_later"
    root = new_project(tmp_path, {t: SERVICES[t] for t in DATABASE_TEMPLATES})
    toml = root / "microkit.toml"
    text = toml.read_text()
    for name in ("users", "accounts"):
        text = text.replace(f'route = "/{name}"\nworkers = 1', f'route = "/{name}"\nworkers = 2\n'
                            f'env = {{ DATABASE_URL = "{postgres_url}_later" }}')
    toml.write_text(text)
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(60)["gateway"]
        assert "cannot reach the database to create tables" in up.output
        assert request("POST", f"{gateway}/users/", {"name": "ada"}) == (503, {"error": "database unavailable"})
        assert request("POST", f"{gateway}/accounts/", {"name": "ada"}) == (503, {"error": "database unavailable"})
        admin.cursor().execute(f'CREATE DATABASE "{later}"')
        check_json_resource(gateway, "/users")
        check_json_resource(gateway, "/accounts")
    finally:
        up.close()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{later}" WITH (FORCE)')
        admin.close()
