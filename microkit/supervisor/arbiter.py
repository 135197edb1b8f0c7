"""The arbiter: the process `microkit up` runs. It binds each service's socket once, forks the workers,
and then only watches: it reads their output, replaces what dies, answers `microkit status/reload/scale`
and reacts to signals.

Signals are counted from the wake-up pipe, where CPython's C-level handler writes one byte per signal
delivered (the Python-level handlers run once for several signals that arrive together, so they would
lose some); the loop dispatches each run of equal signals to `handle_<name>(count)`. The loop is a plain
`selectors` loop without threads, so forking stays safe, and this module imports neither gevent nor any
app: the workers do that after the fork.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import time
import urllib.request
from typing import Callable, Sequence

from .. import config as cfg
from ..config import Config, ServiceConfig
from ..errors import ConfigError, MicrokitError, SupervisorError, UsageError
from . import control
from .command import CommandGroup, CommandSpec, check_health, unverified_context
from .consumer import ConsumerGroup, ConsumerSpec
from .group import FATAL, AppGroup, Group
from .printer import Printer
from .process import SUPERVISOR_SIGNALS, bind, url
from .registration import RegistrySpec, advertised_host
from .reloader import Reloader, app_scope, command_scope
from .worker import AppSpec, TLSSpec

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
        self.all_services = run_services and not services  # then a reload starts services added to the file
        self.removed: set[str] = set()  # groups stopping because a reload removed them from the file
        self.gateway = gateway
        self.gateway_address: tuple[str, int] | None = None
        self.watch_files = reload
        self.access_log = access_log
        self.printer = printer or Printer()
        self.selector = selectors.DefaultSelector()
        self.groups: dict[str, Group] = {}
        self.control = control.ControlServer(self.root, self.handle_request, control_name,
                                             info={"registry": config.registry.url})
        self.reloader: Reloader | None = None
        self.signals: list[list[int]] = []  # [signum, count], in arrival order
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
            if service.events:
                self.groups[f"{name}.events"] = self.make_consumers(service)
            if self.monolith and service.app or not (service.app or service.command):
                continue  # mounted in the gateway's place by the monolith, or consumers only
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
        self.printer.reserve(f"{name}.{group.desired}" for name, group in self.groups.items())
        self.printer.say(f"supervisor pid {os.getpid()}, project {self.config.project.name} at {self.root}"
                         + (" (reloading on changes)" if self.watch_files else ""))

    def service_env(self, service: ServiceConfig) -> dict[str, str]:
        from ..events.settings import environ

        return {"MICROKIT_GATEWAY_URL": self.gateway_url, "MICROKIT_ROUTE": service.app_route,
                "MICROKIT_PROJECT_ROOT": str(self.root), **environ(self.config, service.name), **service.env}

    def make_consumers(self, service: ServiceConfig) -> Group:
        spec = ConsumerSpec(name=service.name, module=service.events, root=self.root, env=self.service_env(service),
                            timeout=service.timeout, graceful_timeout=service.graceful_timeout)
        return ConsumerGroup(spec, service.consumers, self.printer, self.watch)

    def make_group(self, service: ServiceConfig) -> Group:
        if service.command:
            spec = CommandSpec(name=service.name, command=service.command, root=self.root,
                               host=service.listen.host, port=service.listen.port,
                               env=self.service_env(service),
                               timeout=service.timeout, graceful_timeout=service.graceful_timeout,
                               health=service.health, registry=self.registry_spec(service))
            return CommandGroup(spec, service.workers, self.printer, self.watch)
        try:
            listener = bind(service.listen)
        except OSError as exc:
            raise SupervisorError(f"services.{service.name}: cannot listen on {service.listen}: "
                                  f"{exc.strerror or exc}") from None
        spec = AppSpec(name=service.name, app=service.app, root=self.root,
                       env=self.service_env(service),
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
        """Where services reach each other: this `up`'s gateway (its real port), else MICROKIT_GATEWAY_URL when
        set (a deployment whose gateway runs elsewhere), else the configured one."""
        if self.gateway_address is not None:
            return url(*self.gateway_address)
        if os.environ.get("MICROKIT_GATEWAY_URL"):
            return os.environ["MICROKIT_GATEWAY_URL"]
        listen = self.config.gateway.listen
        return url(listen.host, listen.port)

    def make_gateway_group(self) -> Group:
        """The gateway's gevent workers: a Bottle app routing to what the registry lists."""
        gateway = self.config.gateway
        try:
            listener = bind(gateway.listen)
        except OSError as exc:
            raise SupervisorError(f"gateway.listen: cannot listen on {gateway.listen}: {exc.strerror or exc}") from None
        tls = self.gateway_tls(listener)
        access_log = gateway.access_log if self.access_log is None else self.access_log
        env = {"MICROKIT_CONFIG": str(self.config.path), "MICROKIT_ACCESS_LOG": str(int(access_log)),
               "MICROKIT_GATEWAY_URL": url(gateway.listen.host, listener.getsockname()[1],
                                           "https" if tls is not None else "http")}
        if self.monolith:
            spec = AppSpec(name=GATEWAY, app=MONOLITH_APP, root=self.root, health=GATEWAY_HEALTH, env=env,
                           access_log=access_log, tls=tls)
        else:
            spec = AppSpec(name=GATEWAY, app=GATEWAY_APP, root=self.root, health=GATEWAY_HEALTH, access_log=False,
                           env=env, tls=tls)
        self.gateway_address = listener.getsockname()[:2]
        return AppGroup(spec, gateway.workers, listener, self.printer, self.watch)

    def gateway_tls(self, listener) -> TLSSpec | None:
        """HTTPS settings for the gateway's workers, with the http_redirect socket bound here (None: plain HTTP)."""
        gateway = self.config.gateway
        if gateway.tls_cert is None:
            return None
        folder = self.config.path.parent
        redirect = None
        if gateway.http_redirect is not None:
            try:
                redirect = bind(gateway.http_redirect)
            except OSError as exc:
                listener.close()
                raise SupervisorError(f"gateway.http_redirect: cannot listen on {gateway.http_redirect}: "
                                      f"{exc.strerror or exc}") from None
        return TLSSpec(cert=folder / gateway.tls_cert, key=folder / gateway.tls_key, redirect=redirect)

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
            for key, _ in self.selector.select(self.wait_time()):
                key.data()
            while self.signals:
                signum, count = self.signals.pop(0)
                getattr(self, f"handle_{signal.Signals(signum).name[3:].lower()}")(count)
            for group in self.groups.values():
                group.tick()
            for name in [n for n in self.removed if self.groups[n].done]:
                self.groups.pop(name).close()
                self.removed.discard(name)
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

    def wait_time(self) -> float:
        """How long the loop may sleep: TICK, or less when a group has a kill due sooner (kills are on time)."""
        due = [d for d in (g.next_deadline() for g in self.groups.values()) if d is not None]
        if not due:
            return TICK
        return max(0.0, min(TICK, min(due) - time.monotonic() + 0.001))

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
        """Queue every signal byte in the wake-up pipe, equal neighbours as one entry with a count."""
        try:
            while data := os.read(self.wake_r, 4096):
                for signum in data:
                    if signum == signal.SIGCHLD:
                        continue
                    if self.signals and self.signals[-1][0] == signum:
                        self.signals[-1][1] += 1
                    else:
                        self.signals.append([signum, 1])
        except BlockingIOError:
            pass

    def queue_signal(self, signum: int, frame: object) -> None:
        """Nothing to do here: installing it makes CPython write the signal to the wake-up pipe."""

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
            if isinstance(group, AppGroup) and not check_health(group.host, group.port, group.spec.health, 2.0,
                                                                tls=group.spec.tls is not None):
                return
        gateway = self.groups.get(GATEWAY)
        services = [g for g in alive if g.name != GATEWAY]
        if (gateway is not None and gateway.state != FATAL and not self.monolith
                and not self.gateway_sees(gateway, services)):
            return
        self.announced = True
        failed = [name for name, g in self.groups.items() if g.state == FATAL]
        listed = ", ".join(f"{g.name} {' '.join(g.urls()) or f'({g.desired} consumers)'}" for g in services)
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
        routed = {g.name for g in services
                  if isinstance(g, (AppGroup, CommandGroup)) and self.config.services[g.name].route}
        routed |= {g.name for g in services if g.name == legacy}  # the legacy upstream is routed too
        if not routed:
            return True
        try:
            context = unverified_context() if gateway.spec.tls is not None else None
            with urllib.request.urlopen(gateway.urls()[0] + GATEWAY_HEALTH, timeout=2.0, context=context) as reply:
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
        for name in self.groups_of(services):
            self.groups[name].reload()

    # Signals.

    def handle_int(self, count: int = 1) -> None:
        self.handle_term(count)

    def handle_term(self, count: int = 1) -> None:
        if self.stopping or count > 1:
            self.printer.say("stopping now")
            self.handle_quit()
            return
        self.stopping = True
        self.printer.say("stopping: finishing in-flight requests")
        for group in self.groups.values():
            group.stop()

    def handle_quit(self, count: int = 1) -> None:
        self.stopping = True
        for group in self.groups.values():
            group.kill()

    def handle_hup(self, count: int = 1) -> None:
        """A rolling restart of every group, the gateway's included; each HUP starts a new generation."""
        for _ in range(count):
            try:
                self.reload([])
            except MicrokitError as exc:
                self.printer.say(f"reload refused: {exc}", "error")

    def handle_ttin(self, count: int = 1) -> None:
        """`count` workers more for every group, the gateway's included."""
        self.scale({name: group.desired + count for name, group in self.groups.items()})

    def handle_ttou(self, count: int = 1) -> None:
        """`count` workers fewer for every group, the gateway's included, keeping at least one each."""
        self.scale({name: max(1, group.desired - count) for name, group in self.groups.items()
                    if group.desired > 1})

    # Commands, from signals or from `microkit reload/scale/status`.

    def groups_of(self, names: Sequence[str]) -> list[str]:
        """The groups of services `names`: a service's workers (or command) and its consumers (`NAME.events`)."""
        return [g for n in names for g in (n, f"{n}.events") if g in self.groups]

    def running_services(self) -> list[str]:
        """Services with a group that is not being removed (the gateway is a group, not a service)."""
        return list(dict.fromkeys(n.removesuffix(".events") for n in self.groups
                                  if n != GATEWAY and n not in self.removed))

    def reload(self, names: Sequence[str]) -> list[str]:
        """Re-read microkit.toml and apply it, then restart the groups of the services named (all when none)
        and those whose settings changed. Raises, changing nothing, when the file is invalid or needs a
        restart. Returns every group to wait for."""
        try:
            new = cfg.load(self.config.path)
            if self.monolith:
                from ..monolith import check
                check(new)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (not applied: the running config is kept)") from None
        plan = self.plan_changes(new)
        running = [n for n in self.running_services() if n not in plan["removed"]]
        unknown = [n for n in names if n not in running and n not in plan["added"]
                   and not (n == GATEWAY and GATEWAY in self.groups)]
        if unknown:
            raise UsageError(f"no running service named {unknown[0]!r} (running: {', '.join(running)})")
        added = self.apply_changes(new, plan)
        wanted = [*names] if names else [*running, *([GATEWAY] if GATEWAY in self.groups else [])]
        restart = [g for g in dict.fromkeys([*self.groups_of(wanted), *plan["changed"]]) if g not in added]
        for name in restart:
            self.groups[name].reload()
        return list(dict.fromkeys([*restart, *added]))

    # Re-reading microkit.toml.

    RESTART_SETTINGS = ("project.name", "project.root", "registry.url")
    PROCESS_SETTINGS = ("app", "command", "env", "timeout", "graceful_timeout", "health", "access_log", "advertise",
                        "events")

    def plan_changes(self, new: Config) -> dict[str, list[str]]:
        """What a reload to `new` changes: services added and removed, and the groups whose processes'
        settings changed. SupervisorError naming the settings that need a restart of `up`, if any."""
        old = self.config
        restart = [key for key in self.RESTART_SETTINGS
                   if getattr(getattr(old, key.split(".")[0]), key.split(".")[1])
                   != getattr(getattr(new, key.split(".")[0]), key.split(".")[1])]
        if GATEWAY in self.groups and old.gateway.listen != new.gateway.listen:
            restart.append("gateway.listen")
        running = self.running_services()
        removed = [n for n in running if n not in new.services]
        added = [n for n in new.services if self.all_services and n not in running
                 and not any(g in self.removed for g in (n, f"{n}.events"))
                 and (new.services[n].events or not (self.monolith and new.services[n].app))]
        changed = []
        for name in running:
            if name in removed:
                continue
            before, after = old.services[name], new.services[name]
            if before.listen != after.listen:
                restart.append(f"services.{name}.listen")
            elif (before.app is None) != (after.app is None) or (before.command is None) != (after.command is None):
                restart.append(f"services.{name}.app/command")
            elif bool(before.events) != bool(after.events):
                restart.append(f"services.{name}.events")
            elif any(getattr(before, key) != getattr(after, key) for key in self.PROCESS_SETTINGS):
                changed.extend(self.groups_of([name]))
        if restart:
            raise SupervisorError(f"{cfg.display_path(new.path)}: {', '.join(restart)} changed, which needs a "
                                  f"restart of `microkit up` (not applied: the running config is kept)")
        if GATEWAY in self.groups and new != old:
            changed.append(GATEWAY)  # the gateway reads routes, policies and its settings at boot
        return {"added": added, "removed": removed, "changed": changed}

    def apply_changes(self, new: Config, plan: dict[str, list[str]]) -> list[str]:
        """Start added services (binding their sockets first), stop removed ones, give changed groups their new
        settings; the caller restarts them. Returns the groups added."""
        old, self.config = self.config, new
        added: dict[str, Group] = {}
        try:
            for name in plan["added"]:
                service = new.services[name]
                if service.events:
                    added[f"{name}.events"] = self.make_consumers(service)
                if (service.app or service.command) and not (self.monolith and service.app):
                    added[name] = self.make_group(service)
        except SupervisorError:
            self.config = old
            raise
        for name in self.groups_of(plan["removed"]):
            self.groups[name].stop()
            self.removed.add(name)
        for name in plan["changed"]:
            self.update_group(self.groups[name], new)
        self.groups.update(added)
        for name, group in self.groups.items():
            if name in self.removed or name in added:
                continue
            if name == GATEWAY:
                before, after = old.gateway.workers, new.gateway.workers
            elif name.endswith(".events"):
                service = name.removesuffix(".events")
                before, after = old.services[service].consumers, new.services[service].consumers
            else:
                before, after = old.services[name].workers, new.services[name].workers
            if before != after:  # a count changed in the file; `microkit scale` counts stay otherwise
                group.scale(after)
        self.names = self.running_services()
        self.printer.reserve(f"{name}.{group.desired}" for name, group in self.groups.items())
        if self.reloader:
            self.reloader.scopes = {name: app_scope(self.root, s.app) if s.app else command_scope(self.root, name)
                                    for name, s in ((n, new.services[n]) for n in self.names)}
        summary = [f"{what} {', '.join(plan[what])}" for what in ("added", "removed", "changed") if plan[what]]
        self.printer.say(f"{cfg.display_path(new.path)} re-read" + (": " + "; ".join(summary) if summary else
                                                                      ": no change"))
        return list(added)

    def update_group(self, group: Group, new: Config) -> None:
        """Give a running group the settings of `new` (its workers restart with them)."""
        if group.name == GATEWAY:
            return  # same file, same environment: its workers read the new file as they boot
        service = new.services[group.name.removesuffix(".events")]
        if isinstance(group, ConsumerGroup):
            group.spec = dataclasses.replace(group.spec, module=service.events, env=self.service_env(service),
                                             timeout=service.timeout, graceful_timeout=service.graceful_timeout)
        else:
            common = dict(env=self.service_env(service), timeout=service.timeout,
                          graceful_timeout=service.graceful_timeout, health=service.health,
                          registry=self.registry_spec(service))
            if isinstance(group, AppGroup):
                access_log = service.access_log if self.access_log is None else self.access_log
                group.spec = dataclasses.replace(group.spec, app=service.app, access_log=access_log, **common)
            else:
                group.spec = dataclasses.replace(group.spec, command=service.command, **common)
        group.timeout, group.graceful_timeout = service.timeout, service.graceful_timeout

    def scale(self, workers: dict[str, int]) -> None:
        for name, count in workers.items():
            self.groups[name].scale(count)

    def status(self) -> dict:
        return {"pid": os.getpid(), "project": self.config.project.name, "root": str(self.root),
                "monolith": self.monolith, "registry": self.config.registry.url,
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
            try:
                names = self.reload(message.get("services") or [])
            except MicrokitError as exc:
                return {"ok": False, "usage": exc.exit_code == 2, "error": str(exc)}
            return {"ok": True, "services": names, "generations": {n: self.groups[n].generation for n in names},
                    "failures": {n: self.groups[n].failures for n in names}}
        if command == "scale":
            workers = message.get("workers") or {}
            for name, count in workers.items():
                if name not in self.groups:
                    return {"ok": False, "usage": True, "error": f"no running service named {name!r} "
                                                                 f"(running: {', '.join(self.groups)})"}
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    return {"ok": False, "usage": True,
                            "error": f"{name}: expected a number of workers >= 1, got {count!r}"}
            self.scale(workers)
            return {"ok": True, "workers": {n: g.desired for n, g in self.groups.items()},
                    "generations": {n: g.generation for n, g in self.groups.items()},
                    "failures": {n: g.failures for n, g in self.groups.items()}}
        return {"ok": False, "error": f"unknown command {command!r}"}
