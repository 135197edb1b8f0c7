"""Operating-system helpers used on both sides of a fork: parent-death signals, fd hygiene, free ports,
and how a child's end is described. Nothing here imports gevent."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

from ..config import Address

PR_SET_PDEATHSIG = 1
BACKLOG = 2048

# Loaded before any fork: a child between fork and exec must not load libraries.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send `signum` to this process when its parent dies (Linux), and exit now if the
    parent is already gone. Safe in a `preexec_fn`."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def send_signal(pid: int | None, signum: int) -> None:
    """Signal a child that may already be gone (or not started yet)."""
    if pid is not None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def close_fds_except(keep: list[int]) -> None:
    """Close every descriptor above 2 that is not in `keep`: a child must not hold its siblings' pipes or
    other services' sockets."""
    low = 3
    for fd in sorted(fd for fd in set(keep) if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def bind(address: Address) -> socket.socket:
    """The listening socket a group of workers shares; port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str) -> int:
    """A port nothing listens on right now, for a program that binds its own socket."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def describe_exit(status: int) -> str:
    """A wait status as a person reads it: "exited with code 1" or "killed by SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def url(host: str, port: int, scheme: str = "http") -> str:
    """The address to type into a browser for a socket bound on `host`."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


SUPERVISOR_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGTTIN,
                      signal.SIGTTOU, signal.SIGCHLD)


def reset_signals() -> None:
    """In a fresh child: forget the arbiter's signal handlers and its wake-up pipe."""
    signal.set_wakeup_fd(-1)
    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
