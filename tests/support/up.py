"""Run the real `microkit up` on a temp project and talk to it; every wait is bounded, and `close()`
kills the whole process group, so no test leaves a process behind."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

APPS = Path(__file__).resolve().parent.parent / "programs"
CLI = [sys.executable, "-m", "microkit.cli"]
TIMESTAMP = re.compile(r"^\d\d:\d\d:\d\d ")


def make_project(root: Path, services: dict[str, dict], apps: dict[str, str]) -> Path:
    """A project at `root`: `apps` maps a service name to one of this folder's app files, copied to
    services/NAME/app.py; `services` holds each service's microkit.toml settings."""
    (root / "services").mkdir(parents=True)
    (root / "services" / "__init__.py").write_text("")
    for name, source in apps.items():
        folder = root / "services" / name
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        shutil.copy(APPS / source, folder / ("app.py" if source.endswith("_app.py") else source))
    lines = ['[project]', 'name = "suptest"', '', '[gateway]', 'listen = "127.0.0.1:0"', '']
    for name, settings in services.items():
        lines.append(f"[services.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in settings.items()]
        lines.append("")
    (root / "microkit.toml").write_text("\n".join(lines))
    return root


def toml_value(value) -> str:
    """A setting as TOML: JSON's spelling serves for strings, numbers, booleans and lists; a dict is an
    inline table."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)


def run_cli(root: Path, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=root, capture_output=True, text=True, timeout=timeout)


class Up:
    """A running `microkit up` and its output, read by a thread into `lines`."""

    def __init__(self, root: Path, *args: str, gateway: bool = False, env: dict | None = None):
        self.root = root
        args = args if gateway else ("--no-gateway", *args)
        self.process = subprocess.Popen([*CLI, "up", *args], cwd=root, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        env=None if env is None else {**os.environ, **env})
        self.lines: list[str] = []  # without the leading HH:MM:SS timestamp
        self.raw_lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.raw_lines.append(line.rstrip("\n"))
                self.lines.append(TIMESTAMP.sub("", line.rstrip("\n")))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10, start: int = 0) -> re.Match:
        """The first output line from index `start` on that matches `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output:\n"
                                         + "\n".join(self.lines))
                self.changed.wait(min(left, 0.1))

    def ready(self, timeout: float = 15) -> dict[str, str]:
        """Wait for `ready: ...`; returns each service's first URL (and the gateway's, when it runs)."""
        line = self.wait_for(r"^ready: ", timeout).string
        listed = self.wait_for(r"^services: ", 1).string if line.startswith("ready: gateway") else ""
        return {name: url for name, url in re.findall(r"(\w+) (http://[\d.:]+)", listed + " " + line)}

    def status(self) -> dict:
        result = run_cli(self.root, "status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def service(self, name: str) -> dict:
        return next(s for s in self.status()["supervisor"]["services"] if s["name"] == name)

    def pids(self, name: str) -> set[int]:
        return {i["pid"] for i in self.service(name)["instances"]}

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(5)
        self.reader.join(5)
        self.process.stdout.close()


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    """GET on a fresh connection (no keep-alive): status and body."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    path = "/" + url.split("//", 1)[1].partition("/")[2]
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def eventually(check, timeout: float, interval: float = 0.05):
    """Call `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
