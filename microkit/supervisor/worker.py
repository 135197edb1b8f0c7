"""A worker: one pre-forked process serving a WSGI app on its group's shared socket (and, for a registered
service, on a socket of its own: see `Worker.spawn`), on gevent.

`Worker.__init__` and `spawn()` run in the arbiter and touch nothing process-wide. Everything gevent
happens in the child, in `init_process()`: it monkey-patches first, makes the C database drivers
cooperative (`drivers`), and only then imports the engine and the app (so a reload loads new code, and
the arbiter never holds a hub that a fork would copy).

The child talks to the arbiter on two pipes: its stdout/stderr (lines the arbiter prefixes and prints)
and a notify pipe of JSON lines: `{"event": "beat", "at": <monotonic time>}` from a greenlet every
fraction of `timeout` (so a long request on a loop that still runs is not "blocked"), `{"event": "ready"}`
once it accepts, and `{"event": "boot_error", "error": ...}` before exiting with BOOT_ERROR when the app
cannot be loaded.

Graceful stop (SIGTERM): stop accepting, then SETTLE seconds in which every response says
`Connection: close` (so keep-alive clients move to the other workers, and connections accepted just
before the stop get their request read and answered), then `drain()` for the rest of graceful_timeout.
Without the settle step, drain() closes connections whose request has not been parsed yet, and a
rolling restart resets a few requests.

Health: `GET <health path>` goes to the app first; when the app answers 404 (it does not route the
path), the worker answers 200 itself. So every worker is healthy by default, and an app that wants a
deeper check (its database, say) routes the path itself.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from ..config import Address
from .process import bind, close_fds_except, die_with_parent, reset_signals, send_signal
from .registration import Registration, RegistrySpec

BOOT_ERROR = 3
CHUNKED_READAHEAD = 10 * 1024 * 1024  # chunked uploads up to this size reach Bottle-style apps with a length
SETTLE = 0.5
HEALTH_BODY = b'{"status": "ok"}'


@dataclass(frozen=True)
class TLSSpec:
    """HTTPS for a group (the gateway's): PEM files each worker loads as it starts, so a reload re-reads
    them, and the socket of an optional plain-HTTP listener that redirects to HTTPS (bound by the arbiter)."""

    cert: Path
    key: Path
    redirect: socket.socket | None = None

    def context(self) -> Any:
        """The gevent SSL context a worker serves with; TLSFileError names a bad file."""
        import gevent.ssl

        from microkit.tls import server_context
        return server_context(self.cert, self.key, gevent.ssl.SSLContext)


@dataclass(frozen=True)
class AppSpec:
    """What a group of workers serves and how. Services build one from their config; the gateway will too."""

    name: str
    app: str
    root: Path
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 30.0
    graceful_timeout: float = 10.0
    health: str = "/healthz"
    access_log: bool = True
    registry: RegistrySpec | None = None
    tls: TLSSpec | None = None

    @property
    def beat_interval(self) -> float:
        return min(0.5, self.timeout / 4)


class ChildProcess:
    """One forked child of a group (a worker, a consumer), as the arbiter sees it: its pipes, heartbeats and
    signals, and the start-up every child shares. Subclasses give `name`, `init_process` and the spec."""

    port: int | None = None
    boot_error_default = "cannot boot"  # what a boot_error notification without a message means

    def __init__(self, spec: Any, slot: int, generation: int) -> None:
        self.spec = spec
        self.slot = slot
        self.generation = generation
        self.pid: int | None = None
        self.started_at = 0.0
        self.last_beat = 0.0
        self.ready = False
        self.routable = True  # a worker that registers becomes routable once gateways can find it
        self.retiring = False
        self.kill_at: float | None = None
        self.aborted = False
        self.error: str | None = None
        self.output_fd = self.notify_fd = -1

    @property
    def beat_interval(self) -> float:
        return self.spec.beat_interval

    @property
    def name(self) -> str:
        raise NotImplementedError

    def init_process(self, parent: int, notify_fd: int) -> int:
        raise NotImplementedError

    # Arbiter side.

    def before_fork(self) -> None:
        """Bind or open what the child inherits (the arbiter reports a failure)."""

    def inherited_fds(self) -> list[int]:
        """Descriptors the child keeps besides stdio and its notify pipe."""
        return []

    def after_fork(self) -> None:
        """Release, in the arbiter, what only the child needs (also when the fork failed)."""

    def spawn(self) -> None:
        """Fork the child. Returns in the arbiter; the child never returns from here."""
        self.before_fork()
        output_r, output_w = os.pipe()
        notify_r, notify_w = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            for fd in (output_r, output_w, notify_r, notify_w):
                os.close(fd)
            self.after_fork()
            raise
        if pid == 0:
            code = 1
            try:
                reset_signals()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(output_w, 1)
                os.dup2(output_w, 2)
                close_fds_except([notify_w, *self.inherited_fds()])
                code = self.init_process(parent, notify_w)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(output_w)
        os.close(notify_w)
        self.after_fork()
        self.pid = pid
        self.output_fd, self.notify_fd = output_r, notify_r
        self.started_at = self.last_beat = time.monotonic()

    def on_notify(self, line: str) -> None:
        """One JSON line from the child's notify pipe."""
        try:
            message = json.loads(line)
        except ValueError:
            return
        now = time.monotonic()
        at = message.get("at")
        # A beat says when it was sent (the same system-wide monotonic clock), so a busy arbiter that reads it
        # late does not count the time the line waited in the pipe as time the loop was alive.
        self.last_beat = min(now, max(self.last_beat, at)) if isinstance(at, float) else now
        if message.get("event") == "ready":
            self.ready = True
        elif message.get("event") == "registered":
            self.routable = True
        elif message.get("event") == "boot_error":
            self.error = str(message.get("error", self.boot_error_default))

    def reaped(self, status: int) -> None:
        """Nothing to release: the pipes close at end of file."""

    def signal(self, signum: int) -> None:
        send_signal(self.pid, signum)

    # Child side.

    def start_child(self, parent: int, notify_fd: int) -> "Notifier":
        """What every child does first: monkey-patch, make the database drivers cooperative (before any user
        code is imported), die with the arbiter, no core dumps, the arbiter's signals, line-buffered output."""
        from gevent import monkey
        monkey.patch_all()
        from . import drivers
        drivers.install()  # psycopg2 and psycopg 3 wait on the hub
        from . import sleep
        sleep.install()  # time.sleep wakes on time, not at the next whole millisecond
        die_with_parent(parent)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        return Notifier(notify_fd)

    def pulse(self, parent: int, notify: "Notifier") -> None:
        """Beat for the arbiter while the loop runs; leave at once if the arbiter is gone."""
        import gevent
        while True:
            if os.getppid() != parent or not notify.send(event="beat", at=time.monotonic()):
                os._exit(1)
            gevent.sleep(self.spec.beat_interval)


class Worker(ChildProcess):
    """One worker process of a group, as the arbiter sees it, and the code the child runs.

    With `own_port`, the child also gets a listening socket of its own (a free port on the group's host),
    bound before the fork so that a failure is the arbiter's to report. It is the address the worker
    registers: each worker is then a target of its own, which gateways balance across and eject one by one,
    where workers behind one shared socket look like one host:port and share the load unevenly. The shared
    socket stays for clients that come straight to the service's `listen` address. The arbiter closes its
    copy after the fork, so the port closes (and refuses at once) when the worker is gone."""

    boot_error_default = "cannot load the app"

    def __init__(self, spec: AppSpec, slot: int, generation: int, listener: socket.socket, own_port: bool = False):
        super().__init__(spec, slot, generation)
        self.routable = spec.registry is None
        self.listener = listener
        self.own_port = own_port
        self.own: socket.socket | None = None
        self.port: int = listener.getsockname()[1]

    @property
    def name(self) -> str:
        return f"{self.spec.name}.{self.slot}"

    # Arbiter side.

    def before_fork(self) -> None:
        if self.own_port:
            host = self.listener.getsockname()[0]
            self.own = bind(Address(host, 0))
            self.port = self.own.getsockname()[1]

    def inherited_fds(self) -> list[int]:
        redirect = self.spec.tls.redirect if self.spec.tls is not None else None
        return ([self.listener.fileno()] + ([self.own.fileno()] if self.own else [])
                + ([redirect.fileno()] if redirect else []))

    def after_fork(self) -> None:
        if self.own is not None:
            self.own.close()

    # Child side.

    def init_process(self, parent: int, notify_fd: int) -> int:
        """Set up the child and serve until told to stop; returns the exit code."""
        notify = self.start_child(parent, notify_fd)
        import gevent
        import gevent.event

        os.environ["MICROKIT_WORKER_SLOT"] = str(self.slot)  # the row of the metrics table it writes (microkit.metrics)

        from microkit.errors import ConfigError
        from microkit.tls import TLSFileError
        try:
            app = self.load_app()
            ssl_context = self.spec.tls.context() if self.spec.tls is not None else None
        except TLSFileError as exc:
            notify.send(event="boot_error", error=f"gateway.tls_{exc.which}: {exc}")
            return BOOT_ERROR
        except ConfigError as exc:  # the gateway's app reads microkit.toml again: one line, no traceback
            notify.send(event="boot_error", error=str(exc))
            return BOOT_ERROR
        except Exception as exc:
            notify.send(event="boot_error", error=boot_error_text(self.spec.app, exc))
            return BOOT_ERROR

        listeners = [socket.socket(fileno=self.listener.detach())]
        if self.own is not None:
            listeners.append(socket.socket(fileno=self.own.detach()))
        from microkit.openapi import with_openapi
        from microkit.tracing import traced
        app = with_health(traced(with_openapi(app, self.spec.name)), self.spec.health)
        log = AccessLog() if self.spec.access_log else None
        if log is not None:
            log.start()
        from microkit.metrics.workers import metered
        servers, meter = metered(self.spec.root, self.spec.name, self.slot, self.spec.health, log,
                                 lambda log: [serve(listener, app, log, ssl_context) for listener in listeners])
        if self.spec.tls is not None and self.spec.tls.redirect is not None:
            serve_redirect(socket.socket(fileno=self.spec.tls.redirect.detach()), self.port)
        registration = None
        if self.spec.registry is not None:
            registration = Registration(self.spec.registry, self.spec.name, self.port, self.slot)
            registration.start(app, self.spec.health, lambda: notify.send(event="registered"))
        stopped = gevent.event.Event()
        stopping: list[bool] = []

        def graceful_stop() -> None:
            if stopping:
                return
            stopping.append(True)
            if registration is not None:
                registration.stop()
            for server in servers:
                server.stop_accepting()
                server.draining = True
            settle = min(SETTLE, self.spec.graceful_timeout / 2)
            gevent.sleep(settle)
            drains = [gevent.spawn(server.drain, self.spec.graceful_timeout - settle) for server in servers]
            gevent.joinall(drains)
            killed = sum(drain.value or 0 for drain in drains)
            if killed:
                print(f"graceful timeout ({self.spec.graceful_timeout:g}s): closed {killed} unfinished request(s)")
            stopped.set()

        gevent.signal_handler(signal.SIGTERM, graceful_stop)
        gevent.signal_handler(signal.SIGQUIT, stopped.set)
        gevent.spawn(self.pulse, parent, notify)
        notify.send(event="ready")
        print(f"serving {self.spec.app} (pid {os.getpid()})")
        stopped.wait()
        if meter is not None:
            meter.release()
        if log is not None:
            log.flush()
        return 0

    def load_app(self) -> Callable:
        """Import the app `module:attr` from the project root, with the service's environment applied."""
        root = str(self.spec.root)
        os.chdir(root)
        if root not in sys.path:
            sys.path.insert(0, root)
        os.environ.update(self.spec.env)
        module_name, attr = self.spec.app.split(":")
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"{self.spec.app} is a {type(target).__name__}, not a WSGI callable")
        return target


