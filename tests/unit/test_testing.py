"""microkit.testing's parts on their own: the client, fakes, the per-test copy of a project, databases."""

from __future__ import annotations

import io
from importlib.metadata import entry_points

import pytest

from support.cli import REPO
from microkit.testing import databases, fakes, servers
from microkit.testing.client import Client, Response
from microkit.testing.project import TestProject


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    found = {e.name: e.value for e in entry_points(group="pytest11")}
    assert found.get("microkit") == "microkit.testing.plugin"


def test_the_plugin_imports_no_gevent_and_no_app(tmp_path):
    import subprocess
    import sys

    code = "import sys, microkit.testing.plugin; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('gevent', 'bottle', 'peewee', 'redis', 'services')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


@pytest.fixture
def echo():
    """A fake served the way the fixtures serve them, answering with what it received."""
    calls: list = []
    server = servers.ThreadedApp(fakes.function_app(
        lambda r: (201, {"method": r.method, "path": r.path, "query": r.query, "json": r.json(),
                         "auth": r.headers.get("Authorization")}, {"X-Seen": "1"}), calls))
    yield Client(f"http://127.0.0.1:{server.port}"), calls
    server.stop()


def test_client_sends_json_and_params_and_reads_json(echo):
    client, calls = echo
    reply = client.bearer("abc").post("/things", json={"a": 1}, params={"q": "x"}, expect=201)
    assert reply.json() == {"method": "POST", "path": "/things", "query": {"q": "x"}, "json": {"a": 1},
                            "auth": "Bearer abc"}
    assert reply.headers["x-seen"] == "1" and reply.headers["Content-Type"] == "application/json"
    assert [c.path for c in calls] == ["/things"]


def test_a_wrong_status_fails_with_the_body_shown(echo):
    client, _ = echo
    with pytest.raises(AssertionError) as caught:
        client.get("/x", expect=(200, 204))
    message = str(caught.value)
    assert "GET http://127.0.0.1:" in message and "expected status 200 or 204, got 201" in message
    assert '"path": "/x"' in message


def test_a_body_that_is_not_json_fails_clearly():
    response = Response("GET", "http://h/x", 200, None, b"<html>")
    with pytest.raises(AssertionError, match="not JSON: '<html>'"):
        response.json()


@pytest.mark.parametrize("result, status, body, content_type", [
    ({"a": 1}, "200 OK", b'{"a": 1}', "application/json"),
    ((404, {"error": "no"}), "404 Not Found", b'{"error": "no"}', "application/json"),
    ((202, "queued", {"Content-Type": "text/x"}), "202 Accepted", b"queued", "text/x"),
    (None, "200 OK", b"", None),
])
def test_fake_functions_return_a_body_or_a_status_and_body(result, status, body, content_type):
    started = {}
    app = fakes.function_app(lambda request: result, [])
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO()}
    answer = app(environ, lambda s, h: started.update(status=s, headers=dict(h)))
    assert started["status"] == status and b"".join(answer) == body
    assert started["headers"].get("Content-Type") == content_type


def test_fakes_are_told_apart_by_their_arguments():
    assert fakes.is_wsgi_app(lambda environ, start_response: [])
    assert not fakes.is_wsgi_app(lambda request: {})
    with pytest.raises(TypeError, match="taking 3 arguments"):
        fakes.is_wsgi_app(lambda a, b, c: None)


def test_key_files_are_found_from_the_copy(tmp_path):
    """The shop's microkit.toml sits above its root (project.root): key paths stay relative to it."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.pem").write_text("unused")
    shop = (REPO / "microkit.toml").read_text().replace('root = "examples/shop"', f'root = "{REPO / "examples/shop"}"')
    shop += '\n[gateway.auth.jwt]\nalgorithms = ["HS256"]\npublic_key = "keys/k.pem"\n'
    (tmp_path / "microkit.toml").write_text(shop)
    project = TestProject(tmp_path / "microkit.toml", tmp_path / "copy", None)
    assert project.conf.gateway.auth.jwt.public_key == str(tmp_path / "keys" / "k.pem")
    assert project.conf.root == tmp_path / "copy" and (project.conf.root / "services" / "orders").is_dir()
    assert project.jwt_secret and len(project.jwt_secret) >= 32


@pytest.mark.parametrize("url, message", [
    ("sqlite:///x.db", "leave the server URL out for per-test SQLite files"),
    ("mongodb://h/x", "unknown database URL scheme 'mongodb'"),
    ("postgresql://u:secret@127.0.0.1:1/postgres", "cannot create a test database on postgresql://u:***@"),
])
def test_bad_database_urls_get_one_clear_message(url, message):
    with pytest.raises(databases.DatabaseError) as caught:
        databases.on_server(url)
    assert message in str(caught.value) and "secret" not in str(caught.value)


def test_sqlite_databases_are_files_in_the_test_folder(tmp_path):
    db = databases.sqlite(tmp_path / "data" / "users.db")
    assert db.url == f"sqlite:///{tmp_path}/data/users.db"
    peewee_db = db.connect()
    peewee_db.execute_sql("CREATE TABLE t (x)")
    assert (tmp_path / "data" / "users.db").is_file()
