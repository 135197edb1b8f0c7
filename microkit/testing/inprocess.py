"""A service's WSGI app imported into the test process and served from a thread."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from microkit.testing.servers import START_TIMEOUT, Running, StartError, ThreadedApp, wait_for

if TYPE_CHECKING:
    from microkit.testing.project import TestProject


def load_app(root: Path, spec: str, env: Mapping[str, str]) -> Callable:
    """Import `module:attr` from `root` afresh (see `load_module`) and return the attribute."""
    module_name, attr = spec.split(":")
    target: Any = load_module(root, module_name, env)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise StartError(f"{spec} is a {type(target).__name__}, not a WSGI callable")
    return target


def load_module(root: Path, module_name: str, env: Mapping[str, str], fresh: bool = True) -> Any:
    """Import `module_name` from `root` afresh (`fresh`: with its package; else beside what this test
    imported of it already), with `env` set in os.environ while it imports (and restored after), so that
    what a service reads at import (DATABASE_URL, MICROKIT_GATEWAY_URL) is this test's."""
    package = module_name.rsplit(".", 1)[0]
    top = module_name.split(".")[0]
    if not _imported_from(sys.modules.get(top), root):
        package = top  # another project's package of the same name (`services`): import all of it again
    if fresh:
        for name in [n for n in sys.modules if (n == package or n.startswith(package + ".") or n == module_name)
                     and not _is_test_module(n)]:
            del sys.modules[name]
    if sys.path[:1] != [str(root)]:
        sys.path[:] = [str(root)] + [entry for entry in sys.path if entry != str(root)]
    importlib.invalidate_caches()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return importlib.import_module(module_name)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _imported_from(module, root: Path) -> bool:
    """Whether an imported module (or package) comes from `root`; True when it is not imported yet."""
    if module is None:
        return True
    locations = list(getattr(module, "__path__", [])) or [getattr(module, "__file__", None) or ""]
    return any(Path(location).resolve().is_relative_to(root.resolve()) for location in locations if location)


def _is_test_module(name: str) -> bool:
    """The service's own tests (services/users/tests/...) stay imported: pytest is running them."""
    return any(part in ("tests", "conftest") or part.startswith("test_") for part in name.split("."))


def publishing_as(name: str, app: Callable) -> Callable:
    """The app, with the events it publishes while it answers coming from service `name`."""
    from microkit import events

    def serve(environ: dict, start_response: Callable) -> Any:
        with events.publishing_as(name):
            return app(environ, start_response)
    return serve


class InProcessService(Running):
    """A service's WSGI app imported into the test process and served from a thread: starts in about a
    tenth of a second, and a breakpoint or a coverage run sees its code."""

    def __init__(self, project: TestProject, name: str, env: Mapping[str, str]) -> None:
        from microkit import registry

        service = project.conf.services[name]
        self.app = load_app(project.source.root, service.app, env)
        self._server = ThreadedApp(publishing_as(name, self.app))
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