class Notifier:
    """JSON lines to the arbiter on the notify pipe; never blocks the loop."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)

    def send(self, **message: Any) -> bool:
        """False when the arbiter has gone away."""
        try:
            os.write(self.fd, json.dumps(message).encode() + b"\n")
        except BlockingIOError:
            pass
        except OSError:
            return False
        return True


def boot_error_text(app: str, exc: BaseException) -> str:
    """The import error as the user needs it: the traceback from their code, without ours."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = {__file__, importlib.__file__}
    frames = [f for f in frames if f.filename not in own and not f.filename.startswith("<frozen")]
    lines = [f"cannot load {app}:"]
    lines += [line.rstrip() for line in traceback.format_list(frames)]
    lines += [line.rstrip() for line in traceback.format_exception_only(type(exc), exc)]
    return "\n".join(lines)


class AccessLog:
    """One line per request (method, path without the query, status, ms), written in batches: a write per
    request would cost a system call each. `start()` flushes every FLUSH_INTERVAL; `flush()` at stop."""

    FLUSH_INTERVAL = 0.1
    FLUSH_BYTES = 65536

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.size = 0

    def __call__(self, method: str, target: str, status: int, duration_ms: float) -> None:
        line = f"{method} {target.partition('?')[0]} {status} {duration_ms:.1f}ms\n"
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            lines, self.lines, self.size = self.lines, [], 0
            sys.stdout.write("".join(lines))
            sys.stdout.flush()

    def start(self) -> None:
        import gevent

        def loop() -> None:
            while True:
                gevent.sleep(self.FLUSH_INTERVAL)
                self.flush()
        gevent.spawn(loop)


