"""The pytest plugin (entry point `pytest11: microkit`): installing microkit makes these fixtures available.

    def test_create(service):
        users = service("users")                                # in-process; mode="process" for workers
        users.post("/users/", json={"name": "ada"}, expect=201)

Fixtures: `service` (start a service of the project), `gateway` (the project's gateway in front of them),
`fake_service` (a WSGI app or a function in a service's place), `database` (a per-test database),
`events` (the per-test events bus: publish, published, wait_for, deliver), `jwt_token` and `api_key`
(credentials for secured routes), and `microkit_test` (the per-test copy of the project all of them
share). Options: --microkit-config, --microkit-registry, --microkit-database, --microkit-events,
--microkit-mode. Only the standard library and pytest are imported until a fixture is used, so the
plugin costs nothing to tests that do not use it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

import pytest

ENV_REGISTRY = "MICROKIT_TEST_REGISTRY_URL"
ENV_DATABASE = "MICROKIT_TEST_DATABASE_URL"
ENV_MODE = "MICROKIT_TEST_MODE"
ENV_EVENTS = "MICROKIT_TEST_EVENTS_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microkit", "microkit.testing (services, gateway, databases, events, fakes, tokens)")
    group.addoption("--microkit-config", metavar="FILE", default=None,
                    help="microkit.toml of the project under test (default: $MICROKIT_CONFIG, else the nearest "
                         "microkit.toml above each test file).")
    group.addoption("--microkit-registry", metavar="URL", default=None,
                    help=f"redis:// URL for per-test registries, one key prefix per test (default: ${ENV_REGISTRY}, "
                         "else an embedded registry in each test's folder).")
    group.addoption("--microkit-database", metavar="URL", default=None,
                    help="PostgreSQL or MariaDB server URL on which each service gets a database created for the "
                         f"test and dropped after it (default: ${ENV_DATABASE}, else an SQLite file per service).")
    group.addoption("--microkit-events", metavar="URL", default=None,
                    help="redis:// URL (one key prefix per test) or amqp:// server URL (one vhost per test, made and "
                         f"deleted with rabbitmqctl) for per-test events buses (default: ${ENV_EVENTS}, else the "
                         "registry's Redis, else an embedded store in each test's folder).")
    group.addoption("--microkit-mode", choices=("inprocess", "process"), default=None,
                    help=f"how `service(...)` runs services by default (default: ${ENV_MODE}, else inprocess).")


def _fail_clearly(function: Callable) -> Callable:
    """microkit.testing's own errors fail the test with their one-line message, not a traceback."""
    from microkit.errors import MicrokitError
    from microkit.testing import bus, databases, servers, stack, tokens

    expected = (MicrokitError, stack.UsageError, servers.StartError, databases.DatabaseError,
                tokens.CredentialError, bus.BusError)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except expected as exc:
            message = f"microkit.testing: {exc}"
        pytest.fail(message, pytrace=False)  # outside the except block: no chained exceptions shown

    return wrapper


@pytest.fixture
def microkit_config(request: pytest.FixtureRequest) -> Path:
    """The project's microkit.toml; override this fixture to test another project."""
    from microkit import config

    explicit = request.config.getoption("--microkit-config")
    try:
        return config.find(explicit, cwd=request.path.parent).resolve()
    except config.ConfigError as exc:
        message = f"microkit.testing: {exc}"
    pytest.fail(message, pytrace=False)


@pytest.fixture
def microkit_registry_url(request: pytest.FixtureRequest) -> str | None:
    """The registry URL tests use (None: embedded); override it (or parametrize it) to choose per test."""
    return request.config.getoption("--microkit-registry") or os.environ.get(ENV_REGISTRY) or None


@pytest.fixture
def microkit_database_url(request: pytest.FixtureRequest) -> str | None:
    """The database server for per-test databases (None: SQLite files)."""
    return request.config.getoption("--microkit-database") or os.environ.get(ENV_DATABASE) or None


@pytest.fixture
def microkit_events_url(request: pytest.FixtureRequest) -> str | None:
    """The events server for per-test buses (None: the registry's Redis, else an embedded store); override
    it (or parametrize it) to choose per test."""
    return request.config.getoption("--microkit-events") or os.environ.get(ENV_EVENTS) or None


