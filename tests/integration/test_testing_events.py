"""The plugin's `events` fixture as users meet it: real test files run by pytest in a subprocess (two
pytest-xdist workers) against a project made with the real CLI, on each kind of bus: the embedded store,
Redis (a key prefix per test) and RabbitMQ (a vhost per test), with the real servers."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from support.cli import REPO, run_cli
from support.servers import server_missing
from support.up import gone

pytest_plugins = ["pytester"]

REDIS = os.environ.get("MICROKIT_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBIT = os.environ.get("MICROKIT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
CLEAN = ("MICROKIT_CONFIG", "MICROKIT_REGISTRY_URL", "DATABASE_URL", "MICROKIT_TEST_REGISTRY_URL",
         "MICROKIT_TEST_DATABASE_URL", "MICROKIT_TEST_MODE", "MICROKIT_TEST_EVENTS_URL", "MICROKIT_TEST_RABBITMQCTL",
         "MICROKIT_EVENTS_URL")

APP = '''
import os

import bottle

from microkit import events

app = bottle.Bottle()
app.get("/healthz")(lambda: {"status": "ok"})


@app.post("/notes/")
def create():
    event = events.publish("notes.created", {"n": bottle.request.json["n"], "pid": os.getpid()})
    bottle.response.status = 201
    return {"event": event.id}
'''

HANDLERS = '''
import os

from microkit import events


@events.handler("notes.created", retries=0)
def index(event):
    if not isinstance(event.payload.get("n"), int):
        raise ValueError(f"notes.created {event.id}: n must be an integer")
    if not events.once(event):
        return
    events.publish("notes.indexed", {"n": event.payload["n"], "pid": os.getpid(),
                                     "current": events.current() is event})
'''

INNER = """
import json, os
from pathlib import Path

import pytest

OUT = Path(os.environ["MKT_OUT"])


@pytest.mark.parametrize("n", range(4))
def test_services_publish_and_consume_on_the_tests_bus(n, service, events, microkit_test):
    mode = "process" if n % 2 else "inprocess"
    notes = service("notes", mode=mode)
    notes.post("/notes/", json={"n": n}, expect=201)
    created = events.wait_for("notes.created")
    indexed = events.wait_for("notes.indexed", timeout=20)
    assert created.source == indexed.source == "notes"
    assert created.payload["pid"] == (notes.pids[0] if mode == "process" else os.getpid())
    assert created.payload["pid"] not in notes.consumer_pids and indexed.payload["pid"] in notes.consumer_pids
    assert indexed.payload == {"n": n, "pid": indexed.payload["pid"], "current": True}
    assert [(e.type, e.payload["n"]) for e in events.published()] == [("notes.created", n), ("notes.indexed", n)]
    fact = {"worker": os.environ["PYTEST_XDIST_WORKER"], "namespace": microkit_test.project.namespace,
            "url": events.url, "pids": notes.consumer_pids + (notes.pids if mode == "process" else [])}
    (OUT / f"consume-{n}.json").write_text(json.dumps(fact))


@pytest.mark.parametrize("n", range(2))
def test_a_handler_called_here_as_a_consumer_calls_it(n, events, microkit_test):
    first = events.deliver("notes.index", {"n": n})
    events.deliver("notes.index", first)  # a redelivery: once() says it was handled
    [indexed] = events.published("notes.indexed")
    assert (indexed.source, indexed.payload) == ("notes", {"n": n, "pid": os.getpid(), "current": True})
    with pytest.raises(ValueError, match="n must be an integer"):
        events.deliver("notes.index", {"n": "x"})
    published = events.publish("notes.other", {"n": n})
    assert published.source == "tests" and events.published()[-1].id == published.id
    (OUT / f"deliver-{n}.json").write_text(json.dumps({"namespace": microkit_test.project.namespace,
                                                        "url": events.url}))


def test_waiting_for_what_never_comes_lists_what_came(events):
    events.publish("notes.created", {"n": 7})
    events.wait_for("notes.indexed", timeout=0.5)
