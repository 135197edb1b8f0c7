"""Where every gateway worker leaves what the dashboard shows, so that a page served by any of them
covers all: this host's added-up gateway figures, its supervisor's status, and the worker's recent
errors. In Redis when the project has a registry there (so gateways on every host sharing it see each
other), else in files under `.microkit/board/` (this host). Entries older than STALE are ignored."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STALE = 10.0


class FileBoard:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def publish(self, name: str, entry: dict) -> None:
        path = self.folder / f"{name}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)

    def entries(self) -> list[dict]:
        now = time.time()
        found = []
        for path in self.folder.glob("*.json"):
            try:
                if now - path.stat().st_mtime > STALE:
                    path.unlink()
                    continue
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def close(self) -> None:
        pass


class RedisBoard:
    def __init__(self, url: str, namespace: str) -> None:
        import redis
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = f"microkit:{namespace}:dashboard:"

    def publish(self, name: str, entry: dict) -> None:
        self.client.set(self.prefix + name, json.dumps(entry), ex=int(STALE))

    def entries(self) -> list[dict]:
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=500))
        found = []
        for raw in self.client.mget(keys) if keys else []:
            if raw is None:
                continue
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
        return found

    def close(self) -> None:
        self.client.close()


def board_for(root: Path, registry_url: str | None, namespace: str):
    if registry_url and registry_url.split(":", 1)[0] in ("redis", "rediss"):
        return RedisBoard(registry_url, namespace)
    return FileBoard(root / ".microkit" / "board")
