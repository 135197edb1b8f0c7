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
import threading
import time
from pathlib import Path

from support.cli import CLI, PROGRAMS, REPO, run_cli

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
        shutil.copy(PROGRAMS / source, folder / ("app.py" if source.endswith("_app.py") else source))
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
        result = run_cli("status", "--json", cwd=self.root)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def supervisor(self) -> dict:
        """The supervisor's own status (what `status --json` shows as "supervisor"), asked on its control
        socket from this process: polling it starts no CLI process."""
        from microkit import config
        from microkit.supervisor import control

        return control.request(config.load(self.root / "microkit.toml").root, {"command": "status"})

    def service(self, name: str) -> dict:
        return next(s for s in self.supervisor()["services"] if s["name"] == name)

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


def demo_shop(tmp_path: Path) -> Path:
    """A copy of the demo shop (its microkit.toml and services) on a free gateway port."""
    root = tmp_path / "shop"
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns(".microkit", "data", "*.db",
                                                                                       "__pycache__"))
    toml = (REPO / "microkit.toml").read_text().replace('listen = "127.0.0.1:8000"', 'listen = "127.0.0.1:0"')
    (root / "microkit.toml").write_text(toml)
    return root


def request(url: str, method: str, path: str, headers: dict[str, str] | None = None,
            timeout: float = 10) -> tuple[int, dict, str]:
    """One request on a fresh connection to `url` (scheme, host and port): status, headers with lower-case
    names, and the body as text."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    """GET on a fresh connection (no keep-alive): status and body."""
    base, _, path = url.partition("//")[2].partition("/")
    status, _, body = request("http://" + base, "GET", "/" + path, {"Connection": "close"}, timeout)
    return status, body


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Loop:
    """Requests to `url` in a background thread, a fresh connection each, until the `with` block ends (or
    `limit` seconds): each answer's status and headers (lower-case names) in `results`, errors in `errors`."""

    def __init__(self, url: str, method: str = "GET", limit: float = 60):
        base, _, path = url.partition("//")[2].partition("/")
        host, port = base.rsplit(":", 1)
        self.address, self.path, self.method, self.limit = (host, int(port)), "/" + path, method, limit
        self.results: list[tuple[int, dict[str, str]]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stopping.is_set() and time.monotonic() < deadline:
            connection = http.client.HTTPConnection(*self.address, timeout=10)
            try:
                connection.request(self.method, self.path, body=b"{}" if self.method == "POST" else None,
                                   headers={"Connection": "close"})
                response = connection.getresponse()
                response.read()
                self.results.append((response.status, {k.lower(): v for k, v in response.getheaders()}))
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
            finally:
                connection.close()

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.results]

    def failures(self) -> list:
        """Every answer that was not a 200, and every error."""
        return [s for s in self.statuses if s != 200] + self.errors

    def __enter__(self) -> "Loop":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(15)


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: only its parent's wait is left)."""
    return not alive(pid)


def concurrent(url: str, count: int) -> tuple[float, list]:
    """`count` GETs of a JSON answer at once, each on its own connection: seconds for all, and the
    (status, decoded body) answers."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int):
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, json.load(reply)

    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(one, range(count)))
    return time.monotonic() - started, answers
