"""Gateway and backend processes from programs/gateway_harness.py (each binds port 0 and says which port
it got), and a raw-socket client for them."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

from microkit.testing import eventually
from support.cli import PROGRAMS

HARNESS = str(PROGRAMS / "gateway_harness.py")

CONFIG = """
[project]
name = "gw"
[gateway]
max_body = "{max_body}"
timeout = 5
trusted_proxies = {trusted}
[services.users]
app = "x:app"
route = "/users"
[services.admin]
app = "x:app"
route = "/users/admin"
[services.orders]
app = "x:app"
route = "/orders"
route_timeout = 0.5
[services.empty]
app = "x:app"
route = "/empty"
"""


class Processes:
    """Starts harness processes and kills every one of them at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.output: dict[int, list[str]] = {}

    def start(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, int]:
        """Start `gateway_harness.py ROLE 0 ARGS...`; returns the process and the port it bound."""
        proc = subprocess.Popen([sys.executable, HARNESS, args[0], "0", *args[1:]], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else "(nothing within 15 s)\n"
        if not line.startswith("listening"):
            try:
                rest = proc.communicate(timeout=10)[0]
            finally:
                proc.kill()
            raise RuntimeError(f"{args[0]} did not start: {line}{rest}")
        lines = self.output[proc.pid] = []
        threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout), daemon=True).start()
        return proc, int(line.split()[1])

    def backend(self, name: str) -> int:
        return self.start("backend", name)[1]

    def gateway(self, instances: list[str], max_body: str = "1MB", trusted: str = "[]", more: str = "",
                settings: str = "") -> int:
        """A gateway process; `settings` go into [gateway], `more` after the services."""
        config = self.tmp_path / f"gw{len(self.procs)}.toml"
        text = CONFIG.format(max_body=max_body, trusted=trusted)
        config.write_text(text.replace("[services.users]", settings + "\n[services.users]", 1) + more)
        proc, port = self.start("gateway", str(config), *instances)
        self.last_gateway = proc
        return port

    def lines(self, proc: subprocess.Popen, containing: str, timeout: float = 5.0) -> list[str]:
        """The output lines of `proc` holding `containing`, once there is one."""
        return eventually(lambda: [line for line in list(self.output[proc.pid]) if containing in line], timeout,
                          f"a line with {containing!r}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


def request(port: int, raw: bytes, timeout: float = 10) -> tuple[int, dict[str, list[str]], bytes]:
    """Send raw bytes, read one response (Content-Length framed); returns status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict[str, list[str]], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers.get("content-length", ["0"])[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str, headers: str = "", method: str = "GET", body: bytes = b"") -> tuple[int, dict, bytes]:
    length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
    raw = f"{method} {path} HTTP/1.1\r\nHost: gw.test\r\n{headers}{length}Connection: close\r\n\r\n".encode()
    return request(port, raw + body)


def connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:port (from /proc/net/tcp)."""
    count = 0
    for name in ("/proc/net/tcp",):
        with open(name) as table:
            for line in list(table)[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "01" and local == f"0100007F:{port:04X}":
                    count += 1
    return count
