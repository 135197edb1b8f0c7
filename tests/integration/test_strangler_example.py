"""The strangler walk-through of the README, run as written against examples/strangler: the monolith
answers everything, `users` is shadowed, its one mismatch is found, fixed and reloaded, then the route
is split 50/50 (sticky by session cookie), then cut over."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import requests

from support.cli import REPO, run_cli
from support.up import Up
from microkit.testing import eventually


def diff(root: Path) -> dict:
    result = run_cli("diff", "users", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["users"]


def served_by(gateway: str, path: str, session: str | None = None) -> str:
    cookies = {"session": session} if session else None
    return requests.get(gateway + path, cookies=cookies, timeout=10).headers["X-Served-By"]


def test_the_strangler_walk_through(tmp_path, monkeypatch):
    root = tmp_path / "strangler"
    shutil.copytree(REPO / "examples" / "strangler", root, ignore=shutil.ignore_patterns("data", ".microkit"))
    config = root / "microkit.toml"
    config.write_text(config.read_text().replace('listen = "127.0.0.1:8000"', 'listen = "127.0.0.1:0"'))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(60)["gateway"]
        eventually(lambda: requests.get(f"{gateway}/orders/", timeout=5).status_code == 200, 20)

        # 1. the monolith answers everything; users get a shadow copy
        answer = requests.get(f"{gateway}/users/1", timeout=10)
        assert answer.headers["X-Served-By"] == "monolith" and answer.json()["name"] == "Ada"
        assert requests.get(f"{gateway}/users/99", timeout=10).json() == {"error": "no such user"}
        assert served_by(gateway, "/orders/") == "monolith"

        # 2. microkit diff users: one mismatch, the 404 message
        report = eventually(lambda: (r := diff(root))["counts"]["compared"] == 2 and r, 10)
        assert report["counts"]["mismatched"] == 1
        assert report["mismatches"][0]["differences"] == [["$.error", "no such user", "user not found"]]
        text = run_cli("diff", "users", cwd=root).stdout
        assert '$.error: monolith="no such user" users="user not found"' in text

        # 3. fix the service, reload it, compare again
        app = root / "services" / "users" / "app.py"
        app.write_text(app.read_text().replace('NOT_FOUND = "user not found"', 'NOT_FOUND = "no such user"'))
        assert run_cli("reload", "users", cwd=root).returncode == 0
        assert "cleared" in run_cli("diff", "users", "--clear", cwd=root).stdout

        def fixed() -> bool:
            requests.get(f"{gateway}/users/99", timeout=10)
            report = diff(root)
            if report["counts"]["mismatched"]:
                run_cli("diff", "users", "--clear", cwd=root)
                return False
            return report["counts"]["compared"] > 0
        eventually(fixed, 30, "answers compared with no mismatch")

        # 4. half the sessions to the new service, each session sticking to its side
        result = run_cli("route", "users", "--split", "50", cwd=root)
        assert "split 50% to users, 50% to legacy" in result.stdout
        up.wait_for(r"route users: split 0% -> 50% to the service", 10)
        seen = {session: {served_by(gateway, "/users/1", session) for _ in range(3)}
                for session in (f"s{i}" for i in range(40))}
        assert all(len(sides) == 1 for sides in seen.values())
        assert {side for sides in seen.values() for side in sides} == {"monolith", "users"}

        # 5. cut over: users answers every /users request, the monolith gets the copies
        run_cli("route", "users", "--split", "100", cwd=root)
        eventually(lambda: {served_by(gateway, "/users/2") for _ in range(10)} == {"users"}, 10)
        assert served_by(gateway, "/orders/") == "monolith"
        created = requests.post(f"{gateway}/users/", json={"name": "Barbara", "email": "b@example.com"}, timeout=10)
        assert created.status_code == 201 and created.headers["X-Served-By"] == "users"
        before = diff(root)["counts"]["compared"]
        requests.get(f"{gateway}/users/{created.json()['id']}", timeout=10)
        report = eventually(lambda: (r := diff(root))["counts"]["compared"] > before and r, 10)
        assert report["counts"]["mismatched"] == 0
        assert "split 100% (live, set " in run_cli("route", "users", cwd=root).stdout
    finally:
        up.close()
