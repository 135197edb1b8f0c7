"""What a test starts: a service in this process, a service as real worker processes (`microkit run`),
a fake in a service's place, and the gateway (`microkit gateway`).

Every one listens on a socket bound before it serves (port 0 picked by the kernel, never a port chosen
beforehand and bound later), and is found the way microkit finds it: through the test's registry.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import json
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from microkit.testing.client import Client, Response

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL = 0.05
LOG_TAIL = 40


class StartError(RuntimeError):
    """A service or the gateway did not come up; the message carries the end of its log."""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, check: Callable[[], None] = lambda: None) -> Any:
    """Poll `condition` until it returns something true; `check` raises early when waiting is pointless."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StartError(f"{what}: not ready within {timeout:g}s")
        time.sleep(POLL)


# In-process serving: a threaded WSGI server on a socket it binds itself.

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request on stderr: pytest shows what the test printed, not the server's chatter."""


class _ThreadedServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class ThreadedApp:
    """Serves a WSGI app on 127.0.0.1 (a port the kernel picks as the socket is bound) in a daemon thread."""

    def __init__(self, app: Callable) -> None:
        self.server = _ThreadedServer(("127.0.0.1", 0), _QuietHandler)
        self.server.set_app(app)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"microkit-testing-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)


class Running(Client):
    """A started service (or fake, or gateway): a Client pointed at it, with its `name` and `url`."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(url)
        self.name = name
        self.url = url

    def terminate(self) -> None:
        """Begin stopping without waiting (processes stop side by side at the end of a test)."""

    def stop(self) -> None:
        raise NotImplementedError


def load_app(root: Path, spec: str, env: Mapping[str, str]) -> Callable:
    """Import `module:attr` from `root` afresh, with `env` set in os.environ while it imports (and restored
    after), so that what a service reads at import (DATABASE_URL, MICROKIT_GATEWAY_URL) is this test's."""
    module_name, attr = spec.split(":")
    package = module_name.rsplit(".", 1)[0]
    for name in [n for n in sys.modules if (n == package or n.startswith(package + ".") or n == module_name)
                 and not _is_test_module(n)]:
        del sys.modules[name]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if not callable(target):
        raise StartError(f"{spec} is a {type(target).__name__}, not a WSGI callable")
    return target


def _is_test_module(name: str) -> bool:
    """The service's own tests (services/users/tests/...) stay imported: pytest is running them."""
    return any(part in ("tests", "conftest") or part.startswith("test_") for part in name.split("."))


class InProcessService(Running):
    """A service's WSGI app imported into the test process and served from a thread: starts in
    milliseconds, and a breakpoint or a coverage run sees its code."""

    def __init__(self, project, name: str, env: Mapping[str, str]) -> None:
        from microkit import registry

        service = project.conf.services[name]
        self.app = load_app(project.source.root, service.app, env)
        self._server = ThreadedApp(self.app)
        super().__init__(name, f"http://127.0.0.1:{self._server.port}")
        self.project = project
        self.pids = [os.getpid()]
        try:
            wait_for(lambda: self._healthy(service.health), START_TIMEOUT, f"service {name} (in-process)")
        except BaseException:
            self._server.stop()
            raise
        self.instances = [registry.Instance(service=name, host="127.0.0.1", port=self._server.port,
                                            meta={"testing": "in-process"})]
        project.register(self.instances)

    def _healthy(self, path: str) -> bool:
        try:
            return self.get(path, timeout=2.0).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.project.deregister(self.instances)
        self._server.stop()


