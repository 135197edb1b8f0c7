"""How `microkit status`, `reload` and `scale` reach a running `microkit up`.

`up` listens on a Unix socket, `<project root>/.microkit/supervisor.sock` (or a short path under the
temp folder when that one is too long for a socket), and records it with its pid in
`.microkit/supervisor.json`. A client sends one JSON object on one line, `{"command": "status"}`,
`{"command": "reload", "services": [...]}` or `{"command": "scale", "workers": {"users": 3}}`, and reads
one JSON line back: `{"ok": true, ...}` or `{"ok": false, "error": "..."}` (with `"usage": true` when the
request itself was wrong, such as an unknown service name: the CLI exits 2 for those).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import NotRunningError, SupervisorError, UsageError

STATE_DIR = ".microkit"
UP = "supervisor"
MAX_SOCKET_PATH = 100
REQUEST_TIMEOUT = 2.0


def state_path(root: Path, name: str = UP) -> Path:
    return root / STATE_DIR / f"{name}.json"


def socket_path(root: Path, name: str = UP) -> Path:
    """`name` tells apart the supervisors of one project on one host: `up`, `gateway`, each `run`."""
    path = root / STATE_DIR / f"{name}.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(f"{root}:{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"microkit-{digest}.sock"


def running(root: Path, name: str = UP) -> int | None:
    """The pid of the supervisor `name` of this project when one answers on its socket, else None."""
    try:
        return request(root, {"command": "status"}, timeout=1.0, name=name).get("pid")
    except NotRunningError:
        return None
    except SupervisorError:
        return state_pid(root, name)


def state_pid(root: Path, name: str = UP) -> int | None:
    return (read_state(root, name) or {}).get("pid")


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def read_state(root: Path, name: str = UP) -> dict | None:
    """What the supervisor `name` recorded at start (pid, socket, registry URL), if its process still runs."""
    try:
        state = json.loads(state_path(root, name).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return state if isinstance(state, dict) else None


class ControlServer:
    """The listening end in `up`. The arbiter polls `sock` and calls `serve_one()` when it is readable."""

    def __init__(self, root: Path, handle: Callable[[dict], dict], name: str = UP, info: dict | None = None):
        self.root = root
        self.info = dict(info or {})
        self.handle = handle
        self.name = name
        self.path = socket_path(root, name)
        self.sock: socket.socket | None = None

    def open(self) -> None:
        """Claim the project: refuse when another `up` answers on the socket, else replace stale files."""
        (self.root / STATE_DIR).mkdir(exist_ok=True)
        if self.path.exists():
            try:
                other = request(self.root, {"command": "status"}, timeout=1.0, name=self.name)
            except NotRunningError:
                self.path.unlink(missing_ok=True)
            else:
                what = "`microkit up`" if self.name == UP else f"`microkit {self.name}`"
                raise SupervisorError(f"{what} is already running for this project (pid {other.get('pid')}); "
                                      f"stop it first, or use `microkit reload`")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock
        state = {**self.info, "pid": os.getpid(), "socket": str(self.path), "started": time.time()}
        tmp = state_path(self.root, self.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_path(self.root, self.name))

    def serve_one(self) -> None:
        """Answer one waiting client. Clients are local and send at once, so a short timeout suffices."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                message = json.loads(read_line(conn))
                reply = self.handle(message) if isinstance(message, dict) else {"ok": False, "error": "bad request"}
            except (OSError, ValueError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.path.unlink(missing_ok=True)
            state_path(self.root, self.name).unlink(missing_ok=True)


def read_line(conn: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("message too long")
    return data


def request(root: Path, message: dict, timeout: float = REQUEST_TIMEOUT, name: str = UP) -> dict[str, Any]:
    """Send one command to the supervisor `name` (default: `up`) of the project at `root`; return its reply."""
    not_running = NotRunningError(f"no `microkit up` is running for {root} (start one with `microkit up`)")
    try:
        state = json.loads(state_path(root, name).read_text())
        path = state["socket"]
    except (OSError, ValueError, KeyError, TypeError):
        raise not_running from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise not_running from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = json.loads(read_line(sock))
        except (OSError, ValueError) as exc:
            raise SupervisorError(f"`microkit up` (pid {state.get('pid')}) did not answer: {exc}") from None
    if not reply.get("ok"):
        error = UsageError if reply.get("usage") else SupervisorError
        raise error(reply.get("error", "the supervisor refused the request"))
    return reply