def with_health(app: Callable, path: str) -> Callable:
    """The app, with `GET path` answered 200 by the worker when the app itself answers 404."""

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != path or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return app(environ, start_response)
        captured: list = []
        body: list[bytes] = []

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured[:] = [status, headers]
            return body.append

        result = app(environ, capture)
        try:
            body.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if captured and not captured[0].startswith("404"):
            start_response(*captured)
            return body
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(HEALTH_BODY)))])
        return [HEALTH_BODY]

    raw_handler = getattr(app, "microkit_raw_handler", None)
    if raw_handler is not None:
        application.microkit_raw_handler = raw_handler  # the engine's fast path (the gateway's) stays on
    limits = getattr(app, "microkit_limits", None)
    if limits is not None:
        application.microkit_limits = limits  # the gateway's [gateway] body and lingering settings
    return application


def serve(listener: socket.socket, app: Callable, log: Callable | None, ssl_context: Any = None) -> Any:
    """Start microkit's HTTP engine on the inherited socket (over TLS with an ssl_context)."""
    from microkit.http import HTTPServer, Limits
    limits = getattr(app, "microkit_limits", None) or Limits(chunked_readahead=CHUNKED_READAHEAD)
    server = HTTPServer(listener, app, limits=limits, access_log=log, ssl_context=ssl_context)
    server.start()
    return server


def serve_redirect(listener: socket.socket, https_port: int) -> Any:
    """Answer plain HTTP on the inherited redirect socket with 308 to HTTPS; it lives as long as the worker."""
    from microkit.http import HTTPServer
    from microkit.tls import redirect_to_https
    server = HTTPServer(listener, redirect_to_https(https_port))
    server.start()
    return server