PR_SET_PDEATHSIG = 1
# Loaded here, before any fork: a child of a threaded process must not load libraries before exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so no `microkit run` outlives pytest."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def microkit_command() -> list[str]:
    """The installed `microkit` console script of this interpreter, or the same CLI through -m."""
    script = Path(sys.executable).with_name("microkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "microkit.cli"]


class Process:
    """One `microkit` CLI process of a test, its output in a log file under the test's folder."""

    def __init__(self, project, args: list[str], label: str) -> None:
        logs = project.root / "logs"
        logs.mkdir(exist_ok=True)
        number = len(list(logs.glob(f"{label}*.log")))
        self.log_path = logs / f"{label}{'-' + str(number) if number else ''}.log"
        self.label = label
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(microkit_command() + args, cwd=project.root, env=project.environ(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self) -> str:
        lines = self.log().splitlines()[-LOG_TAIL:]
        return "\n".join(f"  | {line}" for line in lines) or "  | (no output)"

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise StartError(f"`microkit {' '.join(self.proc.args[len(microkit_command()):])}` exited with code "
                             f"{code} before it was ready; its output ({self.log_path}):\n{self.tail()}")

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM: in-flight requests finish, instances deregister)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_TIMEOUT."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ProcessService(Running):
    """A service run by the real CLI, `microkit run NAME`: its supervisor binds the socket (port 0) and
    forks `workers` gevent workers, which register in the test's registry once healthy; the service is
    ready when all of them are listed there."""

    def __init__(self, project, name: str, workers: int, timeout: float = START_TIMEOUT) -> None:
        before = {i.instance_id for i in project.registry.instances(name)}
        self.process = Process(project, ["run", name, "-c", str(project.path)], name)
        self.project = project

        def registered() -> list:
            found = [i for i in project.registry.instances(name) if i.instance_id not in before]
            return found if len(found) >= workers else []

        try:
            self.instances = wait_for(registered, timeout, f"service {name} (`microkit run {name}`)",
                                      self.process.check_alive)
        except BaseException as exc:
            self.process.stop()
            if isinstance(exc, StartError) and "not ready" in str(exc):
                raise StartError(f"{exc}; its output ({self.process.log_path}):\n{self.process.tail()}") from None
            raise
        first = self.instances[0]
        super().__init__(name, f"http://{first.host}:{first.port}")
        self.pids = sorted({i.pid for i in self.instances})

    def log(self) -> str:
        """Everything the service's supervisor and workers printed so far."""
        return self.process.log()

    def terminate(self) -> None:
        self.process.terminate()

    def stop(self) -> None:
        self.process.stop()


# Fakes.

class FakeRequest:
    """What a fake function is called with."""

    def __init__(self, environ: dict) -> None:
        self.method = environ["REQUEST_METHOD"]
        self.path = environ.get("PATH_INFO", "/")
        self.query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self.headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            self.headers["Content-Type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.body = environ["wsgi.input"].read(length) if length else b""

    def __repr__(self) -> str:
        return f"<FakeRequest {self.method} {self.path}>"

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def function_app(handler: Callable[[FakeRequest], Any], calls: list) -> Callable:
    """A WSGI app around `handler(request)`, which returns a body (dict/list: JSON, str, bytes or None),
    or `(status, body)`, or `(status, body, headers)`."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        request = FakeRequest(environ)
        calls.append(request)
        result = handler(request)
        status, headers = 200, {}
        if isinstance(result, tuple):
            status, result, *rest = result
            headers = dict(rest[0]) if rest else {}
        if isinstance(result, (dict, list)):
            body = json.dumps(result).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(result, str):
            body = result.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            body = result or b""
        start_response(f"{status} {REASONS.get(status, 'Status')}", list(headers.items()))
        return [body]

    return app


def is_wsgi_app(target: Callable) -> bool:
    """WSGI apps take (environ, start_response); fake functions take one request."""
    try:
        parameters = [p for p in inspect.signature(target).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return True
    if len(parameters) not in (1, 2):
        raise TypeError(f"a fake is a WSGI app (environ, start_response) or a function (request), "
                        f"got {target!r} taking {len(parameters)} arguments")
    return len(parameters) == 2


class FakeService(Running):
    """A WSGI app or a function registered in the test's registry under a service's name: the gateway
    routes that service's route to it, so whatever calls the service reaches the fake instead.
    `calls` lists the requests a function fake received."""

    def __init__(self, project, name: str, target: Callable) -> None:
        from microkit import registry

        self.calls: list[FakeRequest] = []
        app = target if is_wsgi_app(target) else function_app(target, self.calls)
        self._server = ThreadedApp(app)
        super().__init__(name, f"http://127.0.0.1:{self._server.port}")
        self.project = project
        self.instances = [registry.Instance(service=name, host="127.0.0.1", port=self._server.port,
                                            meta={"testing": "fake"})]
        project.register(self.instances)

    def stop(self) -> None:
        self.project.deregister(self.instances)
        self._server.stop()


# The gateway.

READY = re.compile(r"ready: gateway (https?://\S+)")
GATEWAY_HEALTH = "/__microkit/health"


class GatewayProcess(Running):
    """The project's own gateway, `microkit gateway`, with every policy of its microkit.toml, routing to
    what the test's registry lists."""

    def __init__(self, project, timeout: float = START_TIMEOUT) -> None:
        self.process = Process(project, ["gateway", "-c", str(project.path)], "gateway")
        try:
            url = wait_for(lambda: READY.search(self.process.log()), timeout, "the gateway (`microkit gateway`)",
                           self.process.check_alive).group(1)
        except BaseException as exc:
            self.process.stop()
            if isinstance(exc, StartError) and "not ready" in str(exc):
                raise StartError(f"{exc}; its output ({self.process.log_path}):\n{self.process.tail()}") from None
            raise
        super().__init__("gateway", url)
        self.project = project

    def routed(self) -> dict[str, int]:
        """Instances the gateway knows per routed service (its health endpoint)."""
        try:
            reply: Response = self.get(GATEWAY_HEALTH, timeout=2.0)
            return reply.json().get("instances", {}) if reply.status == 200 else {}
        except (OSError, AssertionError):
            return {}

    def wait_routed(self, name: str, count: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until the gateway routes to `count` instances of `name` (a service or fake just started)."""
        wait_for(lambda: self.routed().get(name, 0) >= count, timeout,
                 f"the gateway routing to {count} instance(s) of {name}", self.process.check_alive)

    def log(self) -> str:
        return self.process.log()

    def terminate(self) -> None:
        self.process.terminate()

    def stop(self) -> None:
        self.process.stop()
