"""A command service's instance in the registry: a small parent process around the program.

    python -m microkit.supervisor.shim SPEC_JSON -- PROGRAM ARGS...

The arbiter runs this instead of the program itself. It starts the program, registers it once it
answers its health path (and keeps the entry alive), and on SIGTERM deregisters it first, waits a
moment so gateways stop routing to it, and only then passes SIGTERM on. Its exit code is the
program's. The program dies with the shim (PR_SET_PDEATHSIG), and the shim with the arbiter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

from .command import BOOT_PROBE_INTERVAL, check_health
from .process import die_with_parent
from .registration import DEREGISTER_GRACE


class Shim:
    """Runs one program and keeps its registry entry true to its state."""

    def __init__(self, spec: dict, args: list[str]) -> None:
        from microkit import registry

        self.spec = spec
        self.args = args
        self.registry = registry.connect(spec["url"], project_root=Path(spec["root"]), namespace=spec["namespace"])
        self.heartbeat = registry.Heartbeat(self.registry)
        self.instance = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.process: subprocess.Popen | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.process = subprocess.Popen(self.args, preexec_fn=partial(die_with_parent, os.getpid()))
        threading.Thread(target=self.register_when_healthy, daemon=True).start()
        code = self.process.wait()
        self.deregister()
        return code

    def register_when_healthy(self) -> None:
        from microkit import registry

        spec = self.spec
        while not self.stopping.is_set() and self.process.poll() is None:
            if check_health(spec["host"], spec["port"], spec["health"]):
                break
            time.sleep(BOOT_PROBE_INTERVAL)
        with self.lock:
            if self.stopping.is_set() or self.process.poll() is not None:
                return
            self.instance = registry.Instance(service=spec["service"], host=spec["advertise"], port=spec["port"],
                                              pid=self.process.pid,
                                              meta={"worker": spec["slot"], "program_pid": self.process.pid})
            try:
                self.registry.register(self.instance)
            except Exception as exc:  # remembered first: heartbeats retry it
                print(f"cannot register yet ({exc}); retrying with each heartbeat", file=sys.stderr)
            self.heartbeat.start()

    def deregister(self) -> None:
        with self.lock:
            if self.instance is None:
                return
            self.heartbeat.stop()
            try:
                self.registry.deregister(self.instance)
            except Exception as exc:  # the entry expires by itself
                print(f"cannot deregister ({exc}); the entry expires by itself", file=sys.stderr)
            self.instance = None

    def stop(self) -> None:
        """SIGTERM: leave the registry, let gateways notice, then stop the program."""
        self.stopping.set()
        if self.instance is not None:
            self.deregister()
            time.sleep(DEREGISTER_GRACE)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m microkit.supervisor.shim SPEC_JSON -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    code = Shim(json.loads(argv[0]), argv[2:]).run()
    if code < 0:  # the program died of a signal: die of the same one, so the arbiter reports it as such
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught, so need no reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