"""


def scaffold(folder: Path) -> Path:
    """`microkit new project shop`, an events consumer from the template, and a service `notes` with an app
    that publishes and handlers of its own."""
    assert run_cli("new", "project", "shop", cwd=folder).returncode == 0
    root = folder / "shop"
    for args in (("worker", "--template", "events"), ("notes",)):
        result = run_cli("new", "service", *args, cwd=root)
        assert result.returncode == 0, result.stderr
    (root / "services" / "notes" / "app.py").write_text(APP)
    (root / "services" / "notes" / "handlers.py").write_text(HANDLERS)
    toml = root / "microkit.toml"
    handlers = '[services.notes]\nevents = "services.notes.handlers"\n'
    toml.write_text(toml.read_text().replace("[services.notes]\n", handlers))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return scaffold(tmp_path_factory.mktemp("events"))


@pytest.fixture
def runner(pytester, monkeypatch, tmp_path, project):
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("MKT_OUT", str(out))

    def run(source: str, *args: str):
        pytester.makepyfile(test_inner=textwrap.dedent(source))
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--microkit-config",
                                             str(project / "microkit.toml"), *args, timeout=300)

    run.out = out
    return run


def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        server_missing(f"Redis at {REDIS}", exc)
    return client


def vhosts() -> list[str]:
    try:
        socket.create_connection(("127.0.0.1", 5672), 3).close()
    except OSError as exc:
        server_missing("RabbitMQ at 127.0.0.1:5672", exc)
    if shutil.which("rabbitmqctl") is None:
        server_missing("rabbitmqctl", FileNotFoundError("rabbitmqctl is not on PATH"))
    listed = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()



@pytest.mark.parametrize("bus", ["embedded", "redis", "amqp"])
def test_each_test_has_a_bus_of_its_own_under_two_xdist_workers(runner, bus):
    pytest.importorskip("xdist")
    options = {"embedded": [], "redis": ["--microkit-events", REDIS], "amqp": ["--microkit-events", RABBIT]}[bus]
    before = vhosts() if bus == "amqp" else []
    result = runner(INNER, "-n", "2", *options)
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*no notes.indexed event within 0.5s; published during the test (1): "
                                 "notes.created from tests {'n': 7}"])
    consumed = [json.loads(p.read_text()) for p in sorted(runner.out.glob("consume-*.json"))]
    delivered = [json.loads(p.read_text()) for p in sorted(runner.out.glob("deliver-*.json"))]
    assert len(consumed) == 4 and len(delivered) == 2
    assert len({f["worker"] for f in consumed}) == 2
    assert len({f["url"] for f in consumed + delivered}) == (1 if bus == "redis" else 6)
    assert len({f["namespace"] for f in consumed + delivered}) == 6
    assert all(gone(pid) for f in consumed for pid in f["pids"]), "consumer processes outlived their test"
    if bus == "embedded":
        assert all(f["url"].startswith("sqlite:///") for f in consumed + delivered)
    if bus == "redis":
        client = redis_client()
        assert not any(client.keys(f"{f['namespace']}:*") for f in consumed + delivered), "keys left on Redis"
    if bus == "amqp":
        made = {f["url"].rsplit("/", 1)[1] for f in consumed + delivered}
        assert all(name.startswith("mkt_") for name in made)
        assert set(vhosts()) - set(before) == set(), "a test's vhost was left behind"


def test_the_bus_follows_a_redis_registry(runner):
    client = redis_client()
    result = runner("""
        import json, os
        from pathlib import Path

        def test_on_the_registry(service, events, microkit_test):
            service("worker")
            events.publish("worker.requested", {"name": "ada"})
            assert events.wait_for("worker.done").payload["name"] == "ada"
            assert events.url == microkit_test.project.registry_url
            namespace = microkit_test.project.namespace
            (Path(os.environ["MKT_OUT"]) / "fact.json").write_text(json.dumps({"namespace": namespace}))
        """, "--microkit-registry", REDIS)
    result.assert_outcomes(passed=1)
    namespace = json.loads((runner.out / "fact.json").read_text())["namespace"]
    assert client.keys(f"{namespace}:*") == []


def test_errors_are_one_clear_line(runner, project):
    result = runner("""
        import pytest

        def not_a_handler(event):
            pass

        def test_unknown_handler(events):
            events.deliver("notes.nope", {})

        def test_no_function_named(events):
            events.deliver("worker", {})

        def test_a_plain_function(events):
            events.deliver(not_a_handler, {})

        def test_the_wrong_type(events):
            from microkit.events import Event
            events.deliver("notes.index", Event("other.type", {}))

        def test_a_bad_type(events):
            events.publish("not a type", {})

        class TestBadUrl:
            @pytest.fixture
            def microkit_events_url(self):
                return "http://127.0.0.1:1/"

            def test_events(self, events):
                pass

        class TestNoRabbitmqctl:
            @pytest.fixture
            def microkit_events_url(self, monkeypatch):
                monkeypatch.setenv("MICROKIT_TEST_RABBITMQCTL", "/nonexistent/rabbitmqctl")
                return "amqp://guest:guest@127.0.0.1:5672/"

            def test_events(self, events):
                pass
        """)
    result.assert_outcomes(failed=5, errors=2)
    for line in ["*microkit.testing: service notes has no handler named 'nope' in services.notes.handlers "
                 "(known: index)",
                 "*microkit.testing: deliver('worker'): expected a handler function or \"SERVICE.FUNCTION\" with "
                 "SERVICE one of worker, notes",
                 "*microkit.testing: <function not_a_handler at *> is not decorated with @events.handler(\"TYPE\")",
                 "*microkit.testing: services.notes.handlers.index handles 'notes.created' events, not 'other.type'",
                 "*microkit.testing: bad event type 'not a type'*",
                 "*microkit.testing: microkit test events: expected a server URL (redis://, rediss://, "
                 "redis+sentinel://, amqp://, amqps://), or none for an embedded store per test, got "
                 "'http://127.0.0.1:1/'",
                 "*microkit.testing: per-test RabbitMQ vhosts are made with rabbitmqctl, and '/nonexistent/rabbitmqctl'"
                 " is not on PATH (set MICROKIT_TEST_RABBITMQCTL to the command*"]:
        result.stdout.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str()


def test_the_readme_example_against_the_shop(pytester, monkeypatch):
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)
    section = (REPO / "README.md").read_text().split("\n### Events in tests\n", 1)[1].split("\n### ", 1)[0]
    [example] = re.findall(r"```python\n(.*?)```", section, re.S)
    pytester.makepyfile(test_readme_events=example)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--microkit-config", str(REPO / "microkit.toml"),
                                           timeout=240)
    result.assert_outcomes(passed=example.count("\ndef test_"))
