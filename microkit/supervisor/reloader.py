"""`microkit up --reload`: notice edited Python files and say which services they belong to.

Polling mtimes every half second keeps this dependency-free and fork-safe (no watcher thread in the
arbiter); a project's own files are few, and vendored folders (hidden ones, virtualenvs, __pycache__,
node_modules) are skipped. A file inside a service's package reloads that service; any other file
(shared code) reloads them all. Changes are debounced: reloading waits until files stop changing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Mapping

SKIP = {"__pycache__", "node_modules", "site-packages"}


class Reloader:
    def __init__(self, root: Path, scopes: Mapping[str, Path | None], interval: float = 0.5,
                 debounce: float = 0.3, clock: Callable[[], float] = time.monotonic):
        self.root = root
        self.scopes = dict(scopes)
        self.interval = interval
        self.debounce = debounce
        self.clock = clock
        self.snapshot = self.scan()
        self.next_scan = clock() + interval
        self.pending: set[Path] = set()
        self.last_change = 0.0

    def scan(self) -> dict[Path, int]:
        found: dict[Path, int] = {}
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP
                       and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))]
            for name in files:
                if name.endswith(".py"):
                    path = Path(folder, name)
                    try:
                        found[path] = path.stat().st_mtime_ns
                    except OSError:
                        pass
        return found

    def poll(self) -> tuple[list[Path], list[str]]:
        """The changed files and the services to reload, once changes have settled; else ([], [])."""
        now = self.clock()
        if now >= self.next_scan:
            self.next_scan = now + self.interval
            snapshot = self.scan()
            changed = {p for p in snapshot.keys() | self.snapshot.keys()
                       if snapshot.get(p) != self.snapshot.get(p)}
            self.snapshot = snapshot
            if changed:
                self.pending |= changed
                self.last_change = now
        if not self.pending or now - self.last_change < self.debounce:
            return [], []
        files, self.pending = sorted(self.pending), set()
        return files, self.affected(files)

    def affected(self, files: list[Path]) -> list[str]:
        services: set[str] = set()
        for path in files:
            owners = [name for name, scope in self.scopes.items()
                      if scope is not None and path.is_relative_to(scope)]
            services.update(owners or self.scopes)
        return sorted(services)


def app_scope(root: Path, app: str) -> Path | None:
    """The folder of an app's module ("services.users.app:app" -> services/users); None at the root."""
    parts = app.split(":", 1)[0].split(".")
    return root.joinpath(*parts[:-1]) if len(parts) > 1 else None


def command_scope(root: Path, name: str) -> Path | None:
    folder = root / "services" / name
    return folder if folder.is_dir() else None
