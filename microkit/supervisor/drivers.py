"""Database drivers that gevent's monkey-patching does not reach, made cooperative in every worker.

psycopg2 is a C extension: libpq waits on its sockets itself, so patched sockets never see those waits and
one query blocks the whole worker. psycopg2 has a hook for this (psycogreen's approach): with a wait
callback set, libpq runs non-blocking and psycopg2 calls the callback whenever it would wait, here to
wait on gevent's hub. psycopg 3 (3.1 on) picks a cooperative wait by itself when it is imported after
patching, which the worker guarantees; an older one that still picked its C wait is switched to its
selector wait. PyMySQL is pure Python on patched sockets and needs nothing.

A driver is patched when it is imported, not before: importing psycopg2 into every worker (the gateway's
included) would cost memory for services that never use it. `install()` runs in the child right after
`monkey.patch_all()` and before the app is imported. Importing this module imports no driver and no gevent.
"""

from __future__ import annotations

import importlib.abc
import sys
from types import ModuleType
from typing import Any, Callable


POLL_OK, POLL_READ, POLL_WRITE = 0, 1, 2  # psycopg2.extensions' values; READ and WRITE are also libev's events

_watchers: dict[int, Any] = {}  # (socket << 2 | event) -> the hub's watcher, kept for the next wait


def _get_hub() -> Any:
    """gevent's get_hub(), imported on the first wait (a worker has patched by then) and bound from then on."""
    global _get_hub
    from gevent import get_hub
    _get_hub = get_hub
    return get_hub()


def psycopg2_wait(connection: Any) -> None:
    """psycopg2's wait callback: poll the connection and, while libpq would block, wait on the hub for its
    socket. A socket's watcher is kept for its next wait (a query waits once, a connect four or five times):
    a new one each time cost an allocation, an fcntl() and an epoll_ctl() per wait, and more Python than
    the wait itself."""
    while True:
        state = connection.poll()
        if state == POLL_OK:
            return
        if state != POLL_READ and state != POLL_WRITE:
            from psycopg2 import OperationalError
            raise OperationalError(f"unexpected state from poll(): {state!r}")
        hub = _get_hub()
        key = connection.fileno() << 2 | state
        watcher = _watchers.get(key)
        if watcher is None or watcher.loop is not hub.loop:  # new socket, or another thread's hub
            watcher = _watchers[key] = hub.loop.io(key >> 2, state)
        hub.wait(watcher)


def patch_psycopg2(module: ModuleType) -> None:
    extensions = module.extensions
    if extensions.get_wait_callback() is None:
        extensions.set_wait_callback(psycopg2_wait)


def patch_psycopg_waiting(module: ModuleType) -> None:
    wait_c = getattr(module, "wait_c", None)
    if wait_c is not None and module.wait is wait_c:
        module.wait = module.wait_selector


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "psycopg2": patch_psycopg2,
    "psycopg.waiting": patch_psycopg_waiting,
}

COOPERATIVE = {
    "psycopg2": "wait callback on gevent's hub, set when psycopg2 is imported",
    "psycopg": "psycopg 3's own gevent-aware wait (imported after patching)",
    "pymysql": "pure Python on gevent's patched sockets",
}


def install() -> None:
    """Make the drivers cooperative: those already imported now, the others as they are imported."""
    for name, patch in PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            patch(module)
    if not any(isinstance(finder, PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, PatchOnImport(PATCHES))


def is_cooperative(name: str) -> bool:
    """Whether an imported driver has been made cooperative (for tests and `microkit` diagnostics)."""
    if name == "psycopg2":
        from psycopg2 import extensions
        return extensions.get_wait_callback() is psycopg2_wait
    if name == "psycopg":
        from psycopg import waiting
        return waiting.wait is not getattr(waiting, "wait_c", None)
    if name == "pymysql":
        from gevent import monkey
        return monkey.is_module_patched("socket")
    return False


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds a patched module with the other finders and runs its patch right after the module has run."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]):
        self.patches = patches

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = PatchingLoader(spec.loader, patch)
        return spec


class PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]):
        self.loader = loader
        self.patch = patch

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
