"""A worker's entry in the registry (child side, after gevent patching).

The worker registers only once its app answers the health path, heartbeats while it runs, and
deregisters before it stops accepting, waiting a moment so that gateways stop routing to it before
its listener closes. A registry outage never stops the worker: registration and heartbeats retry.
"""

from __future__ import annotations

import io
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("microkit.registry")

HEALTH_RETRY = 0.2
DEREGISTER_GRACE = 0.3


@dataclass(frozen=True)
class RegistrySpec:
    """Where a service's workers register: the project's registry, and the address others reach them at."""

    url: str | None
    project_root: Path
    namespace: str
    host: str


def advertised_host(listen_host: str) -> str:
    """The address to publish for a listen host: a wildcard becomes this machine's address."""
    if listen_host in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return listen_host


def answers_health(app: Callable, path: str) -> bool:
    """Call the app in-process for GET `path`: True on a 2xx."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "0", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "localhost", "SCRIPT_NAME": "",
               "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
               "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": False,
               "wsgi.multiprocess": True, "wsgi.run_once": False}
    status: list[str] = []
    try:
        result = app(environ, lambda s, h, e=None: status.append(s) or (lambda data: None))
        try:
            for _ in result:
                pass
        finally:
            getattr(result, "close", lambda: None)()
    except Exception:
        return False
    return bool(status) and status[-1].startswith("2")


class Registration:
    """Registers one worker as an instance of its service, and removes it on the way out."""

    def __init__(self, spec: RegistrySpec, service: str, port: int, slot: int) -> None:
        from microkit import registry

        self.registry = registry.connect(spec.url, project_root=spec.project_root, namespace=spec.namespace)
        self.instance = registry.Instance(service=service, host=spec.host, port=port, pid=os.getpid(),
                                          meta={"worker": slot})
        self.heartbeat = registry.Heartbeat(self.registry)
        self.registered = False
        self._task = None

    def start(self, app: Callable, health_path: str, registered: Callable[[], None]) -> None:
        """In the background: wait until the app is healthy, register, call `registered` and keep heartbeating."""
        import gevent

        self._task = gevent.spawn(self._register_when_healthy, app, health_path, registered)

    def _register_when_healthy(self, app: Callable, health_path: str, registered: Callable[[], None]) -> None:
        import gevent

        while not answers_health(app, health_path):
            gevent.sleep(HEALTH_RETRY)
        try:
            self.registry.register(self.instance)
        except Exception as exc:  # the instance is remembered first: heartbeats retry it (RegistryUnavailable)
            log.warning("cannot register yet (%s); retrying with each heartbeat", exc)
        self.registered = True
        self.heartbeat.start()
        registered()

    def stop(self) -> None:
        """Deregister, then give gateways a moment to notice before the caller stops accepting."""
        import gevent

        if self._task is not None:
            self._task.kill()
        if not self.registered:
            return
        self.heartbeat.stop()
        try:
            self.registry.deregister(self.instance)
        except Exception as exc:  # a failed deregister must not stop the graceful stop: the entry expires
            log.warning("cannot deregister (%s); the entry expires by itself", exc)
        self.registered = False
        gevent.sleep(DEREGISTER_GRACE)
