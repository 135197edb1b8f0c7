"""The arbiter: the process `microkit up` runs. It binds each service's socket once, forks the workers,
and then only watches: it reads their output, replaces what dies, answers `microkit status/reload/scale`
and reacts to signals.

Signal handlers only queue the signal (and wake the loop through the wake-up pipe); the loop dispatches
to `handle_<name>`. The loop is a plain `selectors` loop without threads, so forking stays safe, and
this module imports neither gevent nor any app: the workers do that after the fork.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import time
import urllib.request
from typing import Callable, Sequence

from ..config import Config, ServiceConfig
from ..errors import SupervisorError, UsageError
from . import control
from .command import CommandGroup, CommandSpec, check_health
from .group import FATAL, AppGroup, Group
from .printer import Printer
from .process import SUPERVISOR_SIGNALS, bind, url
from .registration import RegistrySpec, advertised_host
from .reloader import Reloader, app_scope, command_scope
from .worker import AppSpec

GATEWAY = "gateway"
GATEWAY_APP = "microkit.gateway.wsgi:application"
MONOLITH_APP = "microkit.monolith:application"
GATEWAY_HEALTH = "/__microkit/health"

TICK = 0.1
READY_PROBE_INTERVAL = 0.5


class Arbiter:
    def __init__(self, config: Config, services: Sequence[str] = (), reload: bool = False,
                 access_log: bool | None = None, printer: Printer | None = None,
                 gateway: bool = True, run_services: bool = True, control_name: str = control.UP,
                 monolith: bool = False):
        self.config = config
        self.root = config.root
        self.monolith = monolith
        self.names = self.select(config, services) if run_services else []
        self.gateway = gateway
        self.gateway_address: tuple[str, int] | None = None
        self.watch_files = reload
        self.access_log = access_log
        self.printer = printer or Printer()
        self.selector = selectors.DefaultSelector()
        self.groups: dict[str, Group] = {}
        self.control = control.ControlServer(self.root, self.handle_request, control_name)
        self.reloader: Reloader | None = None
        self.signals: list[int] = []
        self.stopping = False
        self.announced = False
        self.all_failed = False
        self.next_ready_probe = 0.0
        self.started = time.time()
        self.wake_r = self.wake_w = -1

    @staticmethod
    def select(config: Config, names: Sequence[str]) -> list[str]:
        if not config.services:
            raise UsageError(f"{config.path.name} has no services yet (add one with `microkit new service NAME`)")
        unknown = [n for n in names if n not in config.services]
        if unknown:
            raise UsageError(f"no service named {unknown[0]!r} in {config.path.name} "
                             f"(known: {', '.join(config.services)})")
        return list(dict.fromkeys(names)) or list(config.services)

    # Setup and teardown.

    def run(self) -> int:
        """Serve until stopped; 0 after a graceful stop, 1 when every service failed."""
        try:
            self.setup()
            return self.loop()
        finally:
            self.teardown()

    def setup(self) -> None:
        self.control.open()
        gateway = self.make_gateway_group() if self.gateway else None
        for name in self.names:
            service = self.config.services[name]
            if self.monolith and service.app:
                continue  # mounted in the gateway's place by the monolith
            self.groups[name] = self.make_group(service)
        if gateway is not None:
            self.groups[GATEWAY] = gateway
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.drain_wakeups)
        self.selector.register(self.control.sock, selectors.EVENT_READ, self.control.serve_one)
        signal.set_wakeup_fd(self.wake_w)
        for signum in SUPERVISOR_SIGNALS:
            signal.signal(signum, self.queue_signal)
        if self.watch_files:
            self.reloader = Reloader(self.root, {
                name: app_scope(self.root, s.app) if s.app else command_scope(self.root, name)
                for name, s in ((n, self.config.services[n]) for n in self.names)})
        self.printer.say(f"supervisor pid {os.getpid()}, project {self.config.project.name} at {self.root}"
                         + (" (reloading on changes)" if self.watch_files else ""))

    def make_group(self, service: ServiceConfig) -> Group:
        if service.command:
            spec = CommandSpec(name=service.name, command=service.command, root=self.root,
                               host=service.listen.host, port=service.listen.port,
                               env={"MICROKIT_GATEWAY_URL": self.gateway_url, **service.env},
                               timeout=service.timeout, graceful_timeout=service.graceful_timeout,
                               health=service.health, registry=self.registry_spec(service))
            return CommandGroup(spec, service.workers, self.printer, self.watch)
        try:
            listener = bind(service.listen)
        except OSError as exc:
            raise SupervisorError(f"services.{service.name}: cannot listen on {service.listen}: "
                                  f"{exc.strerror or exc}") from None
        spec = AppSpec(name=service.name, app=service.app, root=self.root,
                       env={"MICROKIT_GATEWAY_URL": self.gateway_url, **service.env},
                       timeout=service.timeout, graceful_timeout=service.graceful_timeout,
                       health=service.health,
                       access_log=service.access_log if self.access_log is None else self.access_log,
                       registry=self.registry_spec(service))
        return AppGroup(spec, service.workers, listener, self.printer, self.watch)

    def registry_spec(self, service: ServiceConfig) -> RegistrySpec:
        """Where a service's instances register, and the address they are reached at: MICROKIT_ADVERTISE_HOST,
        else `advertise`, else the listen host (this machine's address for a wildcard)."""
        host = os.environ.get("MICROKIT_ADVERTISE_HOST") or service.advertise or advertised_host(service.listen.host)
        if (self.config.registry.url and service.listen.host in ("0.0.0.0", "::")
                and host.startswith("127.") and not service.advertise):
            self.printer.say(f"services.{service.name} listens on {service.listen.host}, but this host's name resolves "
                             f"to {host}: other hosts cannot reach it; set services.{service.name}.advertise "
                             f"or MICROKIT_ADVERTISE_HOST")
        return RegistrySpec(self.config.registry.url, self.root, self.config.project.name, host)

    @property
    def gateway_url(self) -> str:
        """Where services reach each other: this `up`'s gateway (its real port), else the configured one."""
        if self.gateway_address is not None:
            return url(*self.gateway_address)
        listen = self.config.gateway.listen
        return url(listen.host, listen.port)

    def make_gateway_group(self) -> Group:
        """The gateway's gevent workers: a Bottle app routing to what the registry lists."""
        gateway = self.config.gateway
        try:
            listener = bind(gateway.listen)
        except OSError as exc:
            raise SupervisorError(f"gateway.listen: cannot listen on {gateway.listen}: {exc.strerror or exc}") from None
        access_log = gateway.access_log if self.access_log is None else self.access_log
        env = {"MICROKIT_CONFIG": str(self.config.path), "MICROKIT_ACCESS_LOG": str(int(access_log)),
               "MICROKIT_GATEWAY_URL": url(gateway.listen.host, listener.getsockname()[1])}
        if self.monolith:
            spec = AppSpec(name=GATEWAY, app=MONOLITH_APP, root=self.root, health=GATEWAY_HEALTH, env=env,
                           access_log=access_log)
        else:
            spec = AppSpec(name=GATEWAY, app=GATEWAY_APP, root=self.root, health=GATEWAY_HEALTH, access_log=False,
                           env=env)
        self.gateway_address = listener.getsockname()[:2]
        return AppGroup(spec, gateway.workers, listener, self.printer, self.watch)

    def teardown(self) -> None:
        for group in self.groups.values():
            group.kill()
            for instance in group.instances:
                try:
                    os.waitpid(instance.pid, 0)
                except ChildProcessError:
                    pass
            group.close()
        if self.wake_w >= 0:
            signal.set_wakeup_fd(-1)
            for signum in SUPERVISOR_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        for key in list(self.selector.get_map().values()):
            if isinstance(key.fileobj, int):
                os.close(key.fileobj)
        self.selector.close()
        self.control.close()
        if self.wake_w >= 0:
            os.close(self.wake_w)

    # The loop.

    def loop(self) -> int:
        while True:
            for key, _ in self.selector.select(TICK):
                key.data()
            while self.signals:
                signum = self.signals.pop(0)
                getattr(self, f"handle_{signal.Signals(signum).name[3:].lower()}")()
            for group in self.groups.values():
                group.tick()
            if self.stopping:
                if all(group.done for group in self.groups.values()):
                    self.printer.say("stopped")
                    return 0
                continue
            services = [g for name, g in self.groups.items() if name != GATEWAY] or list(self.groups.values())
            if all(group.state == FATAL for group in services):
                if not self.reloader:
                    self.printer.say("every service failed to start; stopping")
                    return 1
                if not self.all_failed:
                    self.printer.say("every service failed to start; waiting for a change to a Python file")
                self.all_failed = True
            else:
                self.all_failed = False
            self.announce_ready()
            if self.reloader:
                self.reload_changed()

    def watch(self, fd: int, on_line: Callable[[str], None]) -> None:
        """Call `on_line` for each line read from `fd` (a child's pipe), closing it at end of file."""
        os.set_blocking(fd, False)
        pending = bytearray()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                pending.extend(data)
                *lines, rest = pending.split(b"\n")
                pending[:] = rest
            else:
                lines = [bytes(pending)] if pending else []
                self.selector.unregister(fd)
                os.close(fd)
            for line in lines:
                on_line(line.decode("utf-8", "replace").rstrip("\r"))

        self.selector.register(fd, selectors.EVENT_READ, readable)

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def queue_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD and len(self.signals) < 16:
            self.signals.append(signum)

    def announce_ready(self) -> None:
        """Print `ready: ...` once, when every service that did not fail answers its health path."""
        now = time.monotonic()
        if self.announced or now < self.next_ready_probe:
            return
        alive = [g for g in self.groups.values() if g.state != FATAL]
        if not alive or not all(g.healthy for g in alive):
            return
        self.next_ready_probe = now + READY_PROBE_INTERVAL
        for group in alive:
            if isinstance(group, AppGroup) and not check_health(group.host, group.port, group.spec.health, 2.0):
                return
        gateway = self.groups.get(GATEWAY)
        services = [g for g in alive if g.name != GATEWAY]
        if (gateway is not None and gateway.state != FATAL and not self.monolith
                and not self.gateway_sees(gateway, services)):
            return
        self.announced = True
        failed = [name for name, g in self.groups.items() if g.state == FATAL]
        listed = ", ".join(f"{g.name} {' '.join(g.urls())}" for g in services)
        if gateway is not None and gateway.state != FATAL:
            if listed:
                self.printer.plain(f"services: {listed}")
            line = f"ready: gateway {gateway.urls()[0]}" + (" (monolith)" if self.monolith else "")
        else:
            line = f"ready: {listed}"
        self.printer.plain(line + (f" (failed: {', '.join(failed)})" if failed else ""))

    def gateway_sees(self, gateway: AppGroup, services: list[Group]) -> bool:
        """Whether the gateway has found an instance of every routed service that runs in the registry."""
        legacy = self.config.gateway.legacy
        routed = {g.name for g in services if isinstance(g, AppGroup) and self.config.services[g.name].route}
        routed |= {g.name for g in services if g.name == legacy}  # the legacy upstream is routed too
        if not routed:
            return True
        try:
            with urllib.request.urlopen(gateway.urls()[0] + GATEWAY_HEALTH, timeout=2.0) as reply:
                known = json.load(reply).get("instances", {})
        except (OSError, ValueError):
            return False
        return all(known.get(name, 0) > 0 for name in routed)

    def reload_changed(self) -> None:
        files, services = self.reloader.poll()
        if not services:
            return
        shown = ", ".join(str(p.relative_to(self.root)) for p in files[:3]) + (" ..." if len(files) > 3 else "")
        self.printer.say(f"changed: {shown}; reloading {', '.join(services)}")
        for name in services:
            self.groups[name].reload()

    # Signals.

    def handle_int(self) -> None:
        self.handle_term()

    def handle_term(self) -> None:
        if self.stopping:
            self.printer.say("stopping now")
            self.handle_quit()
            return
        self.stopping = True
        self.printer.say("stopping: finishing in-flight requests")
        for group in self.groups.values():
            group.stop()

    def handle_quit(self) -> None:
        self.stopping = True
        for group in self.groups.values():
            group.kill()

    def handle_hup(self) -> None:
        self.reload([])

    def handle_ttin(self) -> None:
        self.scale({name: group.desired + 1 for name, group in self.groups.items()})

    def handle_ttou(self) -> None:
        self.scale({name: group.desired - 1 for name, group in self.groups.items() if group.desired > 1})

    # Commands, from signals or from `microkit reload/scale/status`.

    def reload(self, names: Sequence[str]) -> list[str]:
        names = list(names) or list(self.groups)
        for name in names:
            self.groups[name].reload()
        return names

    def scale(self, workers: dict[str, int]) -> None:
        for name, count in workers.items():
            self.groups[name].scale(count)

    def status(self) -> dict:
        return {"pid": os.getpid(), "project": self.config.project.name, "root": str(self.root),
                "uptime": round(time.time() - self.started, 1),
                "services": [group.status() for group in self.groups.values()]}

    def handle_request(self, message: dict) -> dict:
        """One control request (see `control`); never raises for a bad request."""
        command = message.get("command")
        if self.stopping and command != "status":
            return {"ok": False, "error": "`microkit up` is stopping"}
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "reload":
            names = message.get("services") or []
            unknown = [n for n in names if n not in self.groups]
            if unknown:
                return {"ok": False, "error": f"no running service named {unknown[0]!r} "
                                              f"(running: {', '.join(self.groups)})"}
            return {"ok": True, "services": self.reload(names)}
        if command == "scale":
            workers = message.get("workers") or {}
            for name, count in workers.items():
                if name not in self.groups:
                    return {"ok": False, "error": f"no running service named {name!r} "
                                                  f"(running: {', '.join(self.groups)})"}
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    return {"ok": False, "error": f"{name}: expected a number of workers >= 1, got {count!r}"}
            self.scale(workers)
            return {"ok": True, "workers": {n: g.desired for n, g in self.groups.items()}}
        return {"ok": False, "error": f"unknown command {command!r}"}
