"""Hosts for tests, made of Linux network namespaces: a switch namespace with a bridge, and one namespace
per host joined to it by a veth pair. Built and torn down by the test itself; needs root and iproute2.

Traffic stays inside these namespaces: nothing is added to the test machine's own network.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
PREFIX = "mkt"


class NetnsUnavailable(Exception):
    """This machine cannot make network namespaces here (not root, no iproute2, no netns support)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    name: str         # the namespace
    address: str      # on the shared subnet
    port: str         # the veth end on the switch

    def command(self, *args: str) -> list[str]:
        """ARGS run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def call(self, function, *args, **kwargs):
        """`function(*args, **kwargs)` in a thread that entered this host's namespace: its sockets are the host's."""
        outcome: dict = {}

        def run() -> None:
            try:
                with open(f"/run/netns/{self.name}") as handle:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                outcome["value"] = function(*args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


@dataclass
class Network:
    """`count` hosts on 10.213.0.0/24 (host N at 10.213.0.N), joined by a bridge in a namespace of its own."""

    count: int
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    hosts: list[Host] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def build(self) -> "Network":
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("`ip` is missing (apt-get install iproute2)")
        remove_leftovers()
        made = ip("netns", "add", self.switch, check=False)
        if made.returncode != 0:
            raise NetnsUnavailable(f"ip netns add: {made.stderr.strip()}")
        try:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for number in range(1, self.count + 1):
                host = Host(f"{self.tag}-h{number}", f"10.213.0.{number}", f"p{number}")
                ip("netns", "add", host.name)
                self.hosts.append(host)
                ip("link", "add", "eth0", "netns", host.name, "type", "veth", "peer", "name", host.port,
                   "netns", self.switch)
                ip("-n", self.switch, "link", "set", host.port, "master", "br0")
                ip("-n", self.switch, "link", "set", host.port, "up")
                ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip("-n", host.name, "link", "set", "eth0", "up")
                ip("-n", host.name, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def cut(self, host: Host) -> None:
        """Take the host's link down at the switch: it can reach nobody and nobody reaches it."""
        ip("-n", self.switch, "link", "set", host.port, "down")

    def mend(self, host: Host) -> None:
        ip("-n", self.switch, "link", "set", host.port, "up")

    def destroy(self) -> None:
        for name in [h.name for h in self.hosts] + [self.switch]:
            ip("netns", "del", name, check=False)
        self.hosts.clear()


def remove_leftovers() -> None:
    """Namespaces of an earlier test run whose process is gone (a run that was killed before its teardown)."""
    listed = ip("netns", "list", check=False).stdout.split()
    for name in listed:
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            ip("netns", "del", name, check=False)


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """One GET on a fresh connection (run it inside a host with `Host.call`); status 0 when nothing answered."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError as exc:
        return 0, str(exc)
    finally:
        connection.close()