@pytest.fixture
def microkit_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                  microkit_config: Path, microkit_registry_url: str | None, microkit_database_url: str | None,
                  microkit_events_url: str | None):
    """This test's copy of the project (its folder, registry namespace and microkit.toml), and everything
    the other fixtures start in it, stopped and cleaned when the test ends. While the test runs,
    MICROKIT_GATEWAY_URL in this process is the test's gateway (or an address that refuses), so that an
    in-process service that makes a ServiceClient per request calls it too."""
    from microkit.testing.project import TestProject
    from microkit.testing.stack import TestStack

    mode = request.config.getoption("--microkit-mode") or os.environ.get(ENV_MODE) or "inprocess"
    project = _fail_clearly(TestProject)(microkit_config, tmp_path / "microkit", microkit_registry_url)
    stack = _fail_clearly(TestStack)(project, microkit_database_url, mode, events_server=microkit_events_url)

    def before_first_start() -> None:
        """Services call each other through the gateway, whose address they read as they start: when the
        test uses the gateway (or fakes, which only the gateway reaches), start it before any service."""
        stack.before_first_start = lambda: None
        if {"gateway", "fake_service"} & set(request.fixturenames):
            request.getfixturevalue("gateway")

    stack.before_first_start = before_first_start
    stack.uses_events = "events" in request.fixturenames
    stack.on_gateway_url = lambda url: monkeypatch.setenv("MICROKIT_GATEWAY_URL", url)
    monkeypatch.setenv("MICROKIT_GATEWAY_URL", stack.gateway_url)
    yield stack
    _fail_clearly(stack.close)()


@pytest.fixture
def service(microkit_test) -> Callable[..., Any]:
    """`service(name, mode="inprocess"|"process", workers=1, env={}, database=..., consumers=None)`: start one
    service of the project and get a client pointed at it (`.get`, `.post(..., json=..., expect=201)`,
    `.url`); its events handlers run in consumer processes (in-process mode: when the test uses `events`)."""
    return _fail_clearly(microkit_test.service)


@pytest.fixture
def gateway(microkit_test):
    """The project's gateway (`microkit gateway`, with every policy of microkit.toml) routing to the
    services and fakes this test starts; a client pointed at it."""
    return _fail_clearly(microkit_test.start_gateway)()


@pytest.fixture
def fake_service(microkit_test) -> Callable[..., Any]:
    """`fake_service(name, app_or_function)`: whoever calls service `name` through the gateway reaches the
    fake instead. A function gets a request (`.method`, `.path`, `.query`, `.headers`, `.json()`) and
    returns a body (dict/list as JSON), or `(status, body)`, or `(status, body, headers)`."""
    return _fail_clearly(microkit_test.fake)


@pytest.fixture
def database(microkit_test) -> Callable[..., Any]:
    """`database(server_url=...)`: a database for this test (`.url`, `.connect()` for peewee), dropped after it."""
    return _fail_clearly(microkit_test.database)


@pytest.fixture
def jwt_token(microkit_test) -> Callable[..., str]:
    """`jwt_token(subject="test", scopes=(), ttl=300, alg=None, **claims)`: a JWT the test's gateway accepts."""
    return _fail_clearly(microkit_test.jwt_token)


@pytest.fixture
def api_key(microkit_test) -> Callable[..., str]:
    """`api_key(name="test", scopes=())`: a new API key in the test's key store."""
    return _fail_clearly(microkit_test.api_key)


class _Clearly:
    """An object whose methods fail the test with microkit.testing's one-line messages (see _fail_clearly)."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __repr__(self) -> str:
        return repr(self._target)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._target, name)
        return _fail_clearly(found) if callable(found) else found


@pytest.fixture
def events(microkit_test):
    """This test's events bus, where the services it starts publish and consume: `publish(type, payload)`,
    `published(type=None)` (in order), `wait_for(type, timeout=10, where=None)` (the event, or a failure
    listing what was published), and `deliver(handler, event_or_payload)` (a handler called here, as a
    consumer calls it; `handler` is the function or "SERVICE.FUNCTION")."""
    microkit_test.uses_events = True  # also when requested with getfixturevalue
    return _Clearly(_fail_clearly(microkit_test.events_bus)())
