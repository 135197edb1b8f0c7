"""A group: N instances of one thing kept running (a service's gevent workers on its shared socket, or
its command processes). The group replaces what dies (with backoff), gives up on what cannot boot
(FATAL), kills what stops beating, scales, and does rolling restarts. It is the unit the arbiter runs,
once per service and, later, once for the gateway.

Instances (`worker.Worker`, `command.CommandProcess`) share one small interface: `spawn()`, `signal()`,
`pid`, `slot`, `generation`, `ready`, `routable` (found by gateways: registered, or nothing to register), `retiring`, `kill_at`, `aborted`, `last_beat`, `beat_interval`
(seconds between beats; 0 when absent), `started_at`, `error`, `port`, `output_fd`, `notify_fd` (-1 when
there is none), `on_notify(line)`, `reaped(status)`.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Callable

from .printer import Printer
from .process import describe_exit, url
from .worker import AppSpec, Worker

STARTING, RUNNING, RELOADING, FATAL, STOPPING = "starting", "running", "reloading", "FATAL", "stopping"
BOOT_TRIES = 3
ABORT_GRACE = 1.0
KILL_GRACE = 2.0

Watch = Callable[[int, Callable[[str], None]], None]


class Backoff:
    """Delay before replacing an instance that crashed: none the first time, then doubling up to `cap`.
    A crash after `stable` seconds of uptime starts the count again."""

    def __init__(self, base: float = 0.5, cap: float = 10.0, stable: float = 10.0):
        self.base, self.cap, self.stable = base, cap, stable
        self.crashes = 0

    def crashed(self, uptime: float) -> float:
        if uptime >= self.stable:
            self.crashes = 0
        self.crashes += 1
        return 0.0 if self.crashes == 1 else min(self.cap, self.base * 2 ** (self.crashes - 2))


class Group:
    """Keeps `desired` instances of one service running. Subclasses say how an instance is made."""

    kind = "app"
    waitpid = staticmethod(os.waitpid)

    def __init__(self, name: str, workers: int, timeout: float, graceful_timeout: float,
                 printer: Printer, watch: Watch, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.desired = workers
        self.timeout = timeout
        self.graceful_timeout = graceful_timeout
        self.printer = printer
        self.watch = watch
        self.clock = clock
        self.instances: list[Any] = []
        self.generation = 0
        self.state = STARTING
        self.restarts: dict[int, int] = {}
        self.backoff = Backoff()
        self.boot_failures = 0
        self.booted: set[int] = set()
        self.last_error: str | None = None
        self.next_spawn_at = 0.0
        self.failed_boots = 0
        self.failures = 0  # reloads and scale-ups that failed; `failure` says how the last one did
        self.failure: dict | None = None
        self.blocked_kills = 0

    # What subclasses provide.

    def new_instance(self, slot: int) -> Any:
        raise NotImplementedError

    def urls(self) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the group holds besides its instances (an app group's socket)."""

    # Commands from the arbiter.

    def scale(self, workers: int) -> None:
        self.say(f"scaling {self.desired} -> {workers} worker(s)")
        self.desired = workers
        self.revive()

    def reload(self) -> None:
        """Rolling restart: each old instance is retired once a new one is ready."""
        self.revive()
        if self.state == STOPPING:
            return
        self.generation += 1
        if self.instances:
            self.state = RELOADING
            self.say("reloading")

    def revive(self) -> None:
        """Try again after FATAL (the code may have been fixed)."""
        if self.state == FATAL:
            self.state = STARTING
            self.boot_failures = 0
            self.last_error = None
            self.next_spawn_at = 0.0

    def stop(self) -> None:
        """Graceful stop: every instance finishes in-flight work for up to graceful_timeout."""
        self.state = STOPPING
        for instance in self.instances:
            if not instance.retiring:
                self.retire(instance)

    def kill(self) -> None:
        self.state = STOPPING
        for instance in self.instances:
            instance.signal(signal.SIGKILL)

    @property
    def done(self) -> bool:
        return self.state in (STOPPING, FATAL) and not self.instances

    @property
    def healthy(self) -> bool:
        return self.state == RUNNING

    # The loop: called by the arbiter on every turn.

    def tick(self) -> None:
        now = self.clock()
        self.reap(now)
        self.enforce_deadlines(now)
        if self.state in (STOPPING, FATAL):
            return
        for instance in self.instances:
            if instance.ready and instance.pid not in self.booted:
                self.booted.add(instance.pid)
                self.boot_failures = 0
                self.last_error = None
        self.manage(now)

    def reap(self, now: float) -> None:
        for instance in list(self.instances):
            try:
                pid, status = self.waitpid(instance.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = instance.pid, 0
            if pid:
                self.booted.discard(instance.pid)
                instance.reaped(status)
                self.instances.remove(instance)
                self.exited(instance, status, now)

    def exited(self, instance: Any, status: int, now: float) -> None:
        how = describe_exit(status)
        if self.state == FATAL:
            return
        if self.state == STOPPING or instance.retiring:
            if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                self.say(f"{instance.name} (pid {shown_pid(instance)}) {how} while stopping")
            return
        if not instance.ready:
            self.boot_failed(instance, how)
            return
        self.restarts[instance.slot] = self.restarts.get(instance.slot, 0) + 1
        self.blocked_kills += instance.aborted
        delay = self.backoff.crashed(now - instance.started_at)
        self.next_spawn_at = now + delay
        why = f"blocked for more than {self.timeout:g}s, so it was {how}" if instance.aborted else how
        self.say(f"{instance.name} (pid {shown_pid(instance)}) {why}; "
                 + (f"restarting in {delay:g}s" if delay else "restarting"), "warning")

    def boot_failed(self, instance: Any, how: str) -> None:
        error = instance.error or f"{instance.name} {how} before it was ready"
        if error != self.last_error:
            for line in error.splitlines():
                self.printer.line(instance.name, line, "error")
            self.last_error = error
        self.boot_failures += 1
        self.failed_boots += 1
        old = [i for i in self.instances if i.generation < self.generation and not i.retiring]
        if old:
            self.failures += 1
            self.failure = {"generation": self.generation, "error": error,
                            "outcome": "the new code does not boot; the old workers keep serving"}
            self.say("reload failed: the new code does not boot; the old workers keep serving")
            for survivor in self.instances:
                survivor.generation = self.generation
            self.boot_failures = 0
            self.state = RUNNING
            return
        ready = [i for i in self.instances if i.ready and not i.retiring]
        if self.boot_failures >= BOOT_TRIES:
            if ready:
                self.failures += 1
                self.failure = {"generation": self.generation, "error": error,
                                "outcome": f"new workers do not boot; keeping the {len(ready)} that run"}
                self.say(f"new workers do not boot; keeping the {len(ready)} that run")
                self.desired = len(ready)
                self.boot_failures = 0
                return
            self.state = FATAL
            self.say(f"FATAL: gave up after {BOOT_TRIES} failed boots (error above); "
                     f"fix it, then `microkit reload {self.name}`", "error")
            for other in self.instances:
                other.signal(signal.SIGKILL)
            return
        self.next_spawn_at = self.clock() + 0.5 * self.boot_failures

    def blocked_after(self, instance: Any) -> float:
        """When an instance that stays silent counts as blocked: `timeout` plus one beat interval after its last
        beat. Its loop may have blocked right after that beat or just before the next one was due, so this
        kills only a loop blocked for longer than `timeout`, and at the latest `timeout` plus one interval
        after it blocked."""
        return instance.last_beat + self.timeout + getattr(instance, "beat_interval", 0.0)

    def next_deadline(self) -> float | None:
        """The earliest moment `tick()` has a kill to enforce, so the arbiter can wake exactly then."""
        due = [i.kill_at if i.kill_at is not None else self.blocked_after(i)
               for i in self.instances if i.kill_at is not None or not i.aborted]
        return min(due, default=None)

    def enforce_deadlines(self, now: float) -> None:
        """SIGKILL what outlived its grace; SIGABRT what has been blocked for longer than `timeout`."""
        for instance in self.instances:
            if instance.kill_at is not None and now >= instance.kill_at:
                instance.signal(signal.SIGKILL)
                instance.kill_at = None
            elif not instance.aborted and now > self.blocked_after(instance):
                instance.aborted = True
                what = "did not get ready" if not instance.ready else "is blocked"
                self.say(f"{instance.name} (pid {shown_pid(instance)}) {what} for more than {self.timeout:g}s: "
                         f"killing it", "warning")
                instance.signal(signal.SIGABRT)
                instance.kill_at = now + ABORT_GRACE

    def manage(self, now: float) -> None:
        """Move toward `desired` instances of the current generation, one rolling step at a time."""
        current = [i for i in self.instances if i.generation == self.generation and not i.retiring]
        old = [i for i in self.instances if i.generation < self.generation and not i.retiring]
        # An old instance is retired only once its successor can be found: ready, and registered where
        # gateways look (a successor that stays unhealthy longer than `timeout` no longer holds the roll up).
        booting = [i for i in current if not i.ready or not (i.routable or now - i.started_at > self.timeout)]
        if old:
            if booting:
                return
            if len(current) + len(old) > self.desired:
                self.retire(old[0])
            elif now >= self.next_spawn_at:
                self.spawn(now)
            return
        if self.state == RELOADING:
            if any(i.retiring and i.generation < self.generation for i in self.instances):
                return  # "reloaded" once no old worker can take a request any more
            self.state = STARTING
            self.say("reloaded")
        if len(current) < self.desired:
            if now >= self.next_spawn_at:
                for _ in range(self.desired - len(current)):
                    self.spawn(now)
        elif len(current) > self.desired:
            for instance in sorted(current, key=lambda i: (i.ready, -i.started_at))[:len(current) - self.desired]:
                self.retire(instance)
        current = [i for i in self.instances if i.generation == self.generation and not i.retiring]
        self.state = RUNNING if len(current) == self.desired and all(i.ready for i in current) else STARTING

    def spawn(self, now: float) -> None:
        used = {i.slot for i in self.instances}
        slot = next(n for n in range(1, len(used) + 2) if n not in used)
        instance = self.new_instance(slot)
        try:
            instance.spawn()
        except OSError as exc:
            instance.error = f"cannot start: {exc}"
            self.boot_failed(instance, "did not start")
            return
        self.instances.append(instance)
        self.watch(instance.output_fd, lambda line, name=instance.name: self.printer.line(name, line))
        if instance.notify_fd >= 0:
            self.watch(instance.notify_fd, instance.on_notify)

    def retire(self, instance: Any) -> None:
        instance.retiring = True
        instance.signal(signal.SIGTERM)
        instance.kill_at = self.clock() + self.graceful_timeout + KILL_GRACE

    def say(self, text: str, level: str = "info") -> None:
        self.printer.line(self.name, text, level)

    def status(self) -> dict:
        now = self.clock()
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "workers": self.desired,
            "urls": self.urls(),
            "restarts": sum(self.restarts.values()) + self.failed_boots,
            "generation": self.generation,
            "error": self.last_error,
            "failures": self.failures,
            "failure": self.failure,
            "blocked_kills": self.blocked_kills,
            "instances": [{
                "name": i.name,
                "pid": shown_pid(i),
                "port": i.port,
                "state": "stopping" if i.retiring else "ready" if i.ready else "booting",
                "restarts": self.restarts.get(i.slot, 0),
                "uptime": round(now - i.started_at, 1),
                "generation": i.generation,
            } for i in sorted(self.instances, key=lambda i: i.slot)],
        }


def shown_pid(instance: Any) -> int | None:
    """The pid users see: a command's program rather than the shim around it."""
    return getattr(instance, "program_pid", None) or instance.pid


class AppGroup(Group):
    """A service's (or the gateway's) gevent workers, sharing one socket the arbiter bound; a service's
    workers also have a port each, which is what they register."""

    kind = "app"

    def __init__(self, spec: AppSpec, workers: int, listener: socket.socket, printer: Printer, watch: Watch,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(spec.name, workers, spec.timeout, spec.graceful_timeout, printer, watch, clock)
        self.spec = spec
        self.listener = listener
        self.host, self.port = listener.getsockname()[:2]

    def new_instance(self, slot: int) -> Worker:
        # A registered service's workers each get a port of their own, the instance gateways balance over
        return Worker(self.spec, slot, self.generation, self.listener, own_port=self.spec.registry is not None)

    def urls(self) -> list[str]:
        return [url(self.host, self.port, "https" if self.spec.tls is not None else "http")]

    @property
    def health_urls(self) -> list[str]:
        return [u + self.spec.health for u in self.urls()]

    def close(self) -> None:
        self.listener.close()
        if self.spec.tls is not None and self.spec.tls.redirect is not None:
            self.spec.tls.redirect.close()
