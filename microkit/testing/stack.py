"""Everything one test started, in one place, stopped in reverse order when the test ends: the gateway
first (it is in front), then services and fakes, then databases are dropped, the events bus removed and
Redis keys deleted."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from microkit.testing import bus, databases, fakes, inprocess, processes, servers, tokens
from microkit.testing.project import TestProject

MODES = ("inprocess", "process")
DEFAULT = object()


class UsageError(ValueError):
    """A fixture was called with something that cannot work (an unknown service, a wrong mode)."""


class TestStack:
    __test__ = False

    def __init__(self, project: TestProject, database_server: str | None = None, mode: str = "inprocess",
                 database_env: str = "DATABASE_URL", events_server: str | None = None) -> None:
        if mode not in MODES:
            raise UsageError(f"microkit test mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.project = project
        self.database_server = database_server
        self.mode = mode
        self.database_env = database_env
        self.events_server = events_server
        self.gateway: processes.GatewayProcess | None = None
        self.running: list[servers.Running | processes.ConsumerProcesses] = []
        self.databases: list[databases.TestDatabase] = []
        self.bus: bus.TestBus | None = None
        self.uses_events = False  # the test uses the `events` fixture: record the bus, run in-process consumers
        self.service_env: dict[str, dict[str, str]] = {}  # what each service started with (its database)
        self.imported: set[str] = set()  # services whose package was imported afresh in this test
        self._handlers: dict[str, list] = {}
        self.before_first_start: Callable[[], None] = lambda: None
        self.on_gateway_url: Callable[[str], None] = lambda url: None

    # What the fixtures call.

    def database(self, server_url: str | None | object = DEFAULT, name: str = "db") -> databases.TestDatabase:
        """A database for this test: on `server_url` (default: the --microkit-database server), else an
        SQLite file in the test's folder."""
        server = self.database_server if server_url is DEFAULT else server_url
        if server:
            db = databases.on_server(server)
        else:
            db = databases.sqlite(self.project.root / "data" / f"{name}-{len(self.databases) + 1}.db")
        self.databases.append(db)
        return db

    def service(self, name: str, *, mode: str | None = None, workers: int = 1, env: Mapping[str, str] | None = None,
                database: Any = DEFAULT, consumers: bool | None = None, timeout: float = servers.START_TIMEOUT):
        """Start service `name` of the project with its own database (DATABASE_URL), registered in this
        test's registry and publishing on its events bus, and return a client pointed at it. Its events
        handlers run in consumer processes, subscribed before this returns: with mode="process" always
        (`microkit run` starts them), in-process when `consumers` is true (default: when the test uses the
        `events` fixture). A service that is consumers only returns them (`pids`, `log()`)."""
        conf = self._known(name)
        mode = mode or self.mode
        if mode not in MODES:
            raise UsageError(f"service {name}: mode expected one of {', '.join(MODES)}, got {mode!r}")
        if conf.command:
            mode = "process"  # a command service is a program of its own: it cannot be imported
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"service {name}: workers expected an integer >= 1, got {workers!r}")
        if consumers not in (None, True, False):
            raise UsageError(f"service {name}: consumers expected True, False or None, got {consumers!r}")
        if any(isinstance(r, fakes.FakeService) and r.name == name for r in self.running):
            raise UsageError(f"service {name} is already replaced by a fake in this test")
        self.before_first_start()
        self.events_bus()
        extra = self._env(name, env, database)
        self._handlers.pop(name, None)  # `deliver` finds them again, with this start's environment
        if conf.app is None and conf.command is None:  # consumers only
            return self._consumers(name, extra, timeout)
        if mode == "inprocess":
            started = inprocess.InProcessService(self.project, name, self._inprocess_env(name, extra))
            self.imported.add(name)
            self.running.append(started)
            if conf.events and (self.uses_events if consumers is None else consumers):
                started.consumer_pids = self._consumers(name, extra, timeout).pids
        else:
            self.project.write({name: {"workers": workers, "env": extra}})
            started = processes.ProcessService(self.project, name, workers, conf.consumers if conf.events else 0,
                                               timeout)
            self.running.append(started)
        self._wait_routed(name)
        return started

    def events_bus(self) -> bus.TestBus:
        """This test's events bus, made on first use (by `service` or the `events` fixture)."""
        if self.bus is None:
            self.bus = bus.TestBus(self.project, self.events_server, self._handlers_of, record=self.uses_events)
        elif self.uses_events:
            self.bus.record()
        return self.bus

    def fake(self, name: str, target: Callable) -> fakes.FakeService:
        """Put `target` (a WSGI app, or a function of a request) in the registry as service `name`."""
        conf = self._known(name)
        if any(r.name == name and not isinstance(r, fakes.FakeService) for r in self.running):
            raise UsageError(f"service {name} already runs in this test: fake it before starting it, or not at all")
        if conf.route is None:
            raise UsageError(f"service {name} has no route: the gateway sends nothing to it, so a fake would "
                             f"never be called")
        self.before_first_start()
        started = fakes.FakeService(self.project, name, target)
        self.running.append(started)
        self._wait_routed(name)
        return started

    def start_gateway(self) -> processes.GatewayProcess:
        if self.gateway is None:
            self.gateway = processes.GatewayProcess(self.project)
            self.project.set_gateway_address(self.gateway.url.split("://", 1)[1])
            self.on_gateway_url(self.gateway.url)
            for name in {r.name for r in self.running}:
                self._wait_routed(name)
        return self.gateway

    def jwt_token(self, subject: str = "test", scopes=(), **options: Any) -> str:
        return tokens.jwt_token(self.project, subject, scopes, **options)

    def api_key(self, name: str = "test", scopes=()) -> str:
        return tokens.api_key(self.project, name, scopes)

    @property
    def gateway_url(self) -> str:
        """Where services of this test call each other: the test's gateway, else an address that refuses
        at once (never a `microkit up` that happens to run on this machine)."""
        return self.gateway.url if self.gateway is not None else "http://127.0.0.1:0"

    def close(self) -> None:
        errors: list[BaseException] = []
        started = ([self.gateway] if self.gateway else []) + self.running[::-1]
        for item in started:
            _collect(errors, item.terminate)
        for item in started:
            _collect(errors, item.stop)
        for db in self.databases[::-1]:
            _collect(errors, db.drop)
        if self.bus is not None:
            _collect(errors, self.bus.close)
        _collect(errors, self.project.close)
        if errors:
            raise errors[0]

    # Helpers.

    def _known(self, name: str):
        services = self.project.conf.services
        if name not in services:
            raise UsageError(f"no service named {name!r} in {self.project.source_path} "
                             f"(known: {', '.join(services) or 'none'})")
        return services[name]

    def _env(self, name: str, env: Mapping[str, str] | None, database: Any) -> dict[str, str]:
        """What service `name` gets in its environment besides the project's: `env`, and its database."""
        extra = dict(env or {})
        if database is not False:
            db = self.database(name=name) if database is DEFAULT else database
            extra[self.database_env] = db.url if isinstance(db, databases.TestDatabase) else str(db)
        self.service_env[name] = extra
        return extra

    def _inprocess_env(self, name: str, extra: Mapping[str, str]) -> dict[str, str]:
        conf = self.project.conf.services[name]
        return {"MICROKIT_ROUTE": conf.app_route, "MICROKIT_PROJECT_ROOT": str(self.project.root), **conf.env,
                "MICROKIT_GATEWAY_URL": self.gateway_url, **extra}

    def _consumers(self, name: str, extra: Mapping[str, str], timeout: float) -> processes.ConsumerProcesses:
        """The consumers of service `name` alone, as processes (the test serves its HTTP side, if any)."""
        started = processes.ConsumerProcesses(self.project, name, self.project.conf.services[name].consumers,
                                              self.project.consumers_config(name, extra), timeout)
        self.running.append(started)
        return started

    def _handlers_of(self, name: str) -> list:
        """The handlers of service `name`, imported into this process with the environment the service got in
        this test (its database; beside its in-process app, if it runs here), else with one as
        `service(name)` would give it."""
        from microkit import events

        conf = self._known(name)
        if not conf.events:
            raise UsageError(f"service {name} has no events handlers (events = \"module\" in [services.{name}])")
        if name not in self._handlers:
            extra = self.service_env.get(name)
            if extra is None:
                extra = self._env(name, None, DEFAULT)
            module = inprocess.load_module(self.project.source.root, conf.events, self._inprocess_env(name, extra),
                                           fresh=name not in self.imported)
            self.imported.add(name)
            self._handlers[name] = [h for h in events.handlers() if h.function.__module__ == conf.events
                                    and getattr(module, h.function.__name__, None) is h.function]
        return self._handlers[name]

    def _wait_routed(self, name: str) -> None:
        if self.gateway is not None and self.project.conf.services[name].route is not None:
            self.gateway.wait_routed(name, len(self.project.registry.instances(name)))


def _collect(errors: list[BaseException], action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as exc:  # every cleanup runs; the first failure is reported after the rest ran
        errors.append(exc)
